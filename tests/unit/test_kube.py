"""alembic_operator.kube: the one Kubernetes client, over real HTTP against a small aiohttp server that answers as
the API server does (Status bodies, status codes), so that every error maps to its type."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import kubernetes
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer

from alembic_operator import constants as c
from alembic_operator import kube
from alembic_operator.kube import Client, Conflict, NotFound, Refused, Unavailable

NS = "shop"
JOBS = f"/apis/batch/v1/namespaces/{NS}/jobs"
MIGRATION = f"/apis/{c.GROUP}/{c.VERSION}/namespaces/{NS}/{c.PLURAL}/db"
MWC = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"


def status(code: int, message: str, reason: str = "Invalid") -> web.Response:
    """An error as the API server writes it: a Status object."""
    return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message,
                              "reason": reason, "code": code}, status=code)


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    content_type: str
    body: Any
    accept: str = ""


@dataclass
class FakeApi:
    """Answers per (method, path), in order (the last answer repeats); records every request."""

    answers: dict[tuple[str, str], list[Callable[[], web.StreamResponse]]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)

    def on(self, method: str, path: str, *answers: Callable[[], web.StreamResponse]) -> None:
        self.answers[method, path] = list(answers)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        self.seen.append(Seen(request.method, request.path, dict(request.query), request.content_type,
                              json.loads(raw) if raw else None, request.headers.get("Accept", "")))
        answers = self.answers.get((request.method, request.path))
        if not answers:
            return status(404, f"{request.path} not found", "NotFound")
        return answers.pop(0)() if len(answers) > 1 else answers[0]()


@pytest_asyncio.fixture
async def api() -> AsyncIterator[tuple[FakeApi, Client]]:
    fake = FakeApi()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    client = Client(kubernetes.client.Configuration(host=str(server.make_url("")).rstrip("/")))
    try:
        yield fake, client
    finally:
        await client.close()
        await server.close()


def job(name: str = "shop-migrate-g1") -> dict[str, Any]:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": NS}, "spec": {}}


@pytest.mark.parametrize(("code", "error"), [
    (400, Refused), (403, Refused), (404, NotFound), (409, Conflict), (410, Refused), (422, Refused),
    (401, Unavailable), (408, Unavailable), (429, Unavailable), (500, Unavailable), (503, Unavailable),
])
def test_every_error_status_has_its_type(code: int, error: type[kube.KubeError]) -> None:
    err = kube.error_for(code, "Reason", json.dumps({"kind": "Status", "message": f"said {code}"}))
    assert type(err) is error and err.status == code and err.message == f"said {code}"
    assert isinstance(err, kube.KubeError)


def test_refusal_message_is_the_api_servers_own_else_the_reason_phrase() -> None:
    body = json.dumps({"kind": "Status", "message": 'Job.batch "x" is invalid: spec.template.spec.containers[0].'
                                                    "resources.requests: Invalid value"})
    assert kube.refusal_message(422, "Unprocessable Entity", body).startswith('Job.batch "x" is invalid: spec.')
    assert kube.refusal_message(400, "Bad Request", b"<html>no</html>") == "HTTP 400 Bad Request"
    assert kube.refusal_message(400, "Bad Request", None) == "HTTP 400 Bad Request"


@pytest.mark.asyncio
async def test_create_job_dry_run_and_an_existing_job_left_as_it_is(api: tuple[FakeApi, Client]) -> None:
    fake, client = api
    fake.on("POST", JOBS, lambda: web.json_response(job(), status=201),
            lambda: status(409, 'jobs.batch "shop-migrate-g1" already exists', "AlreadyExists"))
    await client.create_job(job(), dry_run=True)
    await client.create_job(job())  # 409: exists already, left as it is
    assert [(s.method, s.path, s.query) for s in fake.seen] == [("POST", JOBS, {"dryRun": "All"}),
                                                                 ("POST", JOBS, {})]
    assert fake.seen[0].body == job() and fake.seen[0].content_type == "application/json"


@pytest.mark.asyncio
async def test_a_job_the_api_server_refuses_raises_refused_with_its_message(api: tuple[FakeApi, Client]) -> None:
    fake, client = api
    words = ('Job.batch "shop-plan-g1" is invalid: spec.template.spec.containers[0].resources.requests: '
             'Invalid value: "2": must be less than or equal to cpu limit of 100m')
    fake.on("POST", JOBS, lambda: status(422, words))
    with pytest.raises(Refused) as refused:
        await client.create_job(job(), dry_run=True)
    assert refused.value.message == words and refused.value.status == 422


@pytest.mark.asyncio
async def test_transient_errors_raise_unavailable(api: tuple[FakeApi, Client]) -> None:
    fake, client = api
    fake.on("POST", JOBS, lambda: status(500, "etcdserver: request timed out", "InternalError"),
            lambda: status(429, "too many requests", "TooManyRequests"))
    for expected in (500, 429):
        with pytest.raises(Unavailable) as err:
            await client.create_job(job())
        assert err.value.status == expected


@pytest.mark.asyncio
async def test_an_unreachable_api_server_is_unavailable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = Client(kubernetes.client.Configuration(host=f"http://127.0.0.1:{port}"))
    try:
        with pytest.raises(Unavailable) as err:
            await client.get_migration(NS, "db")
        assert err.value.status == 0
    finally:
        await client.close()


@pytest.mark.asyncio
async def test_reads_that_find_nothing_answer_none(api: tuple[FakeApi, Client]) -> None:
    fake, client = api
    assert await client.get_migration(NS, "db") is None
    assert await client.read_secret_data(NS, "db") is None
    await client.delete_job(NS, "gone")  # already gone: nothing to do
    assert await client.release_pod(NS, "gone") is False
    await client.patch_held_pods(NS, "db", 3)
    fake.on("GET", MIGRATION, lambda: status(403, "forbidden", "Forbidden"))
    with pytest.raises(Refused):
        await client.get_migration(NS, "db")
    delete = next(s for s in fake.seen if s.method == "DELETE")
    assert delete.path == f"{JOBS}/gone" and delete.body["propagationPolicy"] == "Background"
    patch = next(s for s in fake.seen if s.method == "PATCH" and "/pods/" in s.path)
    assert patch.content_type == "application/strategic-merge-patch+json"
    held = next(s for s in fake.seen if s.path == f"{MIGRATION}/status")
    assert held.content_type == "application/merge-patch+json" and held.body == {"status": {"heldPods": 3}}


@pytest.mark.asyncio
async def test_a_conflict_is_typed_and_secret_data(api: tuple[FakeApi, Client]) -> None:
    fake, client = api
    fake.on("PATCH", f"{MIGRATION}/status", lambda: status(409, "the object has been modified", "Conflict"))
    with pytest.raises(Conflict):
        await client.patch_status(NS, "db", {"phase": "Pending"})
    assert fake.seen[-1].body == {"status": {"phase": "Pending"}}
    fake.on("GET", f"/api/v1/namespaces/{NS}/secrets/db",
            lambda: web.json_response({"kind": "Secret", "data": {"url": "cG9zdGdyZXM6Ly8="}}))
    assert await client.read_secret_data(NS, "db") == {"url": "cG9zdGdyZXM6Ly8="}


@pytest.mark.asyncio
async def test_lists_select_by_label(api: tuple[FakeApi, Client]) -> None:
    fake, client = api
    fake.on("GET", JOBS, lambda: web.json_response({"kind": "JobList", "items": [job()]}))
    fake.on("GET", f"/api/v1/namespaces/{NS}/pods", lambda: web.json_response({"kind": "PodList", "items": []}))
    fake.on("GET", f"/apis/{c.GROUP}/{c.VERSION}/{c.PLURAL}", lambda: web.json_response({"items": [{"a": 1}]}))
    assert await client.list_jobs(NS, "db") == [job()]
    assert await client.job_pods(NS, "shop-migrate-g1") == []
    assert await client.list_migrations(None) == [{"a": 1}]
    assert fake.seen[0].query == {"labelSelector": f"{c.OWNER_LABEL}=db,{c.MANAGED_BY_LABEL}={c.MANAGED_BY}"}
    assert fake.seen[1].query == {"labelSelector": "batch.kubernetes.io/job-name=shop-migrate-g1"}


@pytest.mark.asyncio
async def test_watch_streams_events_and_a_refused_watch_is_typed(api: tuple[FakeApi, Client]) -> None:
    fake, client = api
    path = f"/api/v1/namespaces/{NS}/pods"
    lines = [{"type": "ADDED", "object": {"metadata": {"name": "a"}}}, {"type": "BOOKMARK", "object": {}}]
    fake.on("GET", path, lambda: web.Response(body="".join(json.dumps(x) + "\n" for x in lines).encode()),
            lambda: status(410, "too old resource version", "Expired"))
    assert [e async for e in client.watch(path, {"resourceVersion": "1"})] == lines
    assert fake.seen[0].query["watch"] == "true" and fake.seen[0].query["resourceVersion"] == "1"
    with pytest.raises(kube.KubeError) as err:
        _ = [e async for e in client.watch(path, {})]
    assert err.value.status == 410


@pytest.mark.asyncio
async def test_webhook_configuration_created_then_replaced_with_its_version(api: tuple[FakeApi, Client]) -> None:
    fake, client = api
    body = {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": "gate"}, "webhooks": []}
    fake.on("POST", MWC, lambda: web.json_response(body, status=201))
    await client.apply_webhook_configuration(body)
    assert [(s.method, s.path) for s in fake.seen] == [("GET", f"{MWC}/gate"), ("POST", MWC)]
    fake.seen.clear()
    fake.on("GET", f"{MWC}/gate", lambda: web.json_response({**body, "metadata": {"name": "gate",
                                                                                  "resourceVersion": "42"}}))
    fake.on("PUT", f"{MWC}/gate", lambda: status(409, "modified", "Conflict"), lambda: web.json_response(body))
    await client.apply_webhook_configuration(body)
    assert [s.method for s in fake.seen] == ["GET", "PUT", "GET", "PUT"]
    assert fake.seen[-1].body["metadata"]["resourceVersion"] == "42"


@pytest.mark.asyncio
async def test_present_lists_names_only_per_namespace(api: tuple[FakeApi, Client]) -> None:
    fake, client = api
    listing = {"kind": "PartialObjectMetadataList", "metadata": {"resourceVersion": "42"},
               "items": [{"metadata": {"namespace": NS, "name": "db", "resourceVersion": "40"}}]}
    fake.on("GET", f"/apis/{c.GROUP}/{c.VERSION}/namespaces/{NS}/{c.PLURAL}", lambda: web.json_response(listing))
    fake.on("GET", f"/apis/batch/v1/namespaces/{NS}/jobs", lambda: web.json_response(listing))
    [migrations] = await client.present([NS], "migrations")
    assert (migrations.namespace, migrations.version, migrations.names) == (NS, 42, {(NS, "db")})
    [jobs] = await client.present([NS], "jobs")
    assert jobs.names == {(NS, "db")}
    assert all("as=PartialObjectMetadataList" in s.accept for s in fake.seen)
    assert fake.seen[-1].query == {"labelSelector": f"{c.MANAGED_BY_LABEL}={c.MANAGED_BY}"}


@pytest.mark.asyncio
async def test_remove_webhook_configuration_only_while_it_names_its_owner(api: tuple[FakeApi, Client]) -> None:
    fake, client = api
    mine = {"metadata": {"name": "gate", "uid": "u1", "resourceVersion": "7", "annotations": {"who": "me"}}}
    fake.on("GET", f"{MWC}/gate", lambda: web.json_response(mine))
    fake.on("DELETE", f"{MWC}/gate", lambda: web.json_response({"kind": "Status", "status": "Success"}))
    assert await client.remove_webhook_configuration("gate", "who", "me") is True
    assert [(s.method, s.path) for s in fake.seen] == [("GET", f"{MWC}/gate"), ("DELETE", f"{MWC}/gate")]
    assert fake.seen[-1].body["preconditions"] == {"uid": "u1", "resourceVersion": "7"}
    fake.seen.clear()
    # Another process wrote it since (the chart's own configuration has another name and no annotation at all).
    assert await client.remove_webhook_configuration("gate", "who", "someone else") is False
    assert [s.method for s in fake.seen] == ["GET"]
    # Rewritten between the read and the delete: the preconditions fail (409), it stays.
    fake.on("DELETE", f"{MWC}/gate", lambda: status(409, "Precondition failed: UID in precondition", "Conflict"))
    assert await client.remove_webhook_configuration("gate", "who", "me") is False
    fake.on("GET", f"{MWC}/gate", lambda: status(404, "not found", "NotFound"))
    assert await client.remove_webhook_configuration("gate", "who", "me") is True
