"""The served shop (examples/shop) outside an image: a release's tree, its HTTP server as a process, Alembic on it.

``release_tree(dest, "2.0")`` lays the release over the shop exactly as examples/shop/Dockerfile does (revision 5
fixed, then each of ``bed.images.SHOP_VERSIONS[version]``'s releases/ directories in order), so the server tests
run the same files the bed's images carry. ``ShopServer`` runs ``python -m shop.server`` in such a tree on a free
loopback port, as a pod runs it; ``upgrade``/``downgrade`` run Alembic's commands in it against a database.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from alembic import command
from alembic.config import Config

import loadgen
from bed.images import SHOP_VERSIONS
from harness import free_port, wait_for

SHOP = Path(__file__).resolve().parent.parent / "examples" / "shop"
R_FIXED = "88d79e1b94a5"  # release 1.1's head: revision 5 fixed
R_STATE_EXPAND, R_STATE_CONTRACT = "3c1f0e2a7b55", "7d24b9c8e013"  # release 2.0: orders.status -> state
R_CURRENCY_EXPAND, R_CURRENCY_CONTRACT = "a5e8d61f2c47", "c90b3f4e1d28"  # release 2.1: orders.currency dropped
R_NAIVE = "5b7a2e9d0c31"  # release 2.0-naive: the same rename in one revision
HEADS = {"1.1": R_FIXED, "1.2": R_FIXED, "2.0": R_STATE_CONTRACT, "2.1": R_CURRENCY_CONTRACT, "2.0-naive": R_NAIVE}


def release_tree(dest: Path, version: str) -> Path:
    """The files of release ``version`` in ``dest`` (created), as the image has them in /app."""
    fixed, releases = SHOP_VERSIONS[version]
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("alembic.ini", "seed.py"):
        shutil.copy2(SHOP / name, dest / name)
    for name in ("shop", "migrations"):
        shutil.copytree(SHOP / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
    if fixed:
        for revision in (SHOP / "fixed").glob("*.py"):
            shutil.copy2(revision, dest / "migrations" / "versions" / revision.name)
    for release in releases:
        shutil.copytree(SHOP / "releases" / release, dest, ignore=shutil.ignore_patterns("__pycache__"),
                        dirs_exist_ok=True)
    return dest


def _config(tree: Path, url: str) -> Config:
    cfg = Config(str(tree / "alembic.ini"))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def _drop_shop_modules() -> None:
    for name in [m for m in sys.modules if m == "shop" or m.startswith("shop.")]:
        del sys.modules[name]


@contextlib.contextmanager
def _in_tree() -> Iterator[None]:
    """env.py imports shop.models: the tree's own, and only while Alembic runs in it. Alembic prepends the tree to
    sys.path (alembic.ini's prepend_sys_path) and keeps it there: left behind, the release's models (a renamed
    column) were the ones a later test on the same worker imported for examples/shop (its models check failed)."""
    path = list(sys.path)
    _drop_shop_modules()
    try:
        yield
    finally:
        sys.path[:] = path
        _drop_shop_modules()


def upgrade(tree: Path, url: str, target: str) -> None:
    with _in_tree():
        command.upgrade(_config(tree, url), target)


def downgrade(tree: Path, url: str, target: str) -> None:
    with _in_tree():
        command.downgrade(_config(tree, url), target)


def seed(tree: Path, url: str) -> None:
    subprocess.run([sys.executable, str(tree / "seed.py")], check=True, env={**os.environ, "DATABASE_URL": url},
                   capture_output=True, timeout=60)


class ShopServer:
    """``python -m shop.server`` of one release tree, on a free loopback port, until the context ends."""

    def __init__(self, tree: Path, url: str, version: str, log: Path) -> None:
        self.tree, self.url, self.version, self.log_path = tree, url, version, log
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"shop {self.version} exited: {self.log_path.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{self.base}/healthz", timeout=2) as reply:
                return bool(reply.status == 200)
        except OSError:
            return False

    def __enter__(self) -> ShopServer:
        env = {**os.environ, "DATABASE_URL": self.url, "PORT": str(self.port), "SHOP_VERSION": self.version,
               "SHOP_DRAIN_SECONDS": "0", "SHOP_DRAIN_MAX_SECONDS": "0",
               "PYTHONPATH": str(self.tree)}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "shop.server"], cwd=self.tree, env=env, stdout=log,
                                         stderr=subprocess.STDOUT)
        wait_for(self._healthy, 30, f"shop {self.version} to answer")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def get(server: ShopServer) -> dict[str, dict[str, object]]:
    """The server's latest orders by id (it must answer 200)."""
    reply = loadgen.send(server.base, "read")
    assert reply.ok, f"GET /orders on shop {server.version}: {reply}"
    with urllib.request.urlopen(f"{server.base}/orders?limit=100", timeout=5) as answer:
        return {str(o["id"]): o for o in json.loads(answer.read())["orders"]}


def post(server: ShopServer, **fields: object) -> dict[str, object]:
    """Create an order through the server's API; returns it as the server answered."""
    request = urllib.request.Request(f"{server.base}/orders", method="POST",
                                     data=json.dumps({"customer_id": 1, "total": "9.99", **fields}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as answer:
        assert answer.status == 201 and answer.headers["X-Shop-Version"] == server.version
        return dict(json.loads(answer.read())["order"])


def error_of(server: ShopServer, op: str = "read") -> str:
    """The error a request of ``op`` gets from the server (it must fail with a 500)."""
    reply = loadgen.send(server.base, op)
    assert reply.status == 500, f"{op} on shop {server.version} was expected to fail: {reply}"
    return reply.error


def releases_side_by_side(url: str, tmp: Path, sync_columns: list[tuple[str, str]]) -> None:
    """The shop's releases on one database, as a rollout has them: each expand revision lets the previous release
    and the next one serve side by side (writes of either seen by both), each contract revision breaks only the
    previous release, the downgrades bring 1.1's schema back with every row, and the naive rename breaks 1.1 at
    once. ``sync_columns`` reads (status, state) of every order, straight from the database."""
    trees = {v: release_tree(tmp / f"shop-{v}", v) for v in ("1.1", "2.0", "2.1", "2.0-naive")}
    upgrade(trees["1.1"], url, R_FIXED)
    seed(trees["1.1"], url)
    with ShopServer(trees["1.1"], url, "1.1", tmp / "shop-1.1.log") as old:
        seeded = get(old)
        assert len(seeded) == 5 and {"status", "currency"} <= set(seeded["1"])

        upgrade(trees["2.0"], url, R_STATE_EXPAND)  # expand: 1.1 and 2.0 both serve
        with ShopServer(trees["2.0"], url, "2.0", tmp / "shop-2.0.log") as new:
            paid = post(old, status="paid")
            shipped = post(new, state="shipped")
            assert "state" not in paid and "status" not in shipped
            assert get(new)[str(paid["id"])]["state"] == "paid"  # 1.1's write, read by 2.0
            assert get(old)[str(shipped["id"])]["status"] == "shipped"  # 2.0's write, read by 1.1
            assert get(new)["1"]["state"] == seeded["1"]["status"]  # backfilled
            rows = sync_columns()
            assert len(rows) == 7 and all(status == state for status, state in rows), rows

            upgrade(trees["2.0"], url, R_STATE_CONTRACT)  # contract: only 1.1 breaks
            assert "status" in error_of(old) and "status" in error_of(old, "write")
            assert post(new)["state"] == "new" and len(get(new)) == 8

            upgrade(trees["2.1"], url, R_CURRENCY_EXPAND)  # expand: 2.0 and 2.1 both serve
            with ShopServer(trees["2.1"], url, "2.1", tmp / "shop-2.1.log") as newer:
                assert "currency" not in post(newer)
                assert post(new, currency="USD")["currency"] == "USD"
                assert get(new)[str(max(map(int, get(newer))))]["currency"] == "USD"
                upgrade(trees["2.1"], url, R_CURRENCY_CONTRACT)  # contract: only 2.0 breaks
                assert "currency" in error_of(new)
                assert len(get(newer)) == 10

        downgrade(trees["2.1"], url, R_FIXED)  # every downgrade: 1.1's schema, every row, 1.1 serves again
        assert len(get(old)) == 10 and get(old)[str(shipped["id"])]["status"] == "shipped"
        upgrade(trees["2.0-naive"], url, R_NAIVE)  # the rename in one revision: 1.1 fails at once
        assert "status" in error_of(old)
        with ShopServer(trees["2.0-naive"], url, "2.0-naive", tmp / "shop-naive.log") as naive:
            assert len(get(naive)) == 10
