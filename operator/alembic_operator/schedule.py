"""When each DatabaseMigration is reconciled next: one timer heap and a few workers for the whole operator.

Replaces a daemon per resource (a task that woke every minute, and logged a warning when cancelled on deletion).
A resource is worked on by one worker at a time; an event that arrives while it is worked on runs it once more
afterwards; otherwise it sleeps until the time its last pass asked for. A resource with no time set costs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import heapq
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Hashable

log = logging.getLogger("alembic_operator.schedule")

Work = Callable[[Hashable], Awaitable[float | None]]  # one pass; seconds until the next (None: none planned)


class Scheduler:
    """Run ``work(key)`` for each key when it is due, at most ``workers`` at once, never twice at once for one key."""

    def __init__(self, work: Work, workers: int = 8, clock: Callable[[], float] = time.monotonic) -> None:
        self.work = work
        self.workers = workers
        self.clock = clock
        self.due: dict[Hashable, float] = {}  # key -> when (the heap may hold stale entries: this is the truth)
        self._heap: list[tuple[float, int, Hashable]] = []
        self._seq = itertools.count()
        self._ready: asyncio.Queue[Hashable] = asyncio.Queue()
        self._queued: set[Hashable] = set()
        self._running: set[Hashable] = set()
        self._again: set[Hashable] = set()
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, context: contextvars.Context | None = None) -> None:
        """Start the timer and the workers, each in a copy of `context` (Kopf's: its Event poster is found there)."""
        if not self._tasks:
            base = context or contextvars.copy_context()
            self._tasks = [asyncio.create_task(self._timer(), context=base.copy())]
            self._tasks += [asyncio.create_task(self._worker(), context=base.copy()) for _ in range(self.workers)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    def now(self, key: Hashable) -> None:
        """Work on it as soon as a worker is free (again after the current pass, if one runs)."""
        self.due.pop(key, None)
        if key in self._running:
            self._again.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._ready.put_nowait(key)

    def later(self, key: Hashable, delay: float) -> None:
        """Work on it in `delay` seconds (or sooner, when it was due sooner)."""
        when = self.clock() + max(delay, 0.0)
        if key in self._queued or key in self._again:
            return
        if key in self.due and self.due[key] <= when:
            return
        self.due[key] = when
        heapq.heappush(self._heap, (when, next(self._seq), key))
        self._changed.set()

    def forget(self, key: Hashable) -> None:
        """Nothing more for this key (deleted): drop its timer and any pending repeat."""
        self.due.pop(key, None)
        self._again.discard(key)
        self._compact()

    def _compact(self) -> None:
        """Rebuild the heap when most of it is stale (rescheduled or forgotten keys): after a thousand deletions it
        would otherwise keep their entries until each one's time came, minutes later."""
        if len(self._heap) > 2 * len(self.due) + 64:
            self._heap = [(w, next(self._seq), k) for k, w in self.due.items()]
            heapq.heapify(self._heap)

    def pending(self) -> int:
        return len(self.due) + len(self._queued) + len(self._running)

    async def _timer(self) -> None:
        while True:
            self._changed.clear()
            now = self.clock()
            while self._heap and self._heap[0][0] <= now:
                when, _, key = heapq.heappop(self._heap)
                if self.due.get(key) == when:
                    self.now(key)
            self._compact()
            timeout = self._heap[0][0] - now if self._heap else None
            # asyncio.timeout, not wait_for: Python 3.11's wait_for drops a cancellation that arrives as the wait
            # ends, and stop() then waited forever for this loop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._changed.wait()

    async def _worker(self) -> None:
        while True:
            key = await self._ready.get()
            self._queued.discard(key)
            self._running.add(key)
            delay: float | None = None
            try:
                delay = await self.work(key)
            except asyncio.CancelledError:
                raise
            except Exception:  # the work function reports its own errors; a worker never dies
                log.exception("reconcile of %s failed", key)
                delay = 5.0
            finally:
                self._running.discard(key)
            if key in self._again:
                self._again.discard(key)
                self.now(key)
            elif delay is not None:
                self.later(key, delay)
