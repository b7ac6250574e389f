"""The reconciler's handlers against kmock's Kubernetes emulator (no cluster): what they write and create for
cases a bed test would spend minutes on. The database side is real where it is read (no Secret: nothing to read)."""

from __future__ import annotations

import base64
import logging
from typing import Any

import kmock
import kubernetes
import pytest

from alembic_operator import constants as c
from alembic_operator import handlers, indexes
from alembic_operator.config import OperatorConfig
from alembic_operator.kube import Client

DBM = kmock.resource(group=c.GROUP, version=c.VERSION, plural=c.PLURAL)
JOBS = kmock.resource(group="batch", version="v1", plural="jobs")
SECRETS = kmock.resource(group="", version="v1", plural="secrets")
NS = "shop"


def migration(spec: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": c.API_VERSION, "kind": c.KIND,
        "metadata": {"name": "db", "namespace": NS, "uid": "0000-1111", "generation": 1, "resourceVersion": "1"},
        "spec": spec or {"database": {"urlSecretRef": {"name": "db-url", "key": "url"}},
                         "migrations": {"image": "ghcr.io/acme/shop:1"}, "backup": {"enabled": False},
                         "targetRevision": "head"},
    }


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, str]]:
    """The Events the handlers post (Kopf's poster needs Kopf's own loop: recorded here instead)."""
    posted: list[tuple[str, str, str]] = []
    monkeypatch.setattr(handlers.kopf, "event", lambda _body, *, type, reason, message: posted.append(
        (type, reason, message)))
    return posted


async def reconcile(emulator: kmock.KubernetesEmulator, deleted_meanwhile: bool = False,
                    edited_meanwhile: bool = False, runtime: indexes.Runtime | None = None,
                    ) -> tuple[float | None, dict[str, Any]]:
    """One pass on `db`; with `deleted_meanwhile`, the watch delivers its deletion while the pass writes status; with
    `edited_meanwhile`, someone edits its spec between the pass's read and its status write."""
    runtime = indexes.Runtime() if runtime is None else runtime
    for declared in ("batch/v1/jobs", "v1/pods", "v1/secrets", "v1/events", f"{c.GROUP}/{c.VERSION}/{c.PLURAL}"):
        emulator.resources[declared] = {}

    def patch_status(request: kmock.Request) -> dict[str, Any]:
        """The status subresource, as the API server does it: only .status changes (a merge patch)."""
        obj = emulator.objects[DBM, NS, "db"]
        if edited_meanwhile:
            obj.patch({"metadata": {"generation": 2, "resourceVersion": "2"}, "spec": {"targetRevision": "abc123"}})
        obj.patch({"status": request.data["status"]})
        if deleted_meanwhile:
            runtime.migration_seen("DELETED", dict(obj.raw))
        return dict(obj.raw)

    emulator["PATCH", kmock.subresource("status")] << patch_status
    client = Client(kubernetes.client.Configuration(host=str(emulator.url).rstrip("/")))
    runtime.migration_seen(None, dict(emulator.objects[DBM, NS, "db"].raw))  # what the watch delivers
    ctx = indexes.Context(config=OperatorConfig(), kube=client, runtime=runtime)
    try:
        delay = await handlers.reconcile(ctx, NS, "db", logging.getLogger("test"))
    finally:
        await client.close()
    return delay, dict(emulator.objects[DBM, NS, "db"].raw.get("status") or {})


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(x for x in status.get("conditions") or [] if x["type"] == type_)


@pytest.mark.asyncio
async def test_a_missing_secret_is_written_as_stalled_and_starts_no_job(
        kmock: kmock.KubernetesEmulator, events: list[tuple[str, str, str]]) -> None:
    kmock.objects[DBM, NS, "db"] = migration()
    delay, status = await reconcile(kmock)
    stalled = condition(status, c.STALLED)
    assert stalled["status"] == "True" and stalled["reason"] == "SecretNotFound"
    assert "db-url" in stalled["message"] and condition(status, c.READY)["status"] == "False"
    assert status["phase"] == "Planning" and status["observedGeneration"] == 1
    assert status["run"]["step"] == "Planning" and status["run"]["generation"] == 1
    assert delay is not None and delay <= 15  # looks again soon: the Secret may be created any moment
    assert list(kmock.objects) == [(DBM, NS, "db")]  # no Job was created
    assert [(kind, reason) for kind, reason, _ in events] == [("Warning", "SecretNotFound")]
    _delay, again = await reconcile(kmock)  # nothing changed: the same status, no second Event
    assert again == status and len(events) == 1


@pytest.mark.asyncio
@pytest.mark.parametrize("edited", [False, True])
async def test_an_edit_between_a_pass_s_read_and_its_status_write_is_looked_at_again(
        kmock: kmock.KubernetesEmulator, events: list[tuple[str, str, str]], edited: bool) -> None:
    """The status write answers with the edited object, which the cache keeps: the edit's own watch event then looks
    old and wakes nothing (a new spec waited minutes on the bed). The pass asks for another at once instead."""
    from alembic_operator.schedule import Scheduler

    async def work(_key: object) -> float | None:
        return None

    kmock.objects[DBM, NS, "db"] = migration()
    runtime = indexes.Runtime()
    runtime.scheduler = Scheduler(work)  # not started: what it was asked to do stays visible
    await reconcile(kmock, edited_meanwhile=edited, runtime=runtime)
    assert runtime.scheduler.pending() == (1 if edited else 0)


def series(name: str) -> list[str]:
    """The operator's metric series of DatabaseMigration `name` in the test namespace."""
    from prometheus_client import REGISTRY

    return [s.name for m in REGISTRY.collect() for s in m.samples
            if s.labels.get("namespace") == NS and s.labels.get("name") == name]


@pytest.mark.asyncio
async def test_a_resource_deleted_while_its_pass_runs_keeps_no_metric_series(
        kmock: kmock.KubernetesEmulator, events: list[tuple[str, str, str]]) -> None:
    kmock.objects[DBM, NS, "db"] = migration()
    await reconcile(kmock, deleted_meanwhile=True)
    assert series("db") == []  # the deletion removed them, and the pass that ended after it wrote none back


@pytest.mark.asyncio
async def test_a_pass_records_the_resource_s_series(
        kmock: kmock.KubernetesEmulator, events: list[tuple[str, str, str]]) -> None:
    kmock.objects[DBM, NS, "db"] = migration()
    await reconcile(kmock)
    assert "alembic_operator_current_revision_info" in series("db")


@pytest.mark.asyncio
async def test_an_unusable_url_is_stalled_without_echoing_it(
        kmock: kmock.KubernetesEmulator, events: list[tuple[str, str, str]]) -> None:
    url = "mysqlish://admin:hunter2@db.example/shop"
    kmock.objects[DBM, NS, "db"] = migration()
    kmock.objects[SECRETS, NS, "db-url"] = {"apiVersion": "v1", "kind": "Secret",
                                             "metadata": {"name": "db-url", "namespace": NS},
                                             "data": {"url": base64.b64encode(url.encode()).decode()}}
    _delay, status = await reconcile(kmock)
    stalled = condition(status, c.STALLED)
    assert stalled["reason"] == "InvalidDatabaseURL" and "Secret db-url key url" in stalled["message"]
    assert "hunter2" not in str(status) and "hunter2" not in str(events) and "db.example" not in str(events)
