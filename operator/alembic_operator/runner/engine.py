"""The runner's own connections (the connectivity check, the migration lock), whatever driver the app uses.

An app on an async driver (`postgresql+asyncpg://`, `sqlite+aiosqlite://`) often ships only that driver, and its
env.py connects through SQLAlchemy's asyncio extension. The runner's own short statements are synchronous code, so
for such a URL they go through `AsyncBridge`: the async engine on an event loop of its own, in a thread, each call
waiting for its result. env.py keeps its own loop (asyncio.run) in the main thread, untouched.

Standard library and sqlalchemy only, Python 3.9+.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any


def make_engine(url: str) -> Any:
    """A synchronous Engine, or an AsyncBridge with the same small surface when the URL's driver is async."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    if getattr(make_url(url).get_dialect(), "is_async", False):
        return AsyncBridge(url)
    return create_engine(url, poolclass=NullPool)


class AsyncBridge:
    """`connect()`, `dialect` and `dispose()` of an async engine, callable from synchronous code."""

    def __init__(self, url: str) -> None:
        from sqlalchemy.ext.asyncio import create_async_engine
        from sqlalchemy.pool import NullPool

        self._engine = create_async_engine(url, poolclass=NullPool)
        self.dialect = self._engine.dialect
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="runner-async-engine", daemon=True)
        self._thread.start()

    def run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def connect(self) -> BridgedConnection:
        return BridgedConnection(self, self.run(self._engine.connect().start()))

    def dispose(self) -> None:
        self.run(self._engine.dispose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)


class BridgedConnection:
    """The part of a Connection the runner uses; results are buffered, so they are read synchronously."""

    def __init__(self, bridge: AsyncBridge, connection: Any) -> None:
        self._bridge = bridge
        self._connection = connection

    def execution_options(self, **options: Any) -> BridgedConnection:
        self._bridge.run(self._connection.execution_options(**options))
        return self

    def execute(self, statement: Any, parameters: Any = None) -> Any:
        return self._bridge.run(self._connection.execute(statement, parameters))

    def exec_driver_sql(self, statement: str, parameters: Any = None) -> Any:
        return self._bridge.run(self._connection.exec_driver_sql(statement, parameters))

    def close(self) -> None:
        self._bridge.run(self._connection.close())

    def __enter__(self) -> BridgedConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
