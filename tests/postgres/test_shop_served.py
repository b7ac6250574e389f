"""The served shop's releases on PostgreSQL: expand revisions keep two releases serving, contracts break only the
previous one, downgrades restore it (examples/shop/releases, as the images carry them); and the load generator
that the bed's rollout tests trust records every response, failures included."""

from __future__ import annotations

from pathlib import Path

import loadgen
from bed.postgres import Database
from harness import wait_for
from shopapp import R_FIXED, ShopServer, release_tree, releases_side_by_side, seed, upgrade


def test_releases_serve_side_by_side_through_expand_and_break_only_at_contract(database: Database,
                                                                               tmp_path: Path) -> None:
    releases_side_by_side(database.url, tmp_path, lambda: database.query("SELECT status, state FROM orders"))


def test_the_load_generator_records_every_response_and_every_failure(database: Database, tmp_path: Path) -> None:
    tree = release_tree(tmp_path / "shop", "1.1")
    upgrade(tree, database.url, R_FIXED)
    seed(tree, database.url)
    out = tmp_path / "responses.jsonl"
    with ShopServer(tree, database.url, "1.1", tmp_path / "shop.log") as server:
        load = loadgen.Load(server.base, out, rate=50, write_every=2).start()
        wait_for(lambda: len(loadgen.read(out)) >= 40, 60, "forty answers")
        database.query("ALTER TABLE orders RENAME COLUMN status TO state")  # what a naive rename does to 1.1
        wait_for(lambda: any(not r.ok for r in loadgen.read(out)), 60, "a failed request")
    wait_for(lambda: any(r.status == 0 for r in loadgen.read(out)), 60, "a request to the stopped server")
    load.stop()
    responses = loadgen.read(out)
    summary = loadgen.summarize(responses)
    assert summary.requests == load.sent, "a request sent but not recorded"
    assert 0 < summary.failed < summary.requests and summary.versions.get("1.1", 0) >= 40
    assert any('column orders.status does not exist' in error for error in summary.errors), summary.errors
    assert any(error.startswith("0 ConnectionRefusedError") for error in summary.errors), summary.errors
    written = [r for r in responses if r.op == "write" and r.ok]
    assert database.query("SELECT count(*) FROM orders")[0][0] == 5 + len(written)
    assert summary.p99_ms >= summary.p50_ms > 0 and len({r.pod for r in responses if r.ok}) == 1
