"""A real Prometheus and Alertmanager for a bed test (issue 26), as the test's own processes in the bed's network
namespace, from the binaries built from their Go modules (bed.prometheus, `make prometheus`): Prometheus scrapes the
test's operator every second and evaluates the chart's rules every second; Alertmanager routes every alert at once
to a webhook receiver of the test (an HTTP server on the host, relayed to the namespace as the database is)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from bed.controlplane import Bed
from bed.prometheus import binary
from harness import NetnsPort, free_port, wait_for


@dataclass
class Notification:
    """One POST of Alertmanager's webhook: its alerts, and when it arrived (time.time())."""

    at: float
    body: dict[str, Any]

    @property
    def alerts(self) -> list[dict[str, Any]]:
        return list(self.body.get("alerts") or [])


@dataclass
class Receiver:
    notifications: list[Notification] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def alerts(self, name: str) -> list[tuple[float, dict[str, Any]]]:
        with self.lock:
            return [(n.at, a) for n in self.notifications for a in n.alerts if a["labels"].get("alertname") == name]


@dataclass
class Monitoring:
    receiver: Receiver
    prometheus_api: int  # the host's port relayed to Prometheus' HTTP API
    logs: dict[str, Path]

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = f"http://127.0.0.1:{self.prometheus_api}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=5) as resp:
            return list(json.load(resp)["data"]["result"])

    def log(self, which: str) -> str:
        return self.logs[which].read_text(errors="replace") if self.logs[which].exists() else ""


@contextmanager
def _receiver() -> Iterator[tuple[Receiver, int]]:
    rx = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with rx.lock:
                rx.raw.append(body)
                rx.notifications.append(Notification(time.time(), json.loads(body)))
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield rx, int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def _spawn(bed: Bed, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(bed.exec_cmd(argv), stdout=out, stderr=subprocess.STDOUT, env=bed.netns_env(),
                                start_new_session=True)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@contextmanager
def monitoring(bed: Bed, tmp: Path, rule_groups: list[dict[str, Any]], job: str, metrics_port: int,
               ) -> Iterator[Monitoring]:
    """Alertmanager, then Prometheus (scraping 127.0.0.1:metrics_port in the namespace as `job`, with these rules),
    and the receiver; everything stopped and its relays closed on the way out."""
    am_bin, prom_bin = binary("alertmanager"), binary("prometheus")
    with _receiver() as (rx, port):
        host, inner = bed.expose_host_port(port)
        am_port, prom_port = free_port(bed), free_port(bed)
        (tmp / "alertmanager.yaml").write_text(yaml.safe_dump({
            "route": {"receiver": "test", "group_by": ["alertname", "namespace", "name"], "group_wait": "0s",
                      "group_interval": "1s", "repeat_interval": "1h"},
            "receivers": [{"name": "test", "webhook_configs": [{"url": f"http://{host}:{inner}/alerts",
                                                                 "send_resolved": False}]}]}))
        (tmp / "rules.yaml").write_text(yaml.safe_dump({"groups": rule_groups}))
        (tmp / "prometheus.yaml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(tmp / "rules.yaml")],
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]},
            "scrape_configs": [{"job_name": job, "honor_labels": True,
                                "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]}]}))
        logs = {"alertmanager": tmp / "alertmanager.log", "prometheus": tmp / "prometheus.log"}
        am = _spawn(bed, [str(am_bin), f"--config.file={tmp / 'alertmanager.yaml'}",
                          f"--storage.path={tmp / 'am-data'}", f"--web.listen-address=127.0.0.1:{am_port}",
                          "--cluster.listen-address="], logs["alertmanager"])
        prom: subprocess.Popen[bytes] | None = None
        relay: NetnsPort | None = None
        try:
            prom = _spawn(bed, [str(prom_bin), f"--config.file={tmp / 'prometheus.yaml'}",
                                f"--storage.tsdb.path={tmp / 'prom-data'}",
                                f"--web.listen-address=127.0.0.1:{prom_port}", "--rules.alert.resend-delay=1s"],
                          logs["prometheus"])
            relay = NetnsPort(bed, prom_port)
            mon = Monitoring(rx, relay.port, logs)

            def scraping() -> bool:
                for proc, name in ((am, "alertmanager"), (prom, "prometheus")):
                    assert proc.poll() is None, f"{name} exited:\n{mon.log(name)[-3000:]}"
                try:
                    return any(r["value"][1] == "1" for r in mon.query(f'up{{job="{job}"}}'))
                except OSError:
                    return False

            wait_for(scraping, 60, "Prometheus scraping the operator")
            yield mon
        finally:
            if relay is not None:
                relay.close()
            if prom is not None:
                _stop(prom)
            _stop(am)
