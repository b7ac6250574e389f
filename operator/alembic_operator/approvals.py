"""Who may approve, and who did: the admission decisions for a DatabaseMigration. Pure: the request in, a verdict out.

Approving a destructive (or locking) plan is a permission of its own, the `approve` verb on `databasemigrations`
(as cert-manager governs CertificateRequest approval): a request that sets or changes the approve annotation, or
loosens `spec.approval`, is admitted only when a SubjectAccessReview says its user may `approve` that resource.
The same webhook records who changed the spec and who approved, in annotations only it writes: what a user sends
in them is replaced by the truth (the request's own user), so the run and its history can name both.

The webhook is called for every change of a DatabaseMigration, but the API server decides which call may block:
`APPROVAL_CHANGE` (CEL, in the webhook configuration's matchConditions) selects the requests that approve or touch
the identity record, and only those fail closed; every other edit goes through the entry that fails open, so an
operator outage never blocks ordinary edits (nor lets an approval or a forged record through).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from pydantic import JsonValue

from . import constants as c

SPEC_CHANGED_BY = c.SPEC_CHANGED_BY_ANNOTATION
APPROVED_BY = c.APPROVED_BY_ANNOTATION
IDENTITY_ANNOTATIONS = (SPEC_CHANGED_BY, APPROVED_BY)
VERB = "approve"

# spec.approval settings that let more run without a human, and the value that does.
LOOSENING: tuple[tuple[str, bool], ...] = (("allowDestructive", True), ("requireForLocking", False),
                                           ("requireDifferentUser", False), ("requireRehearsal", False))
_DEFAULTS = {"allowDestructive": False, "requireForLocking": False, "requireDifferentUser": False,
             "requireRehearsal": False}


def _cel_annotation(obj: str, key: str = c.APPROVE_ANNOTATION) -> str:
    return (f"(has({obj}.metadata.annotations) && '{key}' in {obj}.metadata.annotations ? "
            f"{obj}.metadata.annotations['{key}'] : '')")


# Where approval settings live: a DatabaseMigration's spec, and a DatabaseMigrationSet's template for its members.
APPROVAL: tuple[str, ...] = ("spec", "approval")
TEMPLATE_APPROVAL: tuple[str, ...] = ("spec", "template", "approval")


def _cel_setting(obj: str, name: str, at: tuple[str, ...] = APPROVAL) -> str:
    paths = [".".join((obj, *at[:i])) for i in range(1, len(at) + 1)] + [".".join((obj, *at, name))]
    return f"({' && '.join(f'has({p})' for p in paths)} ? {paths[-1]} : {str(_DEFAULTS[name]).lower()})"


def _cel_loosened(at: tuple[str, ...]) -> list[str]:
    """The CEL twin of `loosened()`."""
    return [f"({_cel_setting('object', name, at)} == {str(value).lower()} && (oldObject == null ? "
            f"{str(_DEFAULTS[name]).lower()} : {_cel_setting('oldObject', name, at)}) != {str(value).lower()})"
            for name, value in LOOSENING]


def _cel_approval_change() -> str:
    annotation = (f"({_cel_annotation('object')} != '' && {_cel_annotation('object')} != "
                  f"(oldObject == null ? '' : {_cel_annotation('oldObject')}))")
    settings = _cel_loosened(APPROVAL)
    # A request that touches the identity record is sent to the same entry: with the operator down, nobody can
    # write a record the webhook did not (the operator's own requests never touch it).
    record = [f"({_cel_annotation('object', key)} != (oldObject == null ? '' : {_cel_annotation('oldObject', key)}))"
              for key in IDENTITY_ANNOTATIONS]
    return " || ".join([annotation, *settings, *record])


# The requests that fail closed: those that approve (the same test as `approves()`) and those that touch the identity
# record, in CEL for the API server (matchConditions).
APPROVAL_CHANGE = _cel_approval_change()


@dataclass(frozen=True)
class User:
    """The request's user, as the API server authenticated it (admission userInfo)."""

    username: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def from_userinfo(cls, info: Mapping[str, object]) -> User:
        """From the admission request's userInfo (JSON; Kopf's UserInfo omits its `extra`)."""
        groups, extra = info.get("groups"), info.get("extra")
        return cls(username=str(info.get("username") or ""), uid=str(info.get("uid") or ""),
                   groups=tuple(str(g) for g in groups) if isinstance(groups, list) else (),
                   extra={str(k): [str(x) for x in v] for k, v in extra.items() if isinstance(v, list)}
                   if isinstance(extra, dict) else {})


Body = Mapping[str, JsonValue]  # a DatabaseMigration as an admission request carries it (JSON)


def _object(value: JsonValue | None) -> Mapping[str, JsonValue]:
    return value if isinstance(value, dict) else {}


def _annotations(obj: Body | None) -> dict[str, str]:
    annotations = _object(_object((obj or {}).get("metadata")).get("annotations"))
    return {k: v for k, v in annotations.items() if isinstance(v, str)}


def _setting(obj: Body | None, name: str, at: tuple[str, ...] = APPROVAL) -> bool:
    node: Mapping[str, JsonValue] = obj or {}
    for key in at:
        node = _object(node.get(key))
    return bool(node.get(name, _DEFAULTS[name]))


def loosened(old: Body | None, new: Body, at: tuple[str, ...] = APPROVAL) -> list[str]:
    """The approval settings at `at` this request loosens (a new resource starts from the defaults), each named."""
    return [f"{'.'.join(at)}.{name}: {str(value).lower()}" for name, value in LOOSENING
            if _setting(new, name, at) == value
            and (_DEFAULTS[name] if old is None else _setting(old, name, at)) != value]


def approves(old: Body | None, new: Body) -> list[str]:
    """What in this request approves (empty: nothing): a new approve annotation, or a loosened spec.approval."""
    what = []
    before, after = _annotations(old).get(c.APPROVE_ANNOTATION, ""), _annotations(new).get(c.APPROVE_ANNOTATION, "")
    if after and after != before:
        what.append(f"the annotation {c.APPROVE_ANNOTATION}={after}")
    return what + loosened(old, new)


def set_member_by_the_operator(old: Body | None, new: Body, user: User, operator: str | None) -> str | None:
    """The DatabaseMigrationSet whose template this request applies (None: it is not such a request): the operator's
    own request (`operator` is its identity), on a DatabaseMigration a set controls, that loosens only what
    spec.approval says (never the approve annotation). The template's settings were admitted with the set, by a
    user who may approve it: the member carries them, it does not approve anything new."""
    if not operator or user.username != operator or loosened(old, new) != approves(old, new):
        return None
    refs = _object(new.get("metadata")).get("ownerReferences")
    for owner in map(_object, refs if isinstance(refs, list) else []):
        if owner.get("controller") is True and owner.get("kind") == c.SET_KIND \
                and owner.get("apiVersion") == c.API_VERSION:
            return str(owner.get("name") or "")
    return None


def spec_changed(old: Body | None, new: Body) -> bool:
    return old is None or (old.get("spec") or {}) != (new.get("spec") or {})


def identity_patch(old: Body | None, new: Body, user: User) -> dict[str, str | None]:
    """The identity annotations this request must carry: the user who changed the spec, the user who approved;
    anything else the request put there is replaced by what was (only the webhook writes them)."""
    before, after = _annotations(old), _annotations(new)
    want = {key: before.get(key) for key in IDENTITY_ANNOTATIONS}
    if spec_changed(old, new):
        want[SPEC_CHANGED_BY] = user.username
    approved = after.get(c.APPROVE_ANNOTATION, "")
    if approved and approved != before.get(c.APPROVE_ANNOTATION, ""):
        want[APPROVED_BY] = f"{user.username} {approved}"
    return {key: value for key, value in want.items() if after.get(key) != value}


def four_eyes(old: Body | None, new: Body, user: User, required_everywhere: bool) -> str | None:
    """Why this approval breaks the four-eyes rule (None: it does not, or the rule is off): the approver must not
    be the user who last changed the spec (this very request included). The chart's setting is a floor for every
    resource (an approver could otherwise turn the rule off for the resource first); a resource may add it."""
    required = required_everywhere or bool(_object(_object(new.get("spec")).get("approval")).get(
        "requireDifferentUser"))
    if required and approves(old, new) and _approver_changed_the_spec(old, new, user):
        return _same_user(user, c.KIND, "spec.approval.requireDifferentUser")
    return None


def _approver_changed_the_spec(old: Body | None, new: Body, user: User) -> bool:
    """Whether the approving user is the one who last changed the spec (this very request included)."""
    changed_by = user.username if spec_changed(old, new) else _annotations(old).get(SPEC_CHANGED_BY, "")
    return bool(changed_by) and changed_by == user.username


def _same_user(user: User, kind: str, field: str) -> str:
    return (f"{user.username} changed the spec of this {kind}, and its approval needs another user ({field}): ask a "
            "reviewer to approve it")


def refusal(user: User, namespace: str, name: str, what: list[str], plural: str = c.PLURAL) -> str:
    return (f"{user.username} may not approve {plural}/{name} in namespace {namespace} "
            f"({'; '.join(what)}): approving needs the '{VERB}' verb on {plural}.{c.GROUP} "
            "(bind the ClusterRole alembic-operator-approver to reviewers, in this namespace)")


def approved_by(annotations: dict[str, str], plan_hash: str | None) -> str | None:
    """The user who approved this exact plan, from the webhook's record (None: not recorded for this hash)."""
    user, _, approved = (annotations.get(APPROVED_BY) or "").rpartition(" ")
    return user if user and plan_hash and approved == plan_hash else None


# --- a DatabaseMigrationSet's approval: one person, one plan hash, every member whose plan has it -----------------
# The set carries `approve: <hash>[,<hash>...]` (one hash per plan its members showed), and the webhook records who
# approved each in `approved-by` as JSON ({"<hash>": "<username>"}): several people may approve several plans of
# one rollout, each named for their own. Members never get an approval written by the operator: a member's decision
# reads its owning set's record (fleet.approval).

SET_HASHES_MAX = 20  # hashes one set's annotation keeps (a rollout whose members disagree on more is broken)


def set_hashes(value: str | None) -> list[str]:
    """The plan hashes a set's approve annotation names, in order, without repeats."""
    return list(dict.fromkeys(h.strip() for h in (value or "").split(",") if h.strip()))[:SET_HASHES_MAX]


def set_record(annotations: Mapping[str, str]) -> dict[str, str]:
    """The webhook's record on a set: plan hash -> the user who approved it (empty when absent or not ours)."""
    try:
        raw = json.loads(annotations.get(APPROVED_BY) or "{}")
    except ValueError:
        return {}
    return {k: v for k, v in raw.items() if isinstance(k, str) and isinstance(v, str)} if isinstance(raw, dict) else {}


def set_approves(old: Body | None, new: Body) -> list[str]:
    """The hashes this request approves on a set (empty: none; removing a hash approves nothing)."""
    before = set(set_hashes(_annotations(old).get(c.APPROVE_ANNOTATION)))
    return [h for h in set_hashes(_annotations(new).get(c.APPROVE_ANNOTATION)) if h not in before]


def set_identity_patch(old: Body | None, new: Body, user: User) -> dict[str, str | None]:
    """A set's identity annotations as this request must leave them: who changed the spec; who approved each hash
    still named (a hash approved before keeps its approver; one this request adds is this user's)."""
    before, after = _annotations(old), _annotations(new)
    kept = set_record(before)
    named_before = set(set_hashes(before.get(c.APPROVE_ANNOTATION)))
    record = {h: (kept[h] if h in named_before and h in kept else user.username)
              for h in set_hashes(after.get(c.APPROVE_ANNOTATION))}
    want: dict[str, str | None] = {
        SPEC_CHANGED_BY: user.username if spec_changed(old, new) else before.get(SPEC_CHANGED_BY),
        APPROVED_BY: json.dumps(record, sort_keys=True, separators=(",", ":")) if record else None}
    return {key: value for key, value in want.items() if after.get(key) != value}


def set_approval_items(old: Body | None, new: Body) -> list[str]:
    """What in this request on a set approves: new plan hashes in its approve annotation, and a loosened
    spec.template.approval (every member would carry it: the set's admission is where it is governed)."""
    hashes = set_approves(old, new)
    return ([f"plan {', '.join(hashes)}"] if hashes else []) + loosened(old, new, TEMPLATE_APPROVAL)


def set_four_eyes(old: Body | None, new: Body, user: User, required_everywhere: bool) -> str | None:
    """The four-eyes rule on a set: its approver must not be the user who last changed its spec (the template's
    spec.approval.requireDifferentUser asks for it, or the chart for every resource)."""
    required = required_everywhere or _setting(new, "requireDifferentUser", TEMPLATE_APPROVAL)
    if required and set_approval_items(old, new) and _approver_changed_the_spec(old, new, user):
        return _same_user(user, c.SET_KIND, "spec.template.approval.requireDifferentUser")
    return None


def set_refusal(user: User, namespace: str, name: str, what: list[str]) -> str:
    return refusal(user, namespace, name, what, plural=c.SET_PLURAL)


def _no_set(old: Body | None, new: Body, user: User, operator: str | None) -> str | None:
    return None


@dataclass(frozen=True)
class Governed:
    """How the webhook governs one kind's approvals: what a request approves (each item named), the four-eyes
    rule, the refusal, the identity record it leaves, how the operator's log names an approval, and when a set's
    admission already governed it (the operator applying a set's template to a member)."""

    plural: str
    approves: Callable[[Body | None, Body], list[str]]
    four_eyes: Callable[[Body | None, Body, User, bool], str | None]
    refusal: Callable[[User, str, str, list[str]], str]
    identity_patch: Callable[[Body | None, Body, User], dict[str, str | None]]
    approved: Callable[[str, list[str]], str]  # (name, what) -> "shop (the annotation ...)"
    admitted_with_set: Callable[[Body | None, Body, User, str | None], str | None] = _no_set


MIGRATION_APPROVALS = Governed(c.PLURAL, approves, four_eyes, refusal, identity_patch,
                               lambda name, what: f"{name} ({'; '.join(what)})", set_member_by_the_operator)
SET_APPROVALS = Governed(c.SET_PLURAL, set_approval_items, set_four_eyes, set_refusal, set_identity_patch,
                         lambda name, what: f"{'; '.join(what)} for the set {name}")


def _cel_set_approval_change() -> str:
    annotation = (f"({_cel_annotation('object')} != '' && {_cel_annotation('object')} != "
                  f"(oldObject == null ? '' : {_cel_annotation('oldObject')}))")
    record = [f"({_cel_annotation('object', key)} != (oldObject == null ? '' : {_cel_annotation('oldObject', key)}))"
              for key in IDENTITY_ANNOTATIONS]
    return " || ".join([annotation, *_cel_loosened(TEMPLATE_APPROVAL), *record])


# The requests on a set that fail closed: any change of its approve annotation but its removal, a loosened
# spec.template.approval (the same test as `set_approval_items()`), and any touch of its identity record (a hash
# removed from a longer list goes there too: the webhook then drops its record).
SET_APPROVAL_CHANGE = _cel_set_approval_change()
