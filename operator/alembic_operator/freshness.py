"""The freshness check of settled resources: re-read the database's revision now and then, cheaply.

A resource whose run is over (Ready, or Failed) makes no API request and opens no database session until something
it watches changes, or its freshness check is due (``spec.freshnessCheck.interval``, spread by :func:`jittered`).
The check reads only the revision (:class:`RevisionReader`: bounded concurrency operator-wide, and resources on one
database share a read taken moments before); the full reconcile runs only when the revision is not the one it
settled at.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

JITTER = 0.1  # up to 10 % more than the interval
SHARE_SECONDS = 10.0  # a revision read this recently serves the other resources on the same database
READS_AT_ONCE = 4  # freshness reads in flight operator-wide

T = TypeVar("T")


def jittered(interval: float, rand: Callable[[], float] = random.random) -> float:
    """The interval plus up to JITTER of it: checks of resources created together drift apart."""
    return interval * (1.0 + JITTER * rand())


@dataclass(frozen=True)
class Settled:
    """What a settled resource's last full reconcile saw; the freshness check compares against it."""

    resource_version: str  # the resource as it was then (any change: a full reconcile instead)
    revision: str | None
    due_full: float | None = None  # monotonic time a full reconcile is due anyway (the next drift check)


class RevisionReader(Generic[T]):
    """Read a database's revision through ``read`` (blocking: run in a thread), at most `limit` at once.

    :meth:`revision` (the freshness check) takes a read of the same database (``key``) finished less than `share`
    seconds ago, or in flight. :meth:`fresh` (a reconcile, which must see every commit made before it asked) takes
    only a read that started after it asked: a thousand resources on one database reconciled together share a few
    reads, each as fresh as a read of their own.
    """

    def __init__(self, read: Callable[[object], T], limit: int = READS_AT_ONCE, share: float = SHARE_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.read = read
        self.share = share
        self.clock = clock
        self.reads = 0  # database sessions opened
        self._limit = asyncio.Semaphore(limit)
        self._recent: dict[Hashable, tuple[float, T]] = {}
        self._flight: dict[Hashable, tuple[int, asyncio.Future[T]]] = {}
        self._seq: dict[Hashable, int] = {}  # reads started, per database

    async def revision(self, key: Hashable, target: object) -> T:
        if (hit := self._recent.get(key)) is not None and self.clock() - hit[0] < self.share:
            return hit[1]
        if (flight := self._flight.get(key)) is not None:
            return await asyncio.shield(flight[1])
        return await self._read(key, target)

    async def fresh(self, key: Hashable, target: object) -> T:
        asked = self._seq.get(key, 0)
        while (flight := self._flight.get(key)) is not None:
            seq, future = flight
            if seq > asked:
                return await asyncio.shield(future)
            with contextlib.suppress(Exception):  # started before we asked: wait for it, then read anew
                await asyncio.shield(future)
        return await self._read(key, target)

    async def _read(self, key: Hashable, target: object) -> T:
        seq = self._seq[key] = self._seq.get(key, 0) + 1
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._flight[key] = (seq, future)
        try:
            async with self._limit:
                self.reads += 1
                value = await asyncio.to_thread(self.read, target)
            self._recent[key] = (self.clock(), value)
            future.set_result(value)
            return value
        except BaseException as err:
            future.set_exception(err)
            future.exception()  # retrieved: no "never retrieved" warning when nobody else waited
            raise
        finally:
            if self._flight.get(key, (0, None))[1] is future:
                del self._flight[key]
            self._prune()

    def _prune(self) -> None:
        now = self.clock()
        for key in [k for k, (t, _) in self._recent.items() if now - t >= self.share]:
            del self._recent[key]
        for key in [k for k in self._seq if k not in self._flight and k not in self._recent]:
            del self._seq[key]
