"""`kubectl dbm`: the review loop from a terminal (a kubectl plugin: the console script `kubectl-dbm` on PATH).

    kubectl dbm status [-A]                 every DatabaseMigration of the namespace, one line each
    kubectl dbm plan NAME                   revisions, findings and the SQL of the plan (paged)
    kubectl dbm approve NAME [--hash H]     approve the plan shown, by its hash (refused if it changed)
    kubectl dbm history NAME [--all]        finished runs, oldest first (--all: the whole audit trail)
    kubectl dbm held [NAME]                 pods held until the schema is ready, and why
    kubectl dbm logs NAME [--role migrate]  the logs of the newest run's Job of that role
    kubectl dbm set [NAME]                  DatabaseMigrationSets: progress, failed targets, plans (dbm/sets.py)
    kubectl dbm pause|resume NAME           a set: stop starting targets; go on, running its failed ones again
    kubectl dbm restore NAME [BACKUP]       restore a backup by hand, checksum verified first (dbm/restore.py)

It uses the user's kubeconfig (and `-n`, `--context`, `--kubeconfig` as kubectl does), so it can do exactly what
the user may do: approving is the user's own annotation, made with their own credentials. `-o json` prints plain
data for scripts.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import pydoc
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, TypedDict, cast

from .. import constants as c
from .. import objects, plansql
from . import restore, sets, views
from .ask import Refused, confirm

if TYPE_CHECKING:
    from kubernetes.client import ApiException, V1Job
    from pydantic import JsonValue

EXIT_OK, EXIT_ERROR, EXIT_REFUSED = 0, 1, 2


class _Listed(TypedDict):
    items: list[views.Migration]


class LogRecord(TypedDict):
    job: str
    pod: str
    container: str
    log: str


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-n", "--namespace", default=argparse.SUPPRESS, help="the namespace (default: the context's)")
    common.add_argument("--context", default=argparse.SUPPRESS, help="the kubeconfig context")
    common.add_argument("--kubeconfig", default=argparse.SUPPRESS, help="the kubeconfig file")
    common.add_argument("-o", "--output", choices=("text", "json"), default=argparse.SUPPRESS)
    common.add_argument("--as", dest="as_user", default=argparse.SUPPRESS, help="act as this user (impersonation)")
    common.add_argument("--as-group", dest="as_group", default=argparse.SUPPRESS,
                        help="act as a member of this group (with --as)")
    p = argparse.ArgumentParser(prog="kubectl dbm", parents=[common], description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("status", parents=[common], help="every DatabaseMigration of the namespace")
    s.add_argument("-A", "--all-namespaces", action="store_true")
    s = sub.add_parser("plan", parents=[common], help="the plan: revisions, findings, SQL")
    s.add_argument("name")
    s.add_argument("--no-pager", action="store_true")
    s = sub.add_parser("approve", parents=[common], help="approve the plan shown, by its hash")
    s.add_argument("name")
    s.add_argument("--hash", help="the hash you reviewed (kubectl dbm plan shows it): refused if the plan changed")
    s.add_argument("--set", action="store_true", help="NAME is a DatabaseMigrationSet: approve the plan hash once "
                   "for every target whose plan has it (kubectl dbm set NAME shows the plans waiting)")
    s.add_argument("-y", "--yes", action="store_true", help="do not ask (scripts: prefer --hash)")
    s = sub.add_parser("history", parents=[common], help="finished runs")
    s.add_argument("name")
    s.add_argument("--all", action="store_true",
                   help="every run kept in the audit trail (run-record ConfigMaps), not only status's newest 10")
    s = sub.add_parser("held", parents=[common], help="pods held until the schema is ready")
    s.add_argument("name", nargs="?")
    s = sub.add_parser("logs", parents=[common], help="the logs of a run's Job")
    s.add_argument("name")
    s.add_argument("--role", default="migrate", help="plan, backup, migrate, downgrade, restore, stamp or drift")
    s.add_argument("--generation", type=int, help="default: the newest that has a Job of that role")
    s = sub.add_parser("set", parents=[common], help="DatabaseMigrationSets: progress and failed targets")
    s.add_argument("name", nargs="?")
    restore.add_parser(sub, common)
    for verb, what in (("pause", "a set: start no more targets"),
                       ("resume", "a set: go on, and run its failed targets again")):
        sub.add_parser(verb, parents=[common], help=what).add_argument("name")
    return p


class Session:
    """The user's API access: their kubeconfig, context and namespace."""

    def __init__(self, args: argparse.Namespace) -> None:
        from kubernetes import client, config

        kubeconfig = getattr(args, "kubeconfig", None) or os.environ.get("KUBECONFIG")
        context = getattr(args, "context", None)
        api = config.new_client_from_config(config_file=kubeconfig, context=context)  # type: ignore[no-untyped-call]
        _contexts, active = config.list_kube_config_contexts(config_file=kubeconfig)  # type: ignore[no-untyped-call]
        if context:
            active = next((x for x in _contexts if x["name"] == context), active)
        self.namespace = getattr(args, "namespace", None) or (active or {}).get("context", {}).get(
            "namespace") or "default"
        if user := getattr(args, "as_user", None):  # as kubectl --as does: the API server checks the impersonation
            api.set_default_header("Impersonate-User", user)
            if group := getattr(args, "as_group", None):
                api.set_default_header("Impersonate-Group", group)
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.batch = client.BatchV1Api(api)
        self.api = api

    def migration(self, name: str) -> views.Migration:
        from kubernetes.client import ApiException

        try:
            obj = cast(views.Migration, self.custom.get_namespaced_custom_object(
                c.GROUP, c.VERSION, self.namespace, c.PLURAL, name))
        except ApiException as exc:
            if exc.status == 404:
                raise Refused(f"dbm/{name} not found in namespace {self.namespace}") from None
            raise
        return obj

    def migrations(self, all_namespaces: bool = False) -> list[views.Migration]:
        if all_namespaces:
            listed = cast(_Listed, self.custom.list_cluster_custom_object(c.GROUP, c.VERSION, c.PLURAL))
        else:
            listed = cast(_Listed, self.custom.list_namespaced_custom_object(
                c.GROUP, c.VERSION, self.namespace, c.PLURAL))
        return sorted(listed.get("items") or [], key=lambda o: (o["metadata"]["namespace"], o["metadata"]["name"]))

    def pods(self, selector: str) -> list[objects.Pod]:
        """The pods as JSON (what the views read of them)."""
        listed = self.core.list_namespaced_pod(self.namespace, label_selector=selector).items
        return cast(list[objects.Pod], self.api.sanitize_for_serialization(listed))

    def config_maps(self, selector: str) -> list[views.ConfigMap]:
        """The ConfigMaps as JSON (what the views read of them)."""
        listed = self.core.list_namespaced_config_map(self.namespace, label_selector=selector).items
        return cast(list[views.ConfigMap], self.api.sanitize_for_serialization(listed))


def _print(args: argparse.Namespace, text: str, data: object, page: bool = False) -> None:
    if getattr(args, "output", "text") == "json":
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    elif page and sys.stdout.isatty() and not getattr(args, "no_pager", False):
        pydoc.pager(text)
    else:
        sys.stdout.write(text)


def cmd_status(s: Session, args: argparse.Namespace) -> int:
    items = s.migrations(args.all_namespaces)
    _print(args, views.status_text(items, all_namespaces=args.all_namespaces), [views.summary(o) for o in items])
    return EXIT_OK


def cmd_plan(s: Session, args: argparse.Namespace) -> int:
    obj = s.migration(args.name)
    record = views.plan_record(obj, *_plan_sql(s, obj))
    _print(args, views.plan_text(record), record, page=True)
    return EXIT_OK


def _plan_sql(s: Session, obj: views.Migration
              ) -> tuple[list[plansql.RevisionSql] | None, str, list[plansql.PlanFinding] | None]:
    """The SQL kept for the plan (status.plan.sql), what to say about it ("" when it is whole and verified), and
    every finding of the plan (status holds the first ones of a long plan; the ConfigMap all of them)."""
    from kubernetes.client import ApiException

    ref = obj.get("status", views.Status()).get("plan", views.PlanStatus()).get("sql", views.PlanSqlRef())
    if not ref.get("configMap"):
        return None, "no SQL kept for this plan (an operator older than the plan's SQL, or still reading it)", None
    try:
        cm = s.core.read_namespaced_config_map(ref["configMap"], s.namespace)
        doc = plansql.read(base64.b64decode((cm.binary_data or {})[plansql.DATA_KEY]))
    except ApiException as exc:
        return None, f"cannot read ConfigMap {ref['configMap']}: {_reason(exc)}", None
    except (KeyError, ValueError, OSError) as exc:
        return None, f"ConfigMap {ref['configMap']} does not hold a plan's SQL: {exc}", None
    sql = list(doc["revisions"])
    findings = doc.get("plan", plansql.WholePlan()).get("findings") if doc["sqlSha256"] == ref.get("sha256") else None
    if doc.get("truncated"):
        return sql, f"only the first {len(sql)} of {doc.get('total')} revisions' SQL fit in the ConfigMap", findings
    if doc.get("sqlSha256") != ref.get("sha256") or not plansql.verified(doc):
        return sql, "WARNING: this SQL does not hash to the digest the plan hash covers: do not approve on it", None
    return sql, "", findings


def cmd_approve(s: Session, args: argparse.Namespace) -> int:
    """Annotate with the hash of the plan shown. The patch carries the resourceVersion read: if anything changed
    in between (a new plan, a new spec), the API server refuses it (409) and nothing is approved."""

    if args.set:
        return _approve_set(s, args)
    obj = s.migration(args.name)
    record = views.plan_record(obj)
    if not record["hash"]:
        raise Refused(f"dbm/{args.name} has no plan to approve (phase {record['phase'] or 'unknown'})")
    if args.hash and args.hash != record["hash"]:
        raise Refused(f"the plan of dbm/{args.name} changed since it was shown: you reviewed {args.hash}, it is now "
                      f"{record['hash']}. Review it again: kubectl dbm plan {args.name}")
    if record["approved"]:
        _print(args, f"dbm/{args.name}: plan {record['hash']} is already approved\n",
               {"approved": True, "hash": record["hash"], "changed": False})
        return EXIT_OK
    if not _confirmed(args, views.plan_text(record) + f"\nApprove plan {record['hash']}?",
                      "--hash HASH (from kubectl dbm plan) or --yes"):
        return EXIT_REFUSED
    patch: dict[str, JsonValue] = {"metadata": {"resourceVersion": obj["metadata"]["resourceVersion"],
                                                "annotations": {c.APPROVE_ANNOTATION: record["hash"]}}}
    _send_approval(s, c.PLURAL, args.name, patch, f"kubectl dbm plan {args.name}")
    _print(args, f"dbm/{args.name}: approved plan {record['hash']}\n",
           {"approved": True, "hash": record["hash"], "changed": True})
    return EXIT_OK


def _read_set(s: Session, name: str) -> sets.SetObject:
    from kubernetes.client import ApiException

    try:
        obj = cast(dict[str, object], s.custom.get_namespaced_custom_object(
            c.GROUP, c.VERSION, s.namespace, c.SET_PLURAL, name))
    except ApiException as exc:
        if exc.status == 404:
            raise Refused(f"dbms/{name} not found in namespace {s.namespace}") from None
        raise
    (one,) = sets.by_name([obj])
    return one


def _approve_set(s: Session, args: argparse.Namespace) -> int:
    """One plan hash approved for the whole set (its targets whose plan has it go on; the others stay held), on the
    set's version read: a change in between is refused (409) and nothing is approved."""

    obj = _read_set(s, args.name)
    group, why = sets.approval_choice(obj, args.hash)
    if group is None:
        raise Refused(why)
    if why:
        _print(args, f"dbms/{args.name}: plan {group.hash} is {why}\n",
               {"approved": True, "hash": group.hash, "changed": False})
        return EXIT_OK
    first = group.migrations[0] if group.migrations else "?"
    if not _confirmed(args, f"{group.count} target(s) of dbms/{args.name} wait for plan {group.hash} (review it: "
                      f"kubectl dbm plan {first}).\nApprove it for the whole set?",
                      "--hash HASH (from kubectl dbm set NAME) or --yes"):
        return EXIT_REFUSED
    _send_approval(s, c.SET_PLURAL, args.name, sets.approve_patch(obj, group.hash), f"kubectl dbm set {args.name}")
    _print(args, f"dbms/{args.name}: approved plan {group.hash} for its {group.count} target(s) waiting (and any "
                 "target whose plan has it later)\n", {"approved": True, "hash": group.hash, "changed": True})
    return EXIT_OK


def _confirmed(args: argparse.Namespace, question: str, instead: str) -> bool:
    """An approval goes on with the reviewed hash (--hash), --yes, or a "yes" at the terminal."""
    if args.hash or args.yes or confirm(question, instead=instead):
        return True
    sys.stdout.write("Not approved.\n")
    return False


def _send_approval(s: Session, plural: str, name: str, patch: dict[str, JsonValue], review: str) -> None:
    """The approval patch, on the version that was reviewed: a change in between (409) or the API server's refusal
    (401/403, e.g. the approvals webhook) is said, and nothing is approved."""
    from kubernetes.client import ApiException

    shown = f"{'dbms' if plural == c.SET_PLURAL else 'dbm'}/{name}"
    try:
        s.custom.patch_namespaced_custom_object(c.GROUP, c.VERSION, s.namespace, plural, name, patch)
    except ApiException as exc:
        if exc.status == 409:
            raise Refused(f"{shown} changed while you reviewed it; nothing was approved. Review it again: "
                          f"{review}") from None
        if exc.status in (401, 403):
            raise Refused(f"the API server refused the approval: {_reason(exc)}") from None
        raise


def _reason(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body or "").get("message") or exc.reason)
    except (TypeError, ValueError):
        return str(exc.reason)


def cmd_history(s: Session, args: argparse.Namespace) -> int:
    obj = s.migration(args.name)
    if not args.all:
        _print(args, views.history_text(obj), views.history_records(obj))
        return EXIT_OK
    from kubernetes.client import ApiException

    selector = f"{c.OWNER_LABEL}={args.name},app.kubernetes.io/component={c.RUN_RECORD_COMPONENT}"
    try:
        config_maps = s.config_maps(selector)
    except ApiException as exc:
        if exc.status == 403:
            raise Refused(f"reading the audit trail needs the right to list configmaps in {s.namespace}: "
                          f"{_reason(exc)}") from None
        raise
    records = views.run_records(config_maps)
    _print(args, views.history_text(obj, records), records)
    return EXIT_OK


def cmd_held(s: Session, args: argparse.Namespace) -> int:
    selector = f"{c.WAIT_FOR_LABEL}={args.name}" if args.name else c.WAIT_FOR_LABEL
    pods = s.pods(selector)
    migrations = {o["metadata"]["name"]: o for o in s.migrations()}
    records = views.held_records(pods, migrations)
    _print(args, views.held_text(records), records)
    return EXIT_OK


def cmd_logs(s: Session, args: argparse.Namespace) -> int:
    selector = f"{c.OWNER_LABEL}={args.name},{c.ROLE_LABEL}={args.role}"
    jobs = s.batch.list_namespaced_job(s.namespace, label_selector=selector).items

    def generation(job: V1Job) -> str | None:
        return (job.metadata.labels or {}).get(c.GENERATION_LABEL) if job.metadata else None

    if args.generation is not None:
        jobs = [j for j in jobs if generation(j) == str(args.generation)]
    if not jobs:
        raise Refused(f"no {args.role} Job of dbm/{args.name} in namespace {s.namespace}"
                      + (f" for generation {args.generation}" if args.generation is not None else "")
                      + " (finished Jobs of older generations are pruned; status.history keeps their summary)")
    job = max(jobs, key=lambda j: (int(generation(j) or 0), j.metadata.creation_timestamp.isoformat()
                                   if j.metadata and j.metadata.creation_timestamp else ""))
    name = str(job.metadata.name if job.metadata else "")
    out: list[LogRecord] = []
    for pod in s.core.list_namespaced_pod(s.namespace, label_selector=f"job-name={name}").items:
        pod_name = str(pod.metadata.name if pod.metadata else "")
        containers = [*(pod.spec.init_containers or []), *pod.spec.containers] if pod.spec else []
        for ctr in containers:
            try:
                text = str(s.core.read_namespaced_pod_log(pod_name, s.namespace, container=ctr.name))
            except Exception as exc:  # a container that never started has no log
                text = f"(no log: {getattr(exc, 'reason', exc)})"
            out.append({"job": name, "pod": pod_name, "container": ctr.name, "log": text})
    text = "".join(f"==> {o['job']} / {o['container']} <==\n{o['log'].rstrip()}\n" for o in out) or \
        f"Job {name} has no pod (yet).\n"
    _print(args, text, out, page=True)
    return EXIT_OK


def cmd_set(s: Session, args: argparse.Namespace) -> int:
    if args.name:
        one = _read_set(s, args.name)
        waiting: dict[str, list[str]] = {}
        if sets.summary(one)["plans"]:  # which members wait on which plan: every one, from the members themselves
            listed = cast(dict[str, list[dict[str, object]]], s.custom.list_namespaced_custom_object(
                c.GROUP, c.VERSION, s.namespace, c.PLURAL, label_selector=f"{c.SET_LABEL}={args.name}"))
            waiting = sets.waiting_by_plan(listed.get("items") or [])
        _print(args, sets.detail_text(one, waiting), {**sets.summary(one), "waiting": waiting})
        return EXIT_OK
    listed = cast(dict[str, list[dict[str, object]]], s.custom.list_namespaced_custom_object(
        c.GROUP, c.VERSION, s.namespace, c.SET_PLURAL))
    items = sets.by_name(listed.get("items") or [])
    _print(args, sets.list_text(items), [sets.summary(o) for o in items])
    return EXIT_OK


def _patch_set(s: Session, args: argparse.Namespace, patch: dict[str, JsonValue], done: str) -> int:
    s.custom.patch_namespaced_custom_object(c.GROUP, c.VERSION, s.namespace, c.SET_PLURAL, args.name, patch)
    _print(args, f"dbms/{args.name}: {done}\n", {"name": args.name, "done": done})
    return EXIT_OK


def cmd_pause(s: Session, args: argparse.Namespace) -> int:
    return _patch_set(s, args, sets.pause_patch(True), "paused")


def cmd_resume(s: Session, args: argparse.Namespace) -> int:
    return _patch_set(s, args, sets.resume_patch(), "resumed; its failed targets run again")


def cmd_restore(s: Session, args: argparse.Namespace) -> int:
    return restore.cmd_restore(s, args, lambda text, data: _print(args, text, data))


COMMANDS = {"set": cmd_set, "restore": cmd_restore, "pause": cmd_pause, "resume": cmd_resume,
            "status": cmd_status, "plan": cmd_plan, "approve": cmd_approve, "history": cmd_history,
            "held": cmd_held, "logs": cmd_logs}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        session = Session(args)
        return COMMANDS[args.command](session, args)
    except Refused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except Exception as exc:  # the API server unreachable, no kubeconfig...: one line, not a traceback
        print(f"error: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}",
              file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
