"""A small JSON client for the Kubernetes API, used by the bed's node agent (``bed.nodeagent``).

Plain dicts in and out (no generated models: watching every pod of the cluster through them costs CPU), one
urllib3 pool per kubeconfig, and a watch iterator. kubernetes.config reads the kubeconfig (any auth it supports).
"""

from __future__ import annotations

import json
import logging
import time
import urllib.parse
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, TypeVar

import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

JSON = dict[str, Any]
T = TypeVar("T")

log = logging.getLogger("nodeagent")

STRATEGIC = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"


class ApiError(Exception):
    """An HTTP error answer from the API server (``status`` is the HTTP code, ``reason`` the Status reason)."""

    def __init__(self, status: int, body: bytes | str, method: str = "", path: str = "") -> None:
        self.status = status
        text = body.decode(errors="replace") if isinstance(body, bytes) else body
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        self.body: JSON = parsed if isinstance(parsed, dict) else {"message": text[:300]}
        self.reason = str(self.body.get("reason") or "")
        self.message = str(self.body.get("message") or "")
        super().__init__(f"{method} {path}: {status} {self.reason}: {self.message}".strip())

    @property
    def transient(self) -> bool:
        return self.status in (429, 500, 502, 503, 504) or self.status >= 500


TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (urllib3.exceptions.HTTPError, OSError)


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, ApiError):
        return exc.transient
    return isinstance(exc, TRANSIENT_ERRORS)


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Kube:
    """The API server as seen through one kubeconfig."""

    def __init__(self, kubeconfig: str, pool_size: int = 16) -> None:
        cfg = k8s_client.Configuration()
        k8s_config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)  # type: ignore[no-untyped-call]
        self.server: str = str(cfg.host).rstrip("/")
        parsed = urllib.parse.urlsplit(self.server)
        self.host = parsed.hostname or "127.0.0.1"
        self.port = parsed.port or (443 if parsed.scheme == "https" else 80)
        kwargs: dict[str, Any] = {}
        if parsed.scheme == "https":
            if cfg.verify_ssl:
                kwargs["cert_reqs"] = "CERT_REQUIRED"
                if cfg.ssl_ca_cert:
                    kwargs["ca_certs"] = cfg.ssl_ca_cert
            else:
                kwargs["cert_reqs"] = "CERT_NONE"
            if cfg.cert_file:
                kwargs["cert_file"] = cfg.cert_file
                kwargs["key_file"] = cfg.key_file
        self.headers = {"Accept": "application/json", "User-Agent": "bed-nodeagent/1"}
        auth = (cfg.api_key or {}).get("authorization") or (cfg.api_key or {}).get("BearerToken")
        if auth:
            prefix = (cfg.api_key_prefix or {}).get("authorization")
            self.headers["Authorization"] = (
                f"{prefix} {auth}" if prefix else (auth if auth.lower().startswith("bearer ") else f"Bearer {auth}")
            )
        self.pool = urllib3.PoolManager(num_pools=2, maxsize=pool_size, block=False, retries=False, **kwargs)

    def _url(self, path: str, query: dict[str, Any] | None) -> str:
        url = self.server + path
        if query:
            clean = {k: (str(v).lower() if isinstance(v, bool) else v) for k, v in query.items() if v is not None}
            url += "?" + urllib.parse.urlencode(clean)
        return url

    def request(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, Any] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float = 30.0,
    ) -> JSON:
        headers = dict(self.headers)
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        resp = self.pool.request(
            method,
            self._url(path, query),
            body=data,
            headers=headers,
            timeout=urllib3.Timeout(connect=5.0, read=timeout),
            preload_content=True,
        )
        if resp.status >= 400:
            raise ApiError(resp.status, resp.data, method, path)
        if not resp.data:
            return {}
        result = json.loads(resp.data)
        return result if isinstance(result, dict) else {"value": result}

    def get(self, path: str, **kw: Any) -> JSON:
        return self.request("GET", path, **kw)

    def watch(self, path: str, query: dict[str, Any], timeout: float) -> Iterator[JSON]:
        """Events of one watch request (``{"type": ..., "object": ...}``) until the server ends it."""
        q = dict(query, watch="true", timeoutSeconds=int(timeout), allowWatchBookmarks="true")
        resp = self.pool.request(
            "GET",
            self._url(path, q),
            headers=dict(self.headers),
            timeout=urllib3.Timeout(connect=5.0, read=timeout + 30),
            preload_content=False,
        )
        try:
            if resp.status >= 400:
                raise ApiError(resp.status, resp.read(), "WATCH", path)
            buf = b""
            for chunk in resp.stream(65536):
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
        finally:
            resp.release_conn()


def retry(fn: Callable[[], T], what: str, attempts: int = 5, delay: float = 0.2) -> T:
    """Call fn, retrying transient failures (connection errors, 5xx, 429) with a growing pause."""
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as exc:
            if not is_transient(exc) or attempt == attempts - 1:
                raise
            log.warning("%s failed (%s); retrying", what, exc)
            time.sleep(delay * (2**attempt))
    raise AssertionError("unreachable")
