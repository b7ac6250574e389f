"""The webhook's registration over its whole life, as Kopf drives it (an async context manager around the server,
client configs yielded from it): Kopf's real HTTPS server, our real client, a fake API server (test_kube's)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from test_kube import MWC, FakeApi, api

from alembic_operator import webhook
from alembic_operator.kube import Client

__all__ = ["api"]  # the fixture


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _handler(*_: Any, **__: Any) -> dict[str, Any]:
    return {}


async def _serve_once(server: webhook.GateWebhookServer) -> None:
    """Kopf's admission task: enter the server, take its first client config, and stop (a clean stop)."""
    async with server as entered:
        configs: AsyncIterator[Any] = entered(_handler)
        await anext(configs)
        await configs.aclose()


@pytest.mark.asyncio
async def test_a_clean_stop_removes_the_configuration_this_process_wrote(api: tuple[FakeApi, Client]) -> None:
    fake, client = api
    opts = webhook.WebhookOptions(listen="127.0.0.1", port=_port(), config_name="local-gate")
    server = webhook.GateWebhookServer(opts, client)
    fake.on("POST", MWC, lambda: web.json_response({}, status=201))
    written: dict[str, Any] = {}

    def read() -> web.Response:
        return web.json_response({**written, "metadata": {**written["metadata"], "uid": "u", "resourceVersion": "1"}})

    fake.on("GET", f"{MWC}/local-gate", lambda: web.json_response({}, status=404), read)
    fake.on("DELETE", f"{MWC}/local-gate", lambda: web.json_response({"kind": "Status", "status": "Success"}))

    async with server as entered:
        configs: AsyncIterator[Any] = entered(_handler)
        await anext(configs)
        post = next(s for s in fake.seen if s.method == "POST")
        written.update(post.body)
        assert written["metadata"]["annotations"] == {webhook.REGISTERED_BY: server.identity}
        assert written["webhooks"][0]["clientConfig"]["url"].startswith(f"https://127.0.0.1:{opts.port}/")
        await configs.aclose()
    delete = [s for s in fake.seen if s.method == "DELETE"]
    assert [s.path for s in delete] == [f"{MWC}/local-gate"]
    assert delete[0].body["preconditions"] == {"uid": "u", "resourceVersion": "1"}


@pytest.mark.asyncio
async def test_what_a_stop_leaves(api: tuple[FakeApi, Client]) -> None:
    fake, client = api
    fake.on("POST", MWC, lambda: web.json_response({}, status=201))
    # Rewritten by another process since: it names that one, and stays.
    other = {"metadata": {"name": "local-gate", "annotations": {webhook.REGISTERED_BY: "host/1/other"}}}
    fake.on("GET", f"{MWC}/local-gate", lambda: web.json_response({}, status=404),
            lambda: web.json_response(other))
    await _serve_once(webhook.GateWebhookServer(
        webhook.WebhookOptions(listen="127.0.0.1", port=_port(), config_name="local-gate"), client))
    assert [s.method for s in fake.seen] == ["GET", "POST", "GET"]
    fake.seen.clear()
    # A configuration calling a Service (in a cluster) stays, fail closed until a replica serves it again.
    await _serve_once(webhook.GateWebhookServer(webhook.WebhookOptions(
        listen="127.0.0.1", port=_port(), config_name="svc-gate", service="ops/gate"), client))
    assert [s.method for s in fake.seen] == ["GET", "POST"]
    fake.seen.clear()
    # Managed elsewhere (the chart: --webhook-config-name none): never written, never removed.
    await _serve_once(webhook.GateWebhookServer(
        webhook.WebhookOptions(listen="127.0.0.1", port=_port(), config_name="none"), client))
    assert fake.seen == []


@pytest.mark.asyncio
async def test_a_generated_key_lasts_as_long_as_the_server(api: tuple[FakeApi, Client], tmp_path: Any) -> None:
    _, client = api
    opts = webhook.WebhookOptions(listen="127.0.0.1", port=_port(), config_name="none")
    server = webhook.GateWebhookServer(opts, client)
    made = server.generated
    assert made is not None and (made / "tls.key").is_file()
    async with server as entered:
        configs: AsyncIterator[Any] = entered(_handler)
        config = await anext(configs)
        assert config["caBundle"]
        # Kopf's server re-reads the files while it serves (renewed certificates restart it): they must stay.
        await asyncio.sleep(0.3)
        assert (made / "tls.key").is_file() and (made / "tls.crt").is_file()
        await configs.aclose()
    assert not made.exists()  # a private key in /tmp for every start would outlive the process
    # Entered and left without serving (a failed start): removed on the way out.
    server = webhook.GateWebhookServer(opts, client)
    made = server.generated
    assert made is not None
    async with server:
        pass
    assert not made.exists()
    # Mounted certificates (--webhook-cert-dir) belong to whoever mounted them.
    files = webhook.make_certificates(tmp_path, ["127.0.0.1"])
    await _serve_once(webhook.GateWebhookServer(webhook.WebhookOptions(
        listen="127.0.0.1", port=_port(), config_name="none", cert_dir=str(tmp_path)), client))
    assert files.key.is_file() and files.cert.is_file()
