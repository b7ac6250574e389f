"""The shop's HTTP API: list and create orders, over the models of the release the image carries.

    DATABASE_URL=postgresql+psycopg://app:...@localhost/shop python -m shop.server     # listens on :8000

- ``GET /orders``: the latest orders (``?limit=N``, default 20), every column the release's model has;
- ``POST /orders`` with ``{"customer_id": 1, "total": "12.50"}`` (and any other column of the model): the new order;
- ``GET /healthz``: 200 once the database answers, 503 while the process drains after SIGTERM.

Only the standard library and SQLAlchemy: the server knows no column by name, so each release's ``shop.models`` is
the only thing that changes between versions (which is why a schema change the running release does not expect
breaks it: its queries name the columns of its own models). Every response says which release and pod served it
(``X-Shop-Version``, ``X-Served-By``), so a load generator can tell the old version's answers from the new one's.

On SIGTERM the server answers 503 on ``/healthz`` but keeps serving for ``SHOP_DRAIN_SECONDS`` (default 5): the pod
leaves the Service's endpoints first, so a rolling update loses no request to a closed port.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from sqlalchemy import Engine, create_engine, select, text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Session

from shop.models import Order

VERSION = os.environ.get("SHOP_VERSION", "dev")
POD = os.environ.get("HOSTNAME") or socket.gethostname()
SERVER_SET = frozenset({"id", "created_at"})  # the database fills them


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def order_json(order: Order) -> dict[str, Any]:
    """Every column of the release's model, as JSON values."""
    return {col.key: _plain(getattr(order, col.key)) for col in Order.__mapper__.column_attrs}


def writable_fields(body: dict[str, Any]) -> dict[str, Any]:
    """The request's fields this release's model has (unknown fields are refused, not silently dropped)."""
    columns = {col.key for col in Order.__mapper__.column_attrs} - SERVER_SET
    unknown = sorted(set(body) - columns)
    if unknown:
        raise ValueError(f"unknown field(s) {unknown}; this release's orders have {sorted(columns)}")
    fields = dict(body)
    if "total" in fields:
        try:
            fields["total"] = Decimal(str(fields["total"]))
        except InvalidOperation as err:
            raise ValueError(f"total is not a number: {fields['total']!r}") from err
    return fields


class Shop:
    """What the handlers share: one engine (a small pool per process) and the draining flag."""

    def __init__(self, url: str) -> None:
        self.engine: Engine = create_engine(url, pool_size=5, max_overflow=5, pool_pre_ping=True)
        self.draining = threading.Event()

    def list_orders(self, limit: int) -> list[dict[str, Any]]:
        with Session(self.engine) as session:
            rows = session.scalars(select(Order).order_by(Order.id.desc()).limit(limit))
            return [order_json(order) for order in rows]

    def create_order(self, body: dict[str, Any]) -> dict[str, Any]:
        with Session(self.engine) as session, session.begin():
            order = Order(**writable_fields(body))
            session.add(order)
            session.flush()
            session.refresh(order)
            return order_json(order)

    def healthy(self) -> bool:
        if self.draining.is_set():
            return False
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True


def handler_for(shop: Shop) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = f"shop/{VERSION}"
        # HTTP/1.0: one request per connection, so every request goes through the Service's load balancing afresh.

        def log_message(self, format: str, *args: Any) -> None:
            pass  # a line per request would flood the pod's log under load; errors are logged below

        def _send(self, status: int, payload: object) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("X-Shop-Version", VERSION)
            self.send_header("X-Served-By", POD)
            self.end_headers()
            self.wfile.write(data)

        def _guarded(self, action: Callable[[], tuple[int, object]]) -> None:
            try:
                status, payload = action()
            except ValueError as err:
                status, payload = HTTPStatus.BAD_REQUEST, {"error": str(err)}
            except (DBAPIError, SQLAlchemyError) as err:
                # The database's own words (a missing column, a lost connection); never the URL.
                cause = str(getattr(err, "orig", None) or err).splitlines()[0]
                print(f"{self.command} {self.path} failed: {cause}", file=sys.stderr, flush=True)
                status, payload = HTTPStatus.INTERNAL_SERVER_ERROR, {"error": cause}
            self._send(status, payload)

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path == "/healthz":
                self._guarded(lambda: (200, {"ok": True}) if shop.healthy() else (503, {"ok": False}))
            elif url.path == "/orders":
                limit = int((parse_qs(url.query).get("limit") or ["20"])[0])
                self._guarded(lambda: (200, {"version": VERSION, "orders": shop.list_orders(max(1, min(limit,
                                                                                                        100)))}))
            else:
                self._send(404, {"error": f"no such path {url.path}"})

        def do_POST(self) -> None:
            if urlsplit(self.path).path != "/orders":
                self._send(404, {"error": f"no such path {self.path}"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except json.JSONDecodeError as err:
                self._send(400, {"error": f"not JSON: {err}"})
                return
            if not isinstance(body, dict):
                self._send(400, {"error": "expected a JSON object"})
                return
            self._guarded(lambda: (201, {"version": VERSION, "order": shop.create_order(body)}))

    return Handler


def serve(url: str, port: int, drain_seconds: float) -> None:
    shop = Shop(url)
    server = ThreadingHTTPServer(("", port), handler_for(shop))
    server.daemon_threads = True

    def drain_then_stop(*_: object) -> None:
        if shop.draining.is_set():
            return
        shop.draining.set()
        print(f"SIGTERM: draining for {drain_seconds:g}s, then stopping", file=sys.stderr, flush=True)

        def stop() -> None:
            time.sleep(drain_seconds)
            server.shutdown()

        threading.Thread(target=stop, daemon=True).start()

    signal.signal(signal.SIGTERM, drain_then_stop)
    signal.signal(signal.SIGINT, drain_then_stop)
    print(f"shop {VERSION} serving on :{port} as {POD}", file=sys.stderr, flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        shop.engine.dispose()


def main() -> int:
    url = os.environ.get("DATABASE_URL")
    if not url:
        print("set DATABASE_URL to the shop database's SQLAlchemy URL", file=sys.stderr)
        return 2
    serve(url, int(os.environ.get("PORT", "8000")), float(os.environ.get("SHOP_DRAIN_SECONDS", "5")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
