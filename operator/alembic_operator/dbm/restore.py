"""`kubectl dbm restore NAME BACKUP`: restore one of a DatabaseMigration's backups by hand.

    kubectl dbm restore orders                                  the backups status knows of (nothing restored)
    kubectl dbm restore orders orders-20261124T020738Z-9d81aa02c4f5.dump [--yes] [--no-wait]
    kubectl dbm restore orders s3://shop-backups/prod/shop/orders/orders-20261124T020738Z-9d81aa02c4f5.dump

The person's own credentials create one Job in the namespace, built by the operator's own builder (``jobs.py``,
role ``restore``) from the resource's spec: the same image, store wiring (a volume, or the S3 settings, with
credentials only as ``secretKeyRef``), database Secret reference, security context and jobTemplate as the
rollback's restore. Its command (``alembic-operator job restore``) verifies the dump's sha256 before it connects
to the database: the checksum status recorded for the backup, else the one its record in the store kept
(``--sha256 recorded``). It holds the database's migration lock (``--lock-key database``: derived in the Job from
the URL, which this command never reads), so no migration Job of the operator writes at the same time.

It refuses while a run of the resource is under way (planning, waiting for approval, backing up, migrating, rolling
back: a restore would race its Jobs or change where its plan starts), while the resource is being deleted, while
another restore by hand runs, and for a name that is not one of this resource's backups. The Job is labelled role
``restore-by-hand`` (the operator's runs ignore it; ``kubectl dbm logs NAME --role restore-by-hand`` shows it) and
owned by the resource. After a restore the database is at the backup's revision: the operator then reports it
(``DatabaseChanged`` when that is not the target) and migrates again only when the resource is edited.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol, cast

from .. import backupstores
from .. import constants as c
from ..api import DatabaseMigrationSpec, DatabaseMigrationStatus, SpecError, parse_spec, parse_status
from ..jobparts import StoreWiring, manifest
from ..jobs import Owner, build_job, job_name
from ..objects import Pod
from ..podstate import pod_progress
from .ask import Refused, confirm
from .views import Migration

if TYPE_CHECKING:
    from kubernetes.client import BatchV1Api, CoreV1Api, V1Job


class Session(Protocol):
    """What the command uses of kubectl dbm's session (cli.Session): the user's API access and namespace."""

    namespace: str
    batch: BatchV1Api
    core: CoreV1Api

    def migration(self, name: str) -> Migration: ...

    def pods(self, selector: str) -> list[Pod]: ...

ROLE: Final = c.RESTORE_BY_HAND  # the Job's role label: not a role of the operator's runs (jobs.ROLES)
BACKUP_ANNOTATION: Final = f"{c.GROUP}/backup"  # on the Job: which backup it restores, as status names it
RECORDED: Final = "recorded"  # the Job's --sha256 when status no longer knows the backup's checksum
DATABASE_LOCK: Final = "database"  # the Job's --lock-key: the database's migration lock, derived in the Job
POLL_SECONDS: Final = 2.0


@dataclass(frozen=True)
class Chosen:
    """The backup a restore by hand takes, and how the Job finds and checks it."""

    name: str  # the dump's name in the store
    reference: str  # the Job's --dump: <store location>/<name>
    shown: str  # as status names it (<shown_as>/<name>)
    sha256: str  # sha256:<hex> from status, or RECORDED
    revision: str | None  # the database's revision in it, when status knows it


def under_way(status: DatabaseMigrationStatus, deleting: bool, name: str) -> str | None:
    """Why a restore by hand must not start now; None when nothing of the operator's is running."""
    if deleting:
        return f"dbm/{name} is being deleted"
    run = status.run
    if run is not None and run.step not in (None, "Done"):
        return (f"a run of dbm/{name} is under way (generation {run.generation}, {run.step}, phase "
                f"{status.phase or 'unknown'}): a restore now would race its Jobs or change the database its plan "
                f"starts from. Wait until it ends (kubectl wait --for=condition=Reconciling=false dbm/{name}), or set "
                "spec.suspend: true before the next run starts; nothing was restored")
    return None


def known_backups(status: DatabaseMigrationStatus) -> list[str]:
    """The backups status names (the newest, and each run's in history), newest first, without repeats."""
    found = [status.backup.location if status.backup else None,
             *(e.backup for e in reversed(status.history))]
    return list(dict.fromkeys(b for b in found if b))


def _sha(value: str | None) -> str | None:
    text = (value or "").strip().lower()
    text = text if text.startswith("sha256:") else f"sha256:{text}"
    return text if backupstores.SHA256.fullmatch(text) else None


def choose(backup: str, name: str, status: DatabaseMigrationStatus, wiring: StoreWiring,
           sha256: str | None = None) -> Chosen:
    """The backup named `backup` (its dump name, or its location as status or the store names it) of resource
    `name`, whose store `wiring` reaches; its checksum from `sha256`, else status, else the store's record."""
    where, _, dump = backup.strip().rstrip("/").rpartition("/")
    if not backupstores.dump_pattern(name).match(dump):
        raise Refused(f"{backup!r} is not a backup of dbm/{name}: its backups are named {name}-<time>-<revision>.dump "
                      f"(kubectl dbm restore {name} lists those status knows); nothing was restored")
    if where and where.rstrip("/") not in (wiring.location.rstrip("/"), wiring.shown_as.rstrip("/")):
        raise Refused(f"{backup} is not in the backup store of dbm/{name} ({wiring.shown_as}): a restore by hand "
                      "reads the store spec.backup names; nothing was restored")
    expected = None
    if sha256 is not None:
        expected = _sha(sha256)
        if expected is None:
            raise Refused(f"--sha256 {sha256!r} is not a sha256 checksum (sha256:<64 hex digits>)")
    revision = None
    for known in (status.backup, status.run.backup if status.run else None):
        location = getattr(known, "location", None) or ""
        file = getattr(known, "file", None) or ""
        if known is not None and dump in (location.rpartition("/")[2], file.rpartition("/")[2]):
            expected = expected or _sha(known.sha256)
            revision = revision or known.revision
    return Chosen(name=dump, reference=f"{wiring.location.rstrip('/')}/{dump}",
                  shown=f"{wiring.shown_as.rstrip('/')}/{dump}", sha256=expected or RECORDED, revision=revision)


def restore_job(owner: Owner, spec: DatabaseMigrationSpec, wiring: StoreWiring, chosen: Chosen, *,
                operator_image: str, now: dt.datetime) -> V1Job:
    """The rollback's restore Job (jobs.py), for a person: its own name and role label, so that the operator's runs
    never take it for theirs, and the database's own lock (the Job derives it from the URL)."""
    stamp = now.strftime("%Y%m%d%H%M%S")
    job = build_job("restore", owner, spec, operator_image=operator_image, store=wiring,
                    args={"file": chosen.reference, "sha256": chosen.sha256, "lockKey": DATABASE_LOCK})
    assert job.metadata is not None and job.spec is not None and job.spec.template.metadata is not None
    job.metadata.name = job_name(owner.name, "restore", owner.generation, f"by-hand-{stamp}")
    labels = {**(job.metadata.labels or {}), c.ROLE_LABEL: ROLE}
    job.metadata.labels = labels
    job.metadata.annotations = {BACKUP_ANNOTATION: chosen.shown}
    job.spec.template.metadata.labels = {**(job.spec.template.metadata.labels or {}), c.ROLE_LABEL: ROLE}
    return job


def outcome(result: object) -> tuple[bool, str]:
    """(ok, a line for the person) from the restore Job's result (its termination message)."""
    if not isinstance(result, dict):
        return False, "the restore Job left no result (see kubectl dbm logs NAME --role restore-by-hand)"
    if result.get("ok"):
        dropped = result.get("dropped") or []
        return True, (f"the database is at revision {result.get('revision') or 'base'}"
                      + (f"; dropped what the backup did not have: {', '.join(map(str, dropped))}" if dropped else ""))
    return False, f"{result.get('reason') or 'Failed'}: {result.get('message') or 'no message'}"


# --- talking to the cluster (the user's credentials) -------------------------------------------------------------


def _operator_image(s: Session, name: str, image: str | None) -> str:
    """--image, else the image of the operator's containers in this resource's Jobs (the plan Job's runner
    installer is one): the operator's own setting, which this command cannot read."""
    if image:
        return image
    jobs = s.batch.list_namespaced_job(s.namespace, label_selector=f"{c.OWNER_LABEL}={name}").items
    for job in sorted(jobs, key=lambda j: str(j.metadata.creation_timestamp if j.metadata else ""), reverse=True):
        pod = job.spec.template.spec if job.spec and job.spec.template else None
        for ctr in [*(pod.init_containers or []), *(pod.containers or [])] if pod else []:
            if (ctr.command or [""])[0] == "alembic-operator" and ctr.image:
                return str(ctr.image)
    raise Refused(f"no Job of dbm/{name} is left to show the operator's image: pass --image (the operator's, as "
                  "its chart sets image.repository and image.tag); nothing was restored")


def _stuck(s: Session, job: str) -> str | None:
    """Why the Job's pod cannot start without a human (its image, a missing Secret: the operator's own judgment,
    podstate), None while it may still start."""
    _started, blocked = pod_progress(s.pods(f"job-name={job}"))
    return f"{blocked[0]}: {blocked[1]}" if blocked else None


def _running_restore(s: Session, name: str) -> str | None:
    jobs = s.batch.list_namespaced_job(s.namespace, label_selector=f"{c.OWNER_LABEL}={name},{c.ROLE_LABEL}={ROLE}")
    for job in jobs.items:
        st = job.status
        if st is None or not (st.succeeded or st.failed or any(
                x.type in ("Complete", "Failed") and x.status == "True" for x in st.conditions or [])):
            return str(job.metadata.name if job.metadata else "")
    return None


def _finished(job: V1Job) -> bool | None:
    """True: succeeded, False: failed, None: still running."""
    st = job.status
    if st is None:
        return None
    for cond in st.conditions or []:
        if cond.status == "True" and cond.type in ("Complete", "Failed"):
            return cond.type == "Complete"
    return True if st.succeeded else False if st.failed else None


def _result(s: Session, job: str) -> object:
    for pod in s.core.list_namespaced_pod(s.namespace, label_selector=f"job-name={job}").items:
        for ctr in (pod.status.container_statuses or []) if pod.status else []:
            term = ctr.state.terminated if ctr.state else None
            if ctr.name == "restore" and term is not None and term.message:
                try:
                    return json.loads(term.message)
                except ValueError:
                    return None
    return None


def cmd_restore(s: Session, args: argparse.Namespace, say: Callable[[str, object], None]) -> int:
    from kubernetes.client import ApiException

    obj = s.migration(args.name)
    meta = obj["metadata"]
    status = parse_status(obj.get("status"))
    if not args.backup:
        known = known_backups(status)
        text = (f"Backups of dbm/{args.name} that status names (newest first; older ones are in the store):\n"
                + "".join(f"  {b}\n" for b in known) if known else f"dbm/{args.name} names no backup yet.\n")
        say(text + f"Restore one: kubectl dbm restore {args.name} BACKUP\n", {"backups": known})
        return 0
    if (why := under_way(status, bool(meta.get("deletionTimestamp")), args.name)) is not None:
        raise Refused(why)
    try:
        spec = parse_spec(obj.get("spec") or {})
    except SpecError as err:
        raise Refused(f"dbm/{args.name}'s spec is invalid ({err}): fix it first") from None
    wiring = backupstores.wiring_for(spec.backup, s.namespace, args.name)
    if wiring is None:
        raise Refused(f"dbm/{args.name} has backups turned off (spec.backup): there is no store to restore from")
    chosen = choose(args.backup, args.name, status, wiring, args.sha256)
    if (other := _running_restore(s, args.name)) is not None:
        raise Refused(f"another restore by hand of dbm/{args.name} is running (Job {other}): wait for it")
    what = (f"restore {chosen.shown}" + (f" (revision {chosen.revision})" if chosen.revision else "")
            + f" into the database of dbm/{args.name}, replacing its contents")
    if not args.yes and not confirm(f"This will {what}. Go on?", instead=f"--yes to {what}"):
        raise Refused("not restored")
    owner = Owner(name=args.name, namespace=s.namespace, uid=str(meta.get("uid") or ""),
                  generation=int(meta.get("generation") or 0))
    job = restore_job(owner, spec, wiring, chosen, operator_image=_operator_image(s, args.name, args.image),
                      now=dt.datetime.now(dt.UTC))
    try:
        s.batch.create_namespaced_job(s.namespace, cast("V1Job", manifest(job)))  # the client sends JSON as is
    except ApiException as exc:
        if exc.status in (401, 403):
            raise Refused(f"the API server refused the restore Job (creating Jobs in {s.namespace} is needed): "
                          f"{exc.reason}") from None
        raise
    name = str(job.metadata.name if job.metadata else "")
    checked = "the checksum status recorded" if chosen.sha256 != RECORDED else "the checksum of its record"
    if args.no_wait:
        say(f"Job {name} restores {chosen.shown} ({checked} is verified first); follow it with: kubectl dbm logs "
            f"{args.name} --role {ROLE}\n", {"job": name, "backup": chosen.shown, "done": False})
        return 0
    sys.stderr.write(f"Job {name}: verifying {chosen.shown} against {checked}, then restoring...\n")
    deadline = time.monotonic() + args.timeout
    while (done := _finished(s.batch.read_namespaced_job(name, s.namespace))) is None:
        if (why := _stuck(s, name)) is not None:
            raise Refused(f"the pod of Job {name} cannot start ({why}); nothing was restored. Fix it (or delete "
                          f"the Job: kubectl delete job {name}) and run the command again")
        if time.monotonic() > deadline:
            raise Refused(f"Job {name} still runs after {args.timeout:.0f}s; follow it with: kubectl dbm logs "
                          f"{args.name} --role {ROLE}")
        time.sleep(POLL_SECONDS)
    ok, line = outcome(_result(s, name))
    ok = ok and done
    say(f"dbm/{args.name}: {'restored ' + chosen.shown + ': ' if ok else 'restore failed: '}{line}\n",
        {"job": name, "backup": chosen.shown, "done": True, "ok": ok, "message": line})
    return 0 if ok else 1


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("restore", parents=[common], help="restore a backup by hand (refused while a run is under way)")
    s.add_argument("name")
    s.add_argument("backup", nargs="?", help="the backup: its name or location (none: list the backups status names)")
    s.add_argument("--sha256", help="the checksum to verify (default: the one status recorded, else its record's)")
    s.add_argument("-y", "--yes", action="store_true", help="do not ask")
    s.add_argument("--no-wait", action="store_true", help="create the Job and return")
    s.add_argument("--timeout", type=float, default=6 * 3600, help="seconds to wait for the Job (default 6h)")
    s.add_argument("--image", help="the operator's image for the Job (default: the one the resource's Jobs run)")
