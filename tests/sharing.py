"""The run's clock and order, and one bed for all of pytest-xdist's workers (a pytest plugin, see conftest.py).

Every run ends with its 20 slowest tests (setup + call + teardown) and its totals; the durations are kept in
pytest's cache, and a parallel run hands out the tests it knows to be long first, so that no long test starts last.

Under pytest-xdist (``make test`` runs ``-n``), each worker is a pytest session of its own, with its own
PostgreSQL and MariaDB servers (server-wide state, a MariaDB named lock or ``pg_stat_activity``, stays a worker's
own), but one bed serves them all: starting one costs a minute of both cores. The controller process owns it: a
thread of the controller starts it once a worker says it needs one (its collection holds a test that uses the bed,
or the ``bed`` fixture asks), and stops it when the session finishes, after every worker has ended; its processes
get SIGTERM if the controller dies (they are children of that thread). The workers find it in the directory the
run shares (the parent of each worker's base temporary directory). Each test keeps a namespace and an operator
process of its own, on ports chosen inside the bed's network namespace; relays the workers add to the bed are
recorded in its state under a lock, so that the bed's ``stop`` ends them too. Without xdist (``-p no:xdist``,
``-n 0``) the session starts and stops its own bed as before.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest

from bed.controlplane import Bed

WANTED = "bed.wanted"  # a worker needs the bed
READY = "bed.json"  # the controller's answer: {"dir": ...} or {"error": ...}
KEEPER = "bed.keeper"  # the controller keeps a bed for this run
BED_WAIT = 1800  # a cold start builds nothing (make test builds first), but a loaded machine is slow
SLOWEST = 20
CACHE_KEY = "alembic-operator/durations"
# What a test unknown to the cache is assumed to take, by what it needs: a test that needs the bed is long.
GUESS = {"db": 1.0, "bed": 30.0, "none": 0.1}
BED_FIXTURES = {"bed"}
DB_FIXTURES = {"postgres", "mariadb"}


def is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def suffix(config: pytest.Config) -> str:
    """``-gwN`` on a worker, else "": for names a worker gives to what it adds to the shared bed."""
    return f"-{config.workerinput['workerid']}" if is_worker(config) else ""  # type: ignore[attr-defined]


def run_dir(config: pytest.Config) -> Path:
    """The directory one run shares: the controller's base temporary directory, each worker's parent."""
    base: Path = config._tmp_path_factory.getbasetemp()  # type: ignore[attr-defined]
    return base.parent if is_worker(config) else base


def _write_json(path: Path, data: object) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def _uses_bed(item: pytest.Item) -> bool:
    return bool(BED_FIXTURES & set(getattr(item, "fixturenames", ())))


def _kind(item: pytest.Item) -> str:
    """"bed", "db" or "none": what the test needs, by its fixtures or its marks (the image builds are marked bed)."""
    marks = {m.name for m in item.iter_markers()}
    if _uses_bed(item) or "bed" in marks:
        return "bed"
    return "db" if DB_FIXTURES & set(getattr(item, "fixturenames", ())) or marks & DB_FIXTURES else "none"


# --- one bed per run, kept by the controller --------------------------------------------------------------------


class BedKeeper:
    """In the controller of a pytest-xdist run: starts the bed once a worker wants it, stops it when told."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.done = threading.Event()
        # The bed's processes get SIGTERM when the thread that started them ends: this one lives until the stop.
        self.thread = threading.Thread(target=self._run, name="bed-keeper", daemon=True)

    def start(self) -> None:
        (self.dir / KEEPER).write_text(f"{os.getpid()}\n")
        self.thread.start()

    def stop(self) -> None:
        self.done.set()
        self.thread.join()

    def _run(self) -> None:
        while not (self.dir / WANTED).exists():
            if self.done.wait(0.2):
                return
        bed = Bed(self.dir / "bed", node="real", daemon=False)
        try:
            bed.start()  # stops what it started when it fails
        except BaseException as exc:
            _write_json(self.dir / READY, {"error": f"{type(exc).__name__}: {exc}"})
            return
        try:
            _write_json(self.dir / READY, {"dir": str(bed.dir), "startup_seconds": bed.startup_seconds})
            self.done.wait()
        finally:
            bed.stop(purge=False)  # keeps logs/ and pki/ for post-mortems; removes every process, mount and cgroup


def want_bed(config: pytest.Config) -> None:
    (run_dir(config) / WANTED).touch()


def attach_bed(config: pytest.Config) -> Bed:
    """On a worker: the run's bed, once the controller has it up."""
    directory = run_dir(config)
    if not (directory / KEEPER).exists():
        pytest.fail(f"no bed keeper for this run in {directory}: the controller did not load tests/sharing.py",
                    pytrace=False)
    want_bed(config)
    ready = directory / READY
    deadline = time.monotonic() + BED_WAIT
    while not ready.exists():
        if time.monotonic() > deadline:
            pytest.fail(f"the run's bed was not up after {BED_WAIT} s", pytrace=False)
        time.sleep(0.2)
    info = json.loads(ready.read_text())
    if "error" in info:
        pytest.fail(f"the run's bed did not start: {info['error']}", pytrace=False)
    bed = Bed(info["dir"])  # what this worker adds (relays) outlives it, until the controller stops the bed
    if not bed.is_up():
        pytest.fail(f"the run's bed in {bed.dir} is not up (see its logs/)", pytrace=False)
    return bed


_KEEPER_KEY = pytest.StashKey[BedKeeper]()


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    config = session.config
    distributing = config.pluginmanager.hasplugin("dsession")  # this process hands tests to xdist's workers
    if distributing and not (os.environ.get("BED_DIR") or os.environ.get("BED_REAL_DIR")):
        keeper = BedKeeper(run_dir(config))
        config.stash[_KEEPER_KEY] = keeper
        keeper.start()


def pytest_collection_finish(session: pytest.Session) -> None:
    """A worker whose tests use the bed asks for it at once: it starts while the first tests (databases) run."""
    if is_worker(session.config) and any(_uses_bed(item) for item in session.items):
        want_bed(session.config)


# --- order and clock --------------------------------------------------------------------------------------------


def _history(config: pytest.Config) -> dict[str, float]:
    cache = getattr(config, "cache", None)
    data = cache.get(CACHE_KEY, {}) if cache is not None else {}
    return data if isinstance(data, dict) else {}


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under xdist, the order the workers take tests in: the tests that need only a database first (the bed starts
    meanwhile), then the bed's, then those that need no server (short: they fill the end); in each, the longest
    first (by the last runs' durations), so that no long test starts last. Every worker computes the same order
    (xdist requires it) from the same cache. A serial run keeps the collection order (module fixtures stay set up)."""
    if not is_worker(config):
        return
    history = _history(config)
    phase = {"db": 0, "bed": 1, "none": 2}

    def key(item: pytest.Item) -> tuple[int, float]:
        kind = _kind(item)
        return phase[kind], -float(history.get(item.nodeid, GUESS[kind]))

    items.sort(key=key)


class Clock:
    """Each test's time (setup + call + teardown), the 20 slowest and the totals at the end of the run."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.started = time.monotonic()
        self.durations: dict[str, float] = defaultdict(float)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.durations[report.nodeid] += report.duration

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not self.durations:
            return
        wall = time.monotonic() - self.started
        workers = getattr(self.config.option, "numprocesses", None) or 0
        terminalreporter.write_sep("=", f"slowest {SLOWEST} tests (setup + call + teardown)")
        for nodeid, seconds in sorted(self.durations.items(), key=lambda kv: -kv[1])[:SLOWEST]:
            terminalreporter.write_line(f"{seconds:8.1f}s  {nodeid}")
        terminalreporter.write_line(
            f"{len(self.durations)} tests: {sum(self.durations.values()):.0f} s of test time in {wall:.0f} s of wall "
            f"time ({f'{workers} workers' if workers else 'one process'})")

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        cache = getattr(self.config, "cache", None)
        if cache is not None and self.durations:
            history = _history(self.config)
            history.update({nodeid: round(seconds, 2) for nodeid, seconds in self.durations.items()})
            cache.set(CACHE_KEY, history)


def pytest_configure(config: pytest.Config) -> None:
    if not is_worker(config):  # the controller (or the only process) sees every worker's reports
        config.pluginmanager.register(Clock(config), "alembic-operator-clock")


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """The controller stops the run's bed after xdist has ended its workers (trylast: after xdist's own hook)."""
    keeper = session.config.stash.get(_KEEPER_KEY, None)
    if keeper is not None:
        keeper.stop()
