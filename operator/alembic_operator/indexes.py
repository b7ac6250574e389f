"""What this operator process keeps between passes, fed by the watches (:class:`Runtime`), and the
:class:`Context` every room of a pass works with (the configuration, the Kubernetes client, the runtime).

Everything kept per resource is dropped when it is deleted; what no watch event reported (a deletion while a watch
was down) is found by :func:`sweep`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import gc
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal, cast

from . import constants as c
from . import freshness, kube, metrics
from .api import WRITING_STEPS, RunStatus
from .config import OperatorConfig
from .dbstate import DatabaseTarget, read_revision
from .fleet.approval import SetApprovals
from .kept import KeptObjects, job_summary, resource_version, without_managed_fields
from .notify.send import Notifier
from .objects import Job, Migration, Object, job, migration
from .observation import DatabaseObservation, JobObservation
from .schedule import Scheduler

Logger = logging.Logger | logging.LoggerAdapter[Any]


JobState = Literal["active", "succeeded", "failed"]


Ref = tuple[str, str]  # (namespace, DatabaseMigration name)

GENERATIONS_KEPT = 2  # the Jobs (and their pods' logs) of the newest runs stay for inspection


STARTING_SECONDS = 60.0  # a created Job counts against the cap until its watch event, at most this long
# Seconds after the last deletion of a burst: give the freed memory back to the system, once the API connections
# the burst opened have closed too (aiohttp keeps an idle one for 15 s).
TRIM_DELAY = 20.0
SWEEP_SECONDS = 600.0  # how often the indexes are checked against the cluster for what no watch event reported


class Runtime:
    """In-memory state of this operator process, fed by the watches; rebuilt from the cluster at start-up.

    Everything kept per resource is dropped when it is deleted (:meth:`forget`)."""

    def __init__(self, max_running_jobs: int = 0) -> None:
        # the watch's copy, or our own write when newer
        self.migrations: KeptObjects[Ref, Migration] = KeptObjects(without_managed_fields)
        self.jobs: dict[Ref, KeptObjects[str, Job]] = {}  # our Jobs by owner, then by name (without their pod template)
        self.active_jobs: set[tuple[str, str]] = set()  # (namespace, name) of our Jobs still running
        self.writers: dict[str, set[Ref]] = {}  # database key -> resources writing to it
        self.db_locks: dict[str, asyncio.Lock] = {}
        self.jobs_counted: set[str] = set()  # finished Jobs already in the metrics
        self.settled: dict[Ref, freshness.Settled] = {}
        self.targets: dict[Ref, DatabaseTarget] = {}  # the database of a settled resource (its freshness check)
        self.secrets: dict[tuple[str, str], tuple[float, dict[str, str]]] = {}  # (ns, name) -> (read at, data)
        self.observed: dict[tuple[str, str], JobObservation] = {}  # finished Jobs: (name, resourceVersion) -> seen
        self.max_running_jobs = max_running_jobs  # 0: no cap
        self.starting: dict[str, float] = {}  # Jobs created, not seen by the watch yet (name -> when)
        self.jobs_listed: set[Ref] = set()  # resources whose Jobs were listed once (then the watch keeps them)
        self.queued: dict[Ref, None] = {}  # resources waiting for a Job slot, in order
        self.slots = asyncio.Lock()
        self.scheduler: Scheduler | None = None
        self.notifier: Notifier | None = None  # delivers status.notifications (notify/)
        # DatabaseMigrationSets' approvals by (namespace, set), kept by the fleet: what their members count.
        self.set_approvals: dict[Ref, SetApprovals] = {}
        self.revisions: freshness.RevisionReader[DatabaseObservation] = freshness.RevisionReader(
            lambda target: read_revision(cast(DatabaseTarget, target)))
        self._trim: asyncio.TimerHandle | None = None

    # --- inputs (the watches) -----------------------------------------------------------------------------------
    def migration_seen(self, event_type: str | None, raw: Mapping[str, object]) -> bool:
        """Keep the watch's copy; True when it is news (not a copy of what we wrote, nor a re-listing)."""
        body = migration(raw)
        meta = body.get("metadata") or {}
        ref = (str(meta.get("namespace")), str(meta.get("name")))
        if event_type == "DELETED":
            self.forget(ref)
            return False
        return self.migrations.put_if_newer(ref, body)

    def remember(self, raw: Mapping[str, object]) -> None:
        """An object the API server returned to us (our status write): kept when newer than the watch's copy."""
        obj = migration(raw)
        meta = obj.get("metadata") or {}
        ref = (str(meta.get("namespace")), str(meta.get("name")))
        if ref in self.migrations:
            self.migrations.put_if_newer(ref, obj)

    def job_seen(self, event_type: str | None, raw: Mapping[str, object]) -> Ref | None:
        """Index a Job of ours by owner; the owner to wake (None: not ours, or nothing new)."""
        body = job(raw)
        meta = body.get("metadata") or {}
        owner = (meta.get("labels") or {}).get(c.OWNER_LABEL)
        namespace, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
        if not owner or not namespace:
            return None
        ref = (namespace, str(owner))
        jobs = self.jobs.setdefault(ref, KeptObjects(job_summary))
        self.starting.pop(name, None)
        was_active = (namespace, name) in self.active_jobs
        if event_type == "DELETED":
            jobs.pop(name)
            self.active_jobs.discard((namespace, name))
            for key in [k for k in self.observed if k[0] == name]:
                del self.observed[key]
            if not jobs:
                del self.jobs[ref]
        elif not jobs.put_if_newer(name, body):
            return None
        elif job_state(body) == "active":
            self.active_jobs.add((namespace, name))
        else:
            self.active_jobs.discard((namespace, name))
        if was_active and (namespace, name) not in self.active_jobs:
            self.slot_freed()
        if was_active != ((namespace, name) in self.active_jobs):
            self.report_slots()
        return ref

    def has_active_jobs(self, ref: Ref) -> bool:
        return any((ref[0], name) in self.active_jobs for name in self.jobs.get(ref, ()))

    # --- the Job cap --------------------------------------------------------------------------------------------
    def running_jobs(self) -> int:
        active = len(self.active_jobs)
        now = time.monotonic()
        for name in [n for n, t in self.starting.items() if now - t > STARTING_SECONDS]:
            del self.starting[name]  # its event was missed (or it was deleted at once): the watch is the truth
        return active + len(self.starting)

    def report_slots(self) -> None:
        """The Job slots as the metrics show them: running, the cap, runs waiting."""
        metrics.job_slots(self.running_jobs(), self.max_running_jobs, len(self.queued))

    def slot_freed(self) -> None:
        """A Job ended: wake the resource that has waited longest for a slot."""
        if self.queued and self.scheduler is not None:
            ref = next(iter(self.queued))
            del self.queued[ref]
            self.scheduler.now(ref)

    # --- per-resource state -------------------------------------------------------------------------------------
    def wake(self, namespace: str, name: str) -> None:
        ref = (namespace, name)
        self.settled.pop(ref, None)
        if self.scheduler is not None:
            self.scheduler.now(ref)

    def forget(self, ref: Ref) -> None:
        """The resource is gone: drop everything kept for it."""
        self.migrations.pop(ref)
        metrics.forget(*ref)
        self.settled.pop(ref, None)
        self.targets.pop(ref, None)
        self.queued.pop(ref, None)
        self.note(ref, None)
        if self.scheduler is not None:
            self.scheduler.forget(ref)
        self.jobs_listed.discard(ref)
        for name in self.jobs.pop(ref, ()):
            self.jobs_counted.discard(name)
            self.active_jobs.discard((ref[0], name))
            for key in [k for k in self.observed if k[0] == name]:
                del self.observed[key]
        self.trim_soon()

    def trim_soon(self) -> None:
        """After a burst (of deletions, of resources settling after a rollout): collect and hand freed heap pages back
        to the system (glibc keeps them), once the burst is over."""
        if self._trim is not None:
            self._trim.cancel()
        with contextlib.suppress(RuntimeError):  # no loop (unit tests): nothing to trim later
            self._trim = asyncio.get_running_loop().call_later(TRIM_DELAY, _release_memory)

    def note(self, ref: Ref, run: RunStatus | None) -> None:
        """Who writes to which database (the run's database key, while its step may write)."""
        for old in [k for k, holders in self.writers.items() if ref in holders]:
            self.writers[old].discard(ref)
            if not self.writers[old]:
                del self.writers[old]
        key = run.database_key if run else None
        if run and key and run.step in WRITING_STEPS:
            self.writers.setdefault(key, set()).add(ref)

    def absent(self, migrations: list[kube.Present],
               jobs: list[kube.Present]) -> tuple[list[Ref], list[tuple[Ref, str]]]:
        """What the indexes hold that the lists lack, though it is older than them: deleted while a watch was down.
        (Resources, and Jobs as (owner, name).) Something created after a list is never taken for gone."""
        def missing(present: list[kube.Present], namespace: str, name: str, obj: Object | None) -> bool:
            for listed in present:
                if listed.namespace in (None, namespace):
                    return (namespace, name) not in listed.names and resource_version(obj) < listed.version
            return False

        gone = [ref for ref in self.migrations if missing(migrations, *ref, self.migrations.get(ref))]
        gone_jobs = [(ref, name) for ref, kept in self.jobs.items() for name in kept
                     if missing(jobs, ref[0], name, kept.get(name))]
        return gone, gone_jobs

    def busy_with(self, key: str, ref: Ref) -> str | None:
        others = sorted(self.writers.get(key, set()) - {ref})
        return f"DatabaseMigration {others[0][0]}/{others[0][1]}" if others else None


async def sweep(ctx: Context, also_gone: Callable[[Migration], None] = lambda _obj: None) -> int:
    """Drop from the indexes what was deleted while a watch was down (an API server restart, a cut connection):
    Kopf lists again when it reconnects, but reports no deletion for what that listing lacks. Left there, a
    resource would keep its freshness checks and a Job its slot of --max-running-jobs for ever. Two metadata-only
    lists per watched namespace; `also_gone` gets each gone resource too (the gatekeeper). How many were dropped."""
    watched = ctx.config.watched
    migrations, jobs = await ctx.kube.present(watched, "migrations"), await ctx.kube.present(watched, "jobs")
    gone, gone_jobs = ctx.runtime.absent(migrations, jobs)
    for namespace, name in gone:
        stub: Migration = {"metadata": {"namespace": namespace, "name": name}}
        ctx.runtime.migration_seen("DELETED", stub)
        also_gone(stub)
    for (namespace, owner), name in gone_jobs:
        gone_job: Job = {"metadata": {"namespace": namespace, "name": name, "labels": {c.OWNER_LABEL: owner}}}
        if ctx.runtime.job_seen("DELETED", gone_job) is not None and (namespace, owner) in ctx.runtime.migrations:
            ctx.runtime.wake(namespace, owner)
    return len(gone) + len(gone_jobs)


def _release_memory() -> None:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@dataclasses.dataclass(frozen=True)
class Context:
    """What the handlers work with: the configuration, the Kubernetes client, this process's runtime state."""

    config: OperatorConfig
    kube: kube.Client
    runtime: Runtime


def run_of(obj: Migration | None) -> RunStatus:
    """status.run, read through the model (an absent or empty run: all fields unset)."""
    return RunStatus.model_validate(((obj or {}).get("status") or {}).get("run") or {})


def job_state(body: Job) -> JobState:
    for cond in (body.get("status") or {}).get("conditions") or []:
        if cond.get("status") == "True" and cond.get("type") in ("Complete", "Failed"):
            return "succeeded" if cond["type"] == "Complete" else "failed"
    return "active"


def job_generation(body: Job) -> int:
    return int(((body.get("metadata") or {}).get("labels") or {}).get(c.GENERATION_LABEL) or 0)


def job_instance(body: Job) -> int:
    return int(((body.get("metadata") or {}).get("labels") or {}).get(c.INSTANCE_LABEL) or -1)
