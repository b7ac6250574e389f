"""The DatabaseMigrations the API tests use (unit/test_api.py against the model, cluster/test_crd_apiserver.py
against a real API server): the example of API.md, a minimal spec, invalid specs and what each must say."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from alembic_operator import constants

REPO = Path(__file__).resolve().parents[1]


# The example of API.md ("The resource"), as users write it.
EXAMPLE: dict[str, Any] = yaml.safe_load(
    """
apiVersion: migrations.alembic-operator.io/v1alpha1
kind: DatabaseMigration
metadata:
  name: shop
  namespace: shop
spec:
  database:
    urlSecretRef:
      name: shop-db
      key: url
  migrations:
    image: ghcr.io/acme/shop:1.4.2
    config: /app/alembic.ini
    workingDir: /app
  targetRevision: head
  backup:
    enabled: true
    volume:
      persistentVolumeClaim: {claimName: shop-backups}
    retain: 5
  rollback:
    strategy: Auto
  approval:
    allowDestructive: false
  jobTemplate:
    serviceAccountName: shop-migrator
    resources: {}
    nodeSelector: {}
    tolerations: []
    imagePullSecrets: []
    activeDeadlineSeconds: 900
"""
)


# The least a user can write: everything else defaults.
MINIMAL_SPEC: dict[str, Any] = {
    "database": {"urlSecretRef": {"name": "shop-db", "key": "url"}},
    "migrations": {"image": "ghcr.io/acme/shop:1.4.2"},
    "targetRevision": "head",
    "backup": {"volume": {"persistentVolumeClaim": {"claimName": "shop-backups"}}},
}


def example_spec() -> dict[str, Any]:
    return copy.deepcopy(EXAMPLE["spec"])


@dataclass(frozen=True)
class Invalid:
    """A spec the API server and parse_spec must both refuse, naming ``field``."""

    id: str
    spec: dict[str, Any]
    field: str
    by: str  # "schema" (OpenAPI) or "cel" (x-kubernetes-validations) on the API server's side


def _with(path: str, value: Any, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """A copy of the example spec with ``path`` (dotted) set to ``value``, or removed when value is _DELETE."""
    spec = copy.deepcopy(base if base is not None else example_spec())
    *parents, last = path.split(".")
    node = spec
    for part in parents:
        node = node.setdefault(part, {})
    if value is _DELETE:
        node.pop(last, None)
    else:
        node[last] = value
    return spec


_DELETE = object()


INVALID: list[Invalid] = [
    Invalid("missing-targetRevision", _with("targetRevision", _DELETE), "spec.targetRevision", "schema"),
    Invalid("bad-rollback-strategy", _with("rollback.strategy", "Sometimes"), "spec.rollback.strategy", "schema"),
    Invalid("backup-without-volume", _with("backup.volume", _DELETE), "spec.backup", "cel"),
    Invalid(
        "backup-omitted-defaults-to-enabled",
        {k: v for k, v in example_spec().items() if k != "backup"},
        "spec.backup",
        "cel",
    ),
    Invalid("s3-two-credential-sources", _with("backup", {"s3": {
        "bucket": "shop-backups", "credentials": {"name": "keys"},
        "webIdentity": {"roleArn": "arn:aws:iam::123456789012:role/backups"}}}), "spec.backup.s3", "cel"),
    Invalid("s3-endpoint-with-credentials", _with("backup", {"s3": {
        "bucket": "shop-backups", "endpoint": "https://key:secret@s3.example.com"}}), "spec.backup.s3.endpoint",
        "schema"),
    Invalid(
        "restore-without-backup",
        _with("rollback.strategy", "Restore", _with("backup.enabled", False)),
        "spec.rollback.strategy",
        "cel",
    ),
    Invalid("negative-retain", _with("backup.retain", -1), "spec.backup.retain", "schema"),
    Invalid("zero-retain", _with("backup.retain", 0), "spec.backup.retain", "schema"),
    Invalid("relative-target", _with("targetRevision", "head-1"), "spec.targetRevision", "schema"),
    Invalid("too-long-target", _with("targetRevision", "a" * 33), "spec.targetRevision", "schema"),
    Invalid("heads-target", _with("targetRevision", "heads"), "spec.targetRevision", "cel"),
    Invalid("base-target", _with("targetRevision", "base"), "spec.targetRevision", "cel"),
    Invalid(
        "zero-deadline",
        _with("jobTemplate.activeDeadlineSeconds", 0),
        "spec.jobTemplate.activeDeadlineSeconds",
        "schema",
    ),
    Invalid(
        "missing-secret-key", _with("database.urlSecretRef.key", _DELETE), "spec.database.urlSecretRef.key", "schema"
    ),
    Invalid("empty-image", _with("migrations.image", ""), "spec.migrations.image", "schema"),
    Invalid(
        "two-volume-sources",
        _with("backup.volume", {"emptyDir": {}, "persistentVolumeClaim": {"claimName": "x"}}),
        "spec.backup.volume",
        "schema",
    ),
    Invalid("suspend-not-bool", _with("suspend", "yes"), "spec.suspend", "schema"),
    Invalid("retain-as-string", _with("backup.retain", "5"), "spec.backup.retain", "schema"),
    Invalid("pull-secret-without-name", _with("jobTemplate.imagePullSecrets", [{}]), "imagePullSecrets", "schema"),
    # Issue 9: specs the API server used to let through, refused only when the operator created a Job.
    Invalid("env-without-name", _with("jobTemplate.env", [{"value": "x"}]), "spec.jobTemplate.env[0].name", "schema"),
    Invalid(
        "cpu-lots",
        _with("jobTemplate.resources", {"requests": {"cpu": "lots"}}),
        "spec.jobTemplate.resources.requests.cpu",
        "schema",
    ),
    Invalid(
        "label-value-with-space",
        _with("jobTemplate.podLabels", {"team": "a b"}),
        "spec.jobTemplate.podLabels.team",
        "schema",
    ),
    Invalid(
        "label-value-too-long",
        _with("jobTemplate.podLabels", {"team": "a" * 64}),
        "spec.jobTemplate.podLabels.team",
        "schema",
    ),
    Invalid(
        "node-selector-value-with-space",
        _with("jobTemplate.nodeSelector", {"pool": "db nodes"}),
        "spec.jobTemplate.nodeSelector.pool",
        "schema",
    ),
    Invalid(
        "run-as-user-root",
        _with("jobTemplate.securityContext", {"runAsUser": "root"}),
        "spec.jobTemplate.securityContext.runAsUser",
        "schema",
    ),
    Invalid(
        "pod-fs-group-as-string",
        _with("jobTemplate.podSecurityContext", {"fsGroup": "1000"}),
        "spec.jobTemplate.podSecurityContext.fsGroup",
        "schema",
    ),
    Invalid(
        "toleration-effect-typo",
        _with("jobTemplate.tolerations", [{"key": "dedicated", "effect": "NoSchedul"}]),
        "spec.jobTemplate.tolerations[0].effect",
        "schema",
    ),
    Invalid(
        "affinity-term-without-topology-key",
        _with("jobTemplate.affinity", {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{}]}}),
        "spec.jobTemplate.affinity.podAffinity.requiredDuringSchedulingIgnoredDuringExecution[0].topologyKey",
        "schema",
    ),
    Invalid(
        "unquoted-fractional-cpu",  # the CRD convention for quantities (int-or-string): quote fractions
        _with("jobTemplate.resources", {"limits": {"cpu": 0.5}}),
        "spec.jobTemplate.resources.limits.cpu",
        "schema",
    ),
    Invalid("lock-timeout-without-unit", _with("migrations.lockTimeout", "3"), "spec.migrations.lockTimeout",
            "schema"),
    Invalid("statement-timeout-fraction", _with("migrations.statementTimeout", "1.5s"),
            "spec.migrations.statementTimeout", "schema"),
    Invalid("drift-interval-below-minimum", _with("driftCheck.interval", "5s"), "spec.driftCheck.interval", "cel"),
    Invalid("drift-interval-zero", _with("driftCheck.interval", "0s"), "spec.driftCheck.interval", "cel"),
    Invalid("drift-interval-too-large", _with("driftCheck.interval", "9999999h"), "spec.driftCheck.interval", "schema"),
]


# A jobTemplate using every core/v1 field, as users write them: accepted and stored unchanged.
RICH_JOB_TEMPLATE: dict[str, Any] = yaml.safe_load(
    """
serviceAccountName: shop-migrator
resources:
  requests: {cpu: 100m, memory: 256Mi}
  limits: {cpu: "1.5", memory: 1Gi, ephemeral-storage: 2G}
nodeSelector: {kubernetes.io/arch: amd64, pool: ""}
tolerations:
- {key: dedicated, operator: Equal, value: batch, effect: NoSchedule}
- {operator: Exists, effect: NoExecute, tolerationSeconds: 30}
affinity:
  nodeAffinity:
    requiredDuringSchedulingIgnoredDuringExecution:
      nodeSelectorTerms:
      - matchExpressions: [{key: kubernetes.io/os, operator: In, values: [linux]}]
  podAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 50
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector: {matchLabels: {app: shop-db}}
activeDeadlineSeconds: 900
env:
- {name: APP_ENV, value: production}
- name: FEATURE_FLAGS
  valueFrom: {configMapKeyRef: {name: shop-flags, key: flags, optional: true}}
- name: POD_NAME
  valueFrom: {fieldRef: {fieldPath: metadata.name}}
- name: MEMORY_LIMIT
  valueFrom: {resourceFieldRef: {resource: limits.memory, divisor: 1Mi}}
podLabels: {app.kubernetes.io/part-of: shop, tier: migrations, empty: ""}
podAnnotations: {sidecar.istio.io/inject: "false"}
podSecurityContext:
  runAsNonRoot: true
  runAsUser: 1000
  fsGroup: 1000
  seccompProfile: {type: RuntimeDefault}
  sysctls: [{name: net.ipv4.ip_local_port_range, value: "1024 65535"}]
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  capabilities: {drop: [ALL]}
"""
)


# Fields the API server's pruning/strict field validation refuses (kubectl: "unknown field").
UNKNOWN_FIELDS: list[Invalid] = [
    Invalid("unknown-top-field", _with("command", ["alembic", "upgrade"]), "spec.command", "unknown"),
    Invalid("unknown-nested-field", _with("backup.schedule", "daily"), "spec.backup.schedule", "unknown"),
]


# A full status as the operator writes it (dump of the model): every field survives the API server's pruning.
STATUS_SAMPLE: dict[str, Any] = {
    "observedGeneration": 4,
    "phase": "Succeeded",
    "currentRevision": "3f2a9c1d0b7e",
    "targetRevision": "9d81aa02c4f5",
    "plan": {
        "revisions": ["5b0e00000000", "9d81aa02c4f5"],
        "destructive": ["DROP COLUMN orders.legacy_code (revision 9d81aa02c4f5)"],
        "warnings": ["CREATE INDEX ix_orders_code without CONCURRENTLY locks orders against writes"],
        "lineage": ["9d81aa02c4f5", "5b0e00000000", "3f2a9c1d0b7e"],
        "hash": "sha256:abc",
        "fromRevision": "3f2a9c1d0b7e",
        "toRevision": "9d81aa02c4f5",
        "generation": 4,
    },
    "backup": {
        "location": "shop/x.dump",
        "sizeBytes": 123456,
        "sha256": "ab",
        "revision": "3f2a9c1d0b7e",
        "completedAt": "2025-01-02T03:04:05Z",
    },
    "conditions": [
        {
            "type": "Ready",
            "status": "True",
            "observedGeneration": 4,
            "lastTransitionTime": "2025-01-02T03:04:05Z",
            "reason": "Succeeded",
            "message": "at 9d81aa02c4f5",
        }
    ],
    "history": [
        {
            "generation": 4,
            "from": "3f2a9c1d0b7e",
            "to": "9d81aa02c4f5",
            "result": "Succeeded",
            "reason": "Migrated",
            "startedAt": "2025-01-02T03:00:00Z",
            "finishedAt": "2025-01-02T03:04:05Z",
            "backup": "pvc/shop/shop/x.dump",
        }
    ],
    "heldPods": 0,
    "run": {
        "generation": 4,
        "startedAt": "2025-01-02T03:00:00Z",
        "startRevision": "3f2a9c1d0b7e",
        "targetRevision": "9d81aa02c4f5",
        "image": "ghcr.io/acme/shop:1.4.2",
        "planHash": "sha256:abc",
        "jobs": {"migrate": "shop-migrate-4"},
        "step": "Done",
        "keyOfANewerOperator": {"x": 1},  # unknown to this version: kept as it is
        "spec": {"targetRevision": "head"},
    },
}


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Fill in defaults like the API server: a missing property with a default gets it, then its own defaults."""
    if isinstance(value, dict) and "properties" in schema:
        out = dict(value)
        for name, sub in schema["properties"].items():
            if name not in out and "default" in sub:
                out[name] = copy.deepcopy(sub["default"])
            if name in out:
                out[name] = apply_defaults(sub, out[name])
        return out
    if isinstance(value, list) and "items" in schema:
        return [apply_defaults(schema["items"], v) for v in value]
    return value


def example_manifests() -> list[Any]:
    """Every DatabaseMigration in examples/, one pytest parameter each."""
    found = []
    for path in sorted((REPO / "examples").rglob("*.y*ml")):
        for i, doc in enumerate(yaml.safe_load_all(path.read_text(encoding="utf-8"))):
            if isinstance(doc, dict) and doc.get("kind") == constants.KIND:
                found.append(pytest.param(doc, id=f"{path.relative_to(REPO)}#{i}"))
    return found or [pytest.param(None, marks=pytest.mark.skip(reason="no DatabaseMigration in examples/"))]

