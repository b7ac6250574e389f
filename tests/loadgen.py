"""A load generator for the served shop: reads and writes at a steady rate, every response recorded.

    python tests/loadgen.py --url http://198.18.0.12 --rate 30 --out responses.jsonl   # until SIGTERM/SIGINT
    python tests/loadgen.py --summary responses.jsonl

Open loop: request *i* is sent at ``start + i / rate`` whatever the earlier ones are doing (a pool of threads sends
them), so a slow or failing server cannot slow the load down and hide its own latency (coordinated omission).
Every request opens its own connection, as a fresh client would, so each one goes through the Service's load
balancing and reaches whichever pod is in its endpoints at that moment. One in ``--write-every`` requests creates
an order (``POST /orders``), the others list them (``GET /orders``).

Each response becomes one JSON line, written as it arrives: ``t`` (when it was sent, Unix time), ``op`` (read or
write), ``status`` (the HTTP status; 0 when there was none: refused, reset, timed out), ``ms``, ``version`` and
``pod`` (the shop's X-Shop-Version and X-Served-By headers) and ``error`` (the body's error or the exception). A
request fails when its status is not 2xx. Only the standard library: it runs with any Python, inside the bed's
network namespace where the Service's ClusterIP routes.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import random
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Response:
    t: float
    op: str
    status: int
    ms: float
    version: str = ""
    pod: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def send(url: str, op: str, customers: int = 3, timeout: float = 5.0) -> Response:
    """One request of kind ``op`` (read: GET /orders; write: POST /orders), on a connection of its own."""
    parts = urlsplit(url)
    started, t = time.monotonic(), time.time()
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout)
    try:
        if op == "write":
            body = json.dumps({"customer_id": random.randint(1, customers),
                               "total": f"{random.randint(100, 99999) / 100:.2f}"})
            conn.request("POST", "/orders", body=body, headers={"Content-Type": "application/json"})
        else:
            conn.request("GET", "/orders?limit=10")
        reply = conn.getresponse()
        data = reply.read()
        error = ""
        if not 200 <= reply.status < 300:
            try:
                error = str(json.loads(data).get("error", ""))
            except (ValueError, AttributeError):
                error = data[:200].decode(errors="replace")
        return Response(t, op, reply.status, round((time.monotonic() - started) * 1000, 2),
                        reply.getheader("X-Shop-Version") or "", reply.getheader("X-Served-By") or "", error)
    except (OSError, http.client.HTTPException) as err:
        return Response(t, op, 0, round((time.monotonic() - started) * 1000, 2), error=f"{type(err).__name__}: {err}")
    finally:
        conn.close()


class Load:
    """The load, running in threads of this process until :meth:`stop`; responses go to ``out`` as JSON lines."""

    def __init__(self, url: str, out: Path, rate: float = 30, write_every: int = 3, threads: int = 32,
                 customers: int = 3) -> None:
        self.url, self.out, self.rate, self.write_every = url, out, rate, write_every
        self.customers = customers
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="loadgen")
        self._lock = threading.Lock()
        self._file: IO[str] | None = None
        self._clock: threading.Thread | None = None
        self.sent = 0

    def _record(self, op: str) -> None:
        response = send(self.url, op, self.customers)
        with self._lock:
            if self._file is not None:
                self._file.write(json.dumps(asdict(response)) + "\n")
                self._file.flush()

    def _run(self) -> None:
        start = time.monotonic()
        while not self._stop.is_set():
            due = start + self.sent / self.rate
            if (wait := due - time.monotonic()) > 0 and self._stop.wait(wait):
                break
            op = "write" if self.sent % self.write_every == self.write_every - 1 else "read"
            self._pool.submit(self._record, op)
            self.sent += 1

    def start(self) -> Load:
        self._file = self.out.open("a")
        self._clock = threading.Thread(target=self._run, name="loadgen-clock", daemon=True)
        self._clock.start()
        return self

    def stop(self) -> None:
        """Stop sending; wait for the requests in flight (each has a timeout), then close the file."""
        self._stop.set()
        if self._clock is not None:
            self._clock.join()
        self._pool.shutdown(wait=True)
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


# --- reading what was recorded ------------------------------------------------------------------------------------


def read(path: Path) -> list[Response]:
    """Every recorded response, in the order they were sent."""
    if not path.exists():
        return []
    rows = [Response(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
    return sorted(rows, key=lambda r: r.t)


def between(responses: Iterable[Response], start: float, end: float) -> list[Response]:
    return [r for r in responses if start <= r.t <= end]


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank percentile (q in 0..100) of values; NaN for none."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


@dataclass(frozen=True)
class Summary:
    requests: int
    failed: int
    reads: int
    writes: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    versions: dict[str, int]
    errors: dict[str, int]  # the distinct errors of failed requests, with their counts

    def line(self) -> str:
        return (f"{self.requests} requests ({self.reads} reads, {self.writes} writes) in {self.seconds:.1f} s: "
                f"{self.rps:.1f}/s, p50 {self.p50_ms:.1f} ms, p99 {self.p99_ms:.1f} ms, {self.failed} failed; "
                f"served by versions {self.versions}")


def summarize(responses: list[Response]) -> Summary:
    failed = [r for r in responses if not r.ok]
    seconds = (responses[-1].t - responses[0].t) if len(responses) > 1 else 0.0
    versions: dict[str, int] = {}
    for r in responses:
        if r.version:
            versions[r.version] = versions.get(r.version, 0) + 1
    errors: dict[str, int] = {}
    for r in failed:
        key = f"{r.status} {r.error[:160]}"
        errors[key] = errors.get(key, 0) + 1
    return Summary(requests=len(responses), failed=len(failed), reads=sum(r.op == "read" for r in responses),
                   writes=sum(r.op == "write" for r in responses), seconds=seconds,
                   rps=len(responses) / seconds if seconds else 0.0,
                   p50_ms=percentile([r.ms for r in responses], 50), p99_ms=percentile([r.ms for r in responses], 99),
                   versions=versions, errors=errors)


def failures(responses: Iterable[Response]) -> Iterator[Response]:
    return (r for r in responses if not r.ok)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="the shop's base URL (http://HOST[:PORT])")
    parser.add_argument("--out", type=Path, help="where the responses go (JSON lines, appended)")
    parser.add_argument("--rate", type=float, default=30, help="requests per second (default 30)")
    parser.add_argument("--write-every", type=int, default=3, help="one write in N requests (default 3)")
    parser.add_argument("--duration", type=float, default=0, help="seconds to run (default: until SIGTERM)")
    parser.add_argument("--summary", type=Path, help="print the summary of a recorded file and exit")
    args = parser.parse_args(argv)
    if args.summary:
        responses = read(args.summary)
        summary = summarize(responses)
        print(summary.line())
        for error, count in summary.errors.items():
            print(f"  {count:>5} x {error}")
        return 0
    if not args.url or not args.out:
        parser.error("--url and --out are needed (or --summary FILE)")
    load = Load(args.url, args.out, rate=args.rate, write_every=args.write_every).start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    print(f"loadgen: {args.rate:g} requests/s to {args.url}, responses to {args.out}", file=sys.stderr, flush=True)
    done.wait(args.duration or None)
    load.stop()
    print(summarize(read(args.out)).line(), file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
