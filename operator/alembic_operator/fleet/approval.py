"""One approval for a DatabaseMigrationSet: a person approves a plan hash on the set, and every member whose plan
has that hash counts it. Pure: objects in, approvals out.

Why it is read, not copied: the operator must never be the approver of a DatabaseMigration (with the admission
webhook on, only a user who may ``approve`` approves, and the operator's ServiceAccount may not). So the operator
writes nothing on the members: a person annotates the set (``approve: <hash>[,<hash>...]``, ``kubectl dbm approve
--set``), the webhook admits that only from a user who may ``approve`` the set and records who approved which hash
(:func:`..approvals.set_record`), and each member's decision reads its owning set's approvals next to its own
annotation (:func:`member_approvals`, through the observation). A member counts them only when the set controls it
(its ownerReference names the set's uid), it runs the set's template unchanged, and its database is one of the set's
targets: a DatabaseMigration someone else made cannot ride on the set's approval.

With the webhook on (``governed``), a hash counts only when the webhook's record names a person for it; without it,
the annotation alone counts, as a DatabaseMigration's own annotation does then.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from pydantic import ValidationError

from .. import approvals
from .. import constants as c
from ..api import JsonObject
from ..objects import Migration, ObjectMeta
from .api import DatabaseMigrationSetSpec, MigrationTemplate, PlanGroup
from .strategy import template_hash


@dataclass(frozen=True)
class SetApprovals:
    """What a member needs of its owning set to count the set's approvals."""

    name: str
    uid: str
    template_hash: str  # of the set's template as its model reads it (see member_template_hash)
    approvals: Mapping[str, str] = field(default_factory=dict)  # plan hash -> who approved it
    targets: frozenset[str] | None = None  # the set's target Secrets at its last pass (None: not computed yet)


def approvals_of(annotations: Mapping[str, str], governed: bool) -> dict[str, str]:
    """Plan hash -> who approved it, for the hashes a set's approve annotation names: with the webhook governing
    approvals, only those its record gives a person for; without it, every one (the annotation's word)."""
    record = approvals.set_record(annotations)
    out: dict[str, str] = {}
    for h in approvals.set_hashes(annotations.get(c.APPROVE_ANNOTATION)):
        if h in record:
            out[h] = record[h]
        elif not governed:
            out[h] = c.APPROVE_ANNOTATION
    return out


def of_set(meta: ObjectMeta, spec: DatabaseMigrationSetSpec, governed: bool,
           targets: frozenset[str] | None = None) -> SetApprovals:
    """A set's approvals, as its members read them."""
    template: JsonObject = spec.template.model_dump(mode="json", by_alias=True, exclude_none=True)
    return SetApprovals(name=str(meta.get("name") or ""), uid=str(meta.get("uid") or ""),
                        template_hash=template_hash(template),
                        approvals=approvals_of(dict(meta.get("annotations") or {}), governed), targets=targets)


def member_template_hash(spec: Mapping[str, object]) -> str | None:
    """The template a member's spec carries (its database and the set's retry token left out), hashed as the set
    hashes its own; None when it is not one."""
    template = json.loads(json.dumps(dict(spec)))
    template.pop("database", None)
    pods = template.get("jobTemplate")
    annotations = pods.get("podAnnotations") if isinstance(pods, dict) else None
    if isinstance(annotations, dict):
        annotations.pop(c.SET_ATTEMPT_ANNOTATION, None)
    try:
        model = MigrationTemplate.model_validate(template)
    except ValidationError:
        return None
    return template_hash(model.model_dump(mode="json", by_alias=True, exclude_none=True))


def member_approvals(member: Migration, owner: SetApprovals | None) -> dict[str, str]:
    """Plan hash -> who approved it, from the set that owns this DatabaseMigration (empty: none counts)."""
    if owner is None or not owner.approvals:
        return {}
    meta = member.get("metadata") or {}
    if (meta.get("labels") or {}).get(c.SET_LABEL) != owner.name:
        return {}
    if not any(ref.get("controller") and ref.get("kind") == c.SET_KIND and ref.get("uid") == owner.uid
               for ref in meta.get("ownerReferences") or []):
        return {}
    spec = member.get("spec") or {}
    database = spec.get("database")
    secret_ref = database.get("urlSecretRef") if isinstance(database, dict) else None
    secret = secret_ref.get("name") if isinstance(secret_ref, dict) else None
    if owner.targets is None or secret not in owner.targets:
        return {}
    if member_template_hash(spec) != owner.template_hash:
        return {}
    return {h: f"{who} (DatabaseMigrationSet {owner.name})" for h, who in owner.approvals.items()}


def announced_by_set(member: Migration) -> str | None:
    """The set that announces this DatabaseMigration's plans waiting for approval and its success (notify/: one
    notification per set and plan hash, one per rollout's end, none of the member's own), None when the member
    announces its own.

    The part of :func:`member_approvals`'s rule a member shows by itself: a set controls it (its label and its
    controller ownerReference name the set) and it runs the template that set gave it, unchanged (its spec hashes as
    its set-template annotation says). Read from the member alone, so it holds from an operator's first look (a
    member reconciled before its set's first pass would otherwise announce its own), and it is exactly what the
    set's status.plans counts (members at the set's template, by that annotation). A person's edit of a member's
    spec makes it announce its own again; a member left on an older template (the set's changed since) stays
    quiet: the set announced that plan when it began waiting, and gives the member the new template at its wave."""
    meta = member.get("metadata") or {}
    owner = (meta.get("labels") or {}).get(c.SET_LABEL)
    if not owner or not any(ref.get("controller") and ref.get("kind") == c.SET_KIND and ref.get("name") == owner
                            for ref in meta.get("ownerReferences") or []):
        return None
    given = (meta.get("annotations") or {}).get(c.SET_TEMPLATE_ANNOTATION)
    return str(owner) if given and member_template_hash(member.get("spec") or {}) == given else None


def shown(plans: list[PlanGroup], approved: Mapping[str, str]) -> list[PlanGroup]:
    """The set's plan groups, each saying who approved it for the whole set (when someone did)."""
    return [p.model_copy(update={"approved_by": approved.get(p.hash)}) for p in plans]
