"""The node agent's kubelet HTTPS endpoint, for ``kubectl logs`` only (part of ``bed.nodeagent``).

kube-apiserver reaches it at the Node's InternalIP (127.0.0.1) and ``status.daemonEndpoints.kubeletEndpoint.Port``
with its kubelet client certificate; without ``--kubelet-certificate-authority`` it does not verify the serving
certificate, so a self-signed one does. Client certificates are required when a client CA is known.

Supported: ``GET /containerLogs/<ns>/<pod>/<container>`` with ``follow``, ``previous``, ``tailLines``,
``limitBytes`` (``timestamps``, ``sinceSeconds`` and ``sinceTime`` are ignored), and ``/healthz``. No exec, attach
or port-forward.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import logging
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bed.agent_pod import PodWorker

log = logging.getLogger("nodeagent")


def self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(name), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "kubelet.crt", directory / "kubelet.key"
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


class LogServer:
    def __init__(
        self,
        state_dir: Path,
        node_name: str,
        lookup: Callable[[str, str], PodWorker | None],
        client_ca: str | None,
    ) -> None:
        cert, key = self_signed(state_dir / "kubelet-pki", node_name)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(cert), str(key))
        if client_ca:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(client_ca)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                log.debug("kubelet endpoint: " + format, *args)

            def do_GET(self) -> None:
                with contextlib.suppress(BrokenPipeError, ConnectionResetError, ssl.SSLError):
                    server.handle(self)

        self.state_dir = state_dir
        self.lookup = lookup
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True, do_handshake_on_connect=False)
        self.port: int = self.httpd.server_address[1]

    def start(self) -> None:
        threading.Thread(target=self.httpd.serve_forever, name="kubelet-endpoint", daemon=True).start()

    @staticmethod
    def _reply(req: BaseHTTPRequestHandler, code: int, text: str) -> None:
        data = text.encode()
        req.send_response(code)
        req.send_header("Content-Type", "text/plain; charset=utf-8")
        req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        req.wfile.write(data)

    def handle(self, req: BaseHTTPRequestHandler) -> None:
        url = urllib.parse.urlsplit(req.path)
        parts = [urllib.parse.unquote(p) for p in url.path.split("/") if p]
        if parts == ["healthz"]:
            return self._reply(req, 200, "ok")
        if len(parts) != 4 or parts[0] != "containerLogs":
            return self._reply(req, 404, "the bed's node agent serves only /containerLogs")
        _, ns, pod, name = parts
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
        path = self.state_dir / "pods" / ns / pod / f"{name}.log"
        if "/" in ns + pod + name or not path.is_file():
            return self._reply(req, 404, f'container "{name}" in pod "{pod}" not found')
        worker = self.lookup(ns, pod)
        ctr = worker.container(name) if worker is not None else None
        start, end = 0, None
        if ctr is not None and ctr.runs:
            if query.get("previous") == "true":
                if len(ctr.runs) < 2:
                    return self._reply(req, 400, f'previous terminated container "{name}" in pod "{pod}" not found')
                start, end = ctr.runs[-2], ctr.runs[-1]
            else:
                start = ctr.runs[-1]
        with path.open("rb") as f:
            f.seek(start)
            data = f.read() if end is None else f.read(max(0, end - start))
            pos = f.tell()
        if query.get("tailLines", "").isdigit():
            lines = data.splitlines(keepends=True)
            n = int(query["tailLines"])
            data = b"".join(lines[-n:]) if n else b""
        limit = int(query["limitBytes"]) if query.get("limitBytes", "").isdigit() else None
        if limit is not None:
            data = data[:limit]
        req.send_response(200)
        req.send_header("Content-Type", "text/plain")
        req.send_header("Connection", "close")
        req.end_headers()
        req.wfile.write(data)
        req.wfile.flush()
        sent = len(data)
        if query.get("follow") != "true" or end is not None or ctr is None:
            return None
        while limit is None or sent < limit:
            with path.open("rb") as f:
                f.seek(pos)
                more = f.read(65536)
            if more:
                if limit is not None:
                    more = more[: limit - sent]
                req.wfile.write(more)
                req.wfile.flush()
                pos += len(more)
                sent += len(more)
                continue
            if ctr.state != "running" or (worker is not None and worker.done):
                return None
            time.sleep(0.2)
        return None
