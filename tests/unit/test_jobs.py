"""The Job builders, without a cluster: names, security, jobTemplate, and where the database URL comes from."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from alembic_operator import backupstores
from alembic_operator import constants as c
from alembic_operator.api import parse_spec
from alembic_operator.jobparts import manifest
from alembic_operator.jobs import ROLES, URL_ENV, Owner, build_job, dry_run_jobs, job_name
from alembic_operator.runner.lock import database_lock_key as lock_key
from spoolstore import spool_store

SPEC: dict[str, Any] = {
    "database": {"urlSecretRef": {"name": "shop-db", "key": "url"}},
    "migrations": {"image": "ghcr.io/acme/shop:1.4.2", "workingDir": "/app", "config": "/app/alembic.ini"},
    "targetRevision": "head",
    "backup": {"volume": {"persistentVolumeClaim": {"claimName": "shop-backups"}}, "retain": 3},
    "jobTemplate": {
        "serviceAccountName": "shop-migrator",
        "resources": {"limits": {"memory": "512Mi"}},
        "nodeSelector": {"pool": "batch"},
        "tolerations": [{"key": "batch", "operator": "Exists"}],
        "imagePullSecrets": [{"name": "ghcr"}],
        "activeDeadlineSeconds": 900,
        "podLabels": {"team": "shop"},
        "podAnnotations": {"sidecar.istio.io/inject": "false"},
    },
}
OWNER = Owner(name="shop", namespace="shop", uid="0000-1111", generation=4)
ARGS = {"plan": {"target": "head"}, "backup": {}, "migrate": {"from": "base", "to": "abc", "lockKey": "42"},
        "contract": {"from": "base", "to": "abc", "lockKey": "42"},
        "downgrade": {"from": "abc", "to": "base", "lockKey": "42"},
        "restore": {"file": "/backups/shop/shop/x.dump", "sha256": "sha256:aa", "lockKey": "42"},
        "stamp": {"revision": "abc", "lockKey": "42"}, "drift": {"instance": "7"},
        "rehearse": {"from": "base", "to": "abc", "file": "/backups/shop/shop/x.dump", "sha256": "sha256:aa",
                     "database": "alembic_rehearsal_0123456789_g4"}}


def job_of(role: str, spec: dict[str, Any], owner: Owner = OWNER, args: dict[str, str] | None = None,
           image: str = "ghcr.io/alembic-operator/op:1") -> dict[str, Any]:
    """The manifest of `role`'s Job for `spec`, with the store's wiring as the operator passes it."""
    parsed = parse_spec(spec)
    store = backupstores.wiring_for(parsed.backup, owner.namespace, owner.name)
    return manifest(build_job(role, owner, parsed, operator_image=image,  # type: ignore[arg-type]
                              args=ARGS[role] if args is None else args, store=store))


def build(role: str) -> dict[str, Any]:
    return job_of(role, SPEC)


def containers(job: dict[str, Any]) -> list[dict[str, Any]]:
    pod = job["spec"]["template"]["spec"]
    return list(pod.get("initContainers", [])) + list(pod["containers"])


@pytest.mark.parametrize("role", ROLES)
def test_every_job_is_restricted_never_retried_and_owned(role: str) -> None:
    job = build(role)
    assert job["metadata"]["name"] == job_name("shop", role, 4, ARGS[role].get("instance"))  # type: ignore[arg-type]
    assert job["spec"]["backoffLimit"] == 0
    assert job["metadata"]["ownerReferences"] == [{
        "apiVersion": c.API_VERSION, "kind": c.KIND, "name": "shop", "uid": "0000-1111",
        "controller": True, "blockOwnerDeletion": True}]
    labels = job["metadata"]["labels"]
    assert labels[c.OWNER_LABEL] == "shop" and labels[c.ROLE_LABEL] == role and labels[c.GENERATION_LABEL] == "4"
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for ctr in containers(job):
        sc = ctr["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["runAsNonRoot"] is True and sc["seccompProfile"] == {"type": "RuntimeDefault"}
        for env in ctr["env"]:
            if env["name"] == URL_ENV:
                assert env == {"name": URL_ENV, "valueFrom": {"secretKeyRef": {"name": "shop-db", "key": "url"}}}
            else:
                assert "value" in env and "postgresql" not in env["value"]


@pytest.mark.parametrize("role", ROLES)
def test_job_template_reaches_every_pod(role: str) -> None:
    job = build(role)
    pod = job["spec"]["template"]["spec"]
    assert job["spec"]["activeDeadlineSeconds"] == 900
    assert pod["serviceAccountName"] == "shop-migrator"
    assert pod["nodeSelector"] == {"pool": "batch"}
    assert pod["tolerations"] == [{"key": "batch", "operator": "Exists"}]
    assert pod["imagePullSecrets"] == [{"name": "ghcr"}]
    meta = job["spec"]["template"]["metadata"]
    assert meta["labels"]["team"] == "shop" and meta["labels"][c.OWNER_LABEL] == "shop"
    assert meta["annotations"] == {"sidecar.istio.io/inject": "false"}
    assert all(ctr["resources"] == {"limits": {"memory": "512Mi"}} for ctr in containers(job))


def test_app_steps_run_the_runner_in_the_apps_image_after_ours_installs_it() -> None:
    for role in ("plan", "migrate", "downgrade", "stamp", "drift"):
        job = build(role)
        init = job["spec"]["template"]["spec"]["initContainers"]
        assert init[0]["image"] == "ghcr.io/alembic-operator/op:1"
        assert init[0]["command"][:3] == ["alembic-operator", "job", "install-runner"]
        app = next(x for x in containers(job) if x["image"] == "ghcr.io/acme/shop:1.4.2")
        assert app["command"][:2] == ["python", "/alembic-operator/runner.pyz"]
        assert app["workingDir"] == "/app"
        assert "/app/alembic.ini" in app["command"]
    migrate = build("migrate")["spec"]["template"]["spec"]["containers"][0]["command"]
    assert migrate[migrate.index("--from") + 1] == "base" and migrate[migrate.index("--to") + 1] == "abc"
    assert migrate[migrate.index("--lock-key") + 1] == "42"
    plan = build("plan")["spec"]["template"]["spec"]["containers"][0]
    assert plan["image"] == "ghcr.io/alembic-operator/op:1" and plan["command"][:3] == ["alembic-operator", "job",
                                                                                         "scan"]
    # The scan reads the live column types: the URL comes from the Secret, never in its arguments.
    url = next(e for e in plan["env"] if e["name"] == "ALEMBIC_OPERATOR_DATABASE_URL")
    assert url == {"name": "ALEMBIC_OPERATOR_DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": "shop-db",
                                                                                           "key": "url"}}}
    assert not any("postgresql" in arg for arg in plan["command"])


def test_backup_and_restore_mount_the_backup_volume_in_our_image() -> None:
    for role in ("backup", "restore"):
        pod = build(role)["spec"]["template"]["spec"]
        assert {"name": "backups", "persistentVolumeClaim": {"claimName": "shop-backups"}} in pod["volumes"]
        ctr = pod["containers"][0]
        assert ctr["image"] == "ghcr.io/alembic-operator/op:1"
        assert {"name": "backups", "mountPath": "/backups"} in ctr["volumeMounts"]
        assert ctr["securityContext"]["readOnlyRootFilesystem"] is True
        assert pod["securityContext"]["fsGroup"] == 65532
    backup = build("backup")["spec"]["template"]["spec"]["containers"][0]["command"]
    assert backup[backup.index("--store") + 1] == "volume"
    assert backup[backup.index("--location") + 1] == "/backups/shop/shop"
    assert backup[backup.index("--retain") + 1] == "3"
    assert backup[backup.index("--location-prefix") + 1] == "pvc/shop-backups/shop/shop"


def test_scratch_space_is_the_jobs_own_volume_not_tmp() -> None:
    for role in ROLES:
        job = build(role)
        for ctr in containers(job):
            assert all(m["mountPath"] != "/tmp" for m in ctr["volumeMounts"])
            env = {e["name"]: e.get("value") for e in ctr["env"]}
            if ctr["name"] != "runner":
                assert env["TMPDIR"] == env["HOME"] == "/alembic-operator"


@pytest.mark.parametrize("role", ROLES)
def test_every_role_that_writes_holds_the_databases_lock(role: str) -> None:
    """Migrate, downgrade, stamp and restore write to the database: each takes the same advisory lock (the key the
    operator derives from the database), so no two writers ever run at once; the others never wait for it."""
    commands = [x["command"] for x in build(role)["spec"]["template"]["spec"]["containers"]]
    locked = [cmd[cmd.index("--lock-key") + 1] for cmd in commands if "--lock-key" in cmd]
    if ROLES[role].writes:  # type: ignore[index]
        assert locked == ["42"]
    else:
        assert locked == []
    assert {r for r, spec in ROLES.items() if spec.writes} == {"migrate", "contract", "downgrade", "stamp", "restore"}


def test_job_names_are_deterministic_and_fit_a_label() -> None:
    assert job_name("shop", "migrate", 4) == "shop-migrate-g4"
    assert job_name("shop", "drift", 4, "2948") == "shop-drift-g4-2948"
    long = "a" * 70
    name = job_name(long, "downgrade", 12345)
    assert len(name) <= 63 and name.endswith("-downgrade-g12345") and name == job_name(long, "downgrade", 12345)
    assert job_name(long, "downgrade", 1) != job_name("a" * 69 + "b", "downgrade", 1)


def test_lock_key_is_a_signed_64_bit_integer_per_database() -> None:
    keys = {lock_key(str(i)) for i in range(1000)}
    assert len(keys) == 1000 and all(-(2**63) <= k < 2**63 for k in keys)
    assert lock_key("x") == lock_key("x")


def test_api_server_messages_are_traced_back_to_the_resources_field() -> None:
    from alembic_operator.jobs import source_field

    cases = {
        'Job.batch "x" is invalid: spec.template.labels: Invalid value: "data platform"': "spec.jobTemplate.podLabels",
        "spec.template.spec.containers[0].resources.requests: Invalid value: \"2\": must be less than or equal to "
        "cpu limit": "spec.jobTemplate.resources",
        "quantities must match the regular expression": "spec.jobTemplate.resources",
        "Job spec.template.spec.containers[0].env[3].name: Field required": "spec.jobTemplate.env",
        "spec.template.spec.containers[1].securityContext.runAsUser: Invalid value": "spec.jobTemplate.securityContext",
        "spec.template.spec.volumes[1].persistentVolumeClaim.claimName: Required value": "spec.backup.volume",
    }
    store = backupstores.wiring_for(parse_spec(SPEC).backup, "shop", "shop")
    for message, field in cases.items():
        assert source_field(message, store) == field, message
    assert source_field("exceeded quota: compute-resources", store) is None
    with spool_store() as spool:  # a volume refused in another store's Jobs is that store's field
        other = spool.wiring({"node": "n", "path": "/p", "tokenSecret": "t"}, "shop", "shop")
        assert source_field("spec.template.spec.volumes[1].hostPath.path: Required value", other) == "spec.backup.spool"


def _run_as(job: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Each container's (runAsUser, runAsGroup) as the kubelet resolves them: the container's, else the pod's."""
    pod = job["spec"]["template"]["spec"]["securityContext"]
    return {ctr["name"]: (ctr["securityContext"].get("runAsUser", pod.get("runAsUser")),
                          ctr["securityContext"].get("runAsGroup", pod.get("runAsGroup"))) for ctr in containers(job)}


@pytest.mark.parametrize("role", ROLES)
def test_the_app_runs_as_its_images_user_ours_as_65532_and_the_user_can_set_either(role: str) -> None:
    """The decision documented on jobTemplate.podSecurityContext / securityContext: no uid is ever guessed for the
    app's image (its numeric non-root USER runs it; a root or named USER is refused by the kubelet under runAsNonRoot
    and reported as ImageRunsAsRoot); the pod-level runAsUser moves the app's containers only, the container-level
    one every container; the restricted settings stay whatever the user adds."""
    app = {ctr["name"] for ctr in containers(build(role)) if ctr["image"] == "ghcr.io/acme/shop:1.4.2"}
    assert bool(app) == (ROLES[role].image == "app")  # type: ignore[index]

    def job(template: dict[str, Any]) -> dict[str, Any]:
        spec = {**SPEC, "jobTemplate": {**SPEC["jobTemplate"], **template}}
        return job_of(role, spec)

    default = _run_as(job({}))
    assert {name: default[name] for name in app} == {name: (None, None) for name in app}
    assert {ids for name, ids in default.items() if name not in app} <= {(65532, 65532)}
    pod_level = _run_as(job({"podSecurityContext": {"runAsUser": 10001, "runAsGroup": 10001}}))
    assert all(pod_level[name] == ((10001, 10001) if name in app else (65532, 65532)) for name in pod_level)
    every = job({"securityContext": {"runAsUser": 10001}})
    assert all(uid == 10001 for uid, _gid in _run_as(every).values())
    for ctr in containers(every):
        sc = ctr["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]} and sc["seccompProfile"] == {"type": "RuntimeDefault"}
    pod = every["spec"]["template"]["spec"]["securityContext"]
    assert pod["runAsNonRoot"] is True and pod.get("fsGroup") == (65532 if ROLES[role].uses_store else None)  # type: ignore[index]


# --- the typed builders build what the dict literals built ----------------------------------------------------------

BEFORE = Path(__file__).parents[1] / "fixtures" / "jobs" / "before-typed-builders.json"
"""Every role's Job (and its server-side dry-run variant) for the specs below, as main built them from dict literals
before the builders became typed (commit 395a832): captured once, never regenerated."""
BASE = {"database": {"urlSecretRef": {"name": "db", "key": "uri"}},
        "migrations": {"image": "app:2"}, "targetRevision": "abc123"}
VARIANTS: dict[str, dict[str, Any]] = {
    "full": SPEC,
    "minimal-hostpath": {**BASE, "migrations": {"image": "app:2", "imagePullPolicy": "Always", "lockTimeout": "3s",
                                                   "statementTimeout": "1m30s", "config": "db/alembic.ini"},
                         "backup": {"volume": {"hostPath": {"path": "/srv/backups", "type": "DirectoryOrCreate"}},
                                    "retain": 1}},
    "contexts-nfs": {**BASE, "backup": {"volume": {"nfs": {"server": "nfs.example", "path": "/exports/db"}}},
                     "jobTemplate": {
                         "podSecurityContext": {"runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 2000,
                                                "supplementalGroups": [5]},
                         "securityContext": {"readOnlyRootFilesystem": False, "capabilities": {"drop": ["NET_RAW"]}},
                         "env": [{"name": "APP_ENV", "value": "prod"},
                                 {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "t", "key": "k"}}}],
                         "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                             "nodeSelectorTerms": [{"matchExpressions": [
                                 {"key": "zone", "operator": "In", "values": ["a"]}]}]}}},
                         "tolerations": [{"key": "k", "operator": "Equal", "value": "v", "effect": "NoExecute",
                                          "tolerationSeconds": 30}],
                         "resources": {"requests": {"cpu": "100m"}, "limits": {"cpu": "2", "memory": "1Gi"}}}},
    "csi-long-name": {**BASE, "backup": {"volume": {"csi": {"driver": "x.csi.io", "volumeAttributes": {"a": "b"}}}},
                      "driftCheck": {"interval": "1h"}},
}


def _every_job() -> dict[str, dict[str, Any]]:
    jobs = {}
    for variant, spec in VARIANTS.items():
        owner = Owner(name="shop" if variant != "csi-long-name" else "a" * 60, namespace="shop", uid="u-1",
                      generation=7)
        for role in ROLES:
            jobs[f"{variant}/{role}/args"] = job_of(role, spec, owner, image="op:1")
        parsed = parse_spec(spec)
        store = backupstores.wiring_for(parsed.backup, owner.namespace, owner.name)
        for role, job in dry_run_jobs(owner, parsed, operator_image="op:1", store=store):
            jobs[f"{variant}/{role}/dry-run"] = manifest(job)
    return jobs


def _store_arguments(job: dict[str, Any]) -> dict[str, Any]:
    """What the backup-store seam changed on purpose in a Job built before it: backup and restore name their store
    and its location (--store volume --location DIR for --dir DIR, --store volume --dump REF for --file REF), and a
    restore's dry run names a placeholder in the resource's own directory."""
    for ctr in job["spec"]["template"]["spec"]["containers"]:
        cmd = ctr["command"]
        if cmd[:3] == ["alembic-operator", "job", "backup"]:
            at = cmd.index("--dir")
            cmd[at:at + 1] = ["--store", "volume", "--location"]
        if cmd[:3] == ["alembic-operator", "job", "restore"]:
            at = cmd.index("--file")
            cmd[at:at + 1] = ["--store", "volume", "--dump"]
            if cmd[at + 3] == "/backups/dry-run.dump":
                owner = job["metadata"]["labels"][c.OWNER_LABEL]
                cmd[at + 3] = f"/backups/{job['metadata']['namespace']}/{owner}/dry-run.dump"
    return job


def test_every_job_is_the_one_the_dict_literals_built() -> None:
    """Byte for byte as JSON (keys sorted: an object's key order means nothing to the API server), but for the
    backup and restore commands' arguments, which the store seam changed (translated by _store_arguments)."""
    before = {key: _store_arguments(job) for key, job in json.loads(BEFORE.read_text()).items()}
    for key in [k for k in before if k.endswith("/migrate/args")]:  # expand/contract's Job: the migrate one renamed
        text = json.dumps(before[key]).replace('"migrate"', '"contract"').replace("-migrate-", "-contract-")
        renamed = json.loads(text)
        owner = renamed["metadata"]["ownerReferences"][0]["name"]
        renamed["metadata"]["name"] = job_name(owner, "contract", 7)  # a long owner's name is cut, then hashed
        before[key.replace("/migrate/", "/contract/")] = renamed
    now = _every_job()
    assert sorted(now) == sorted(before)
    for key, job in now.items():
        assert json.dumps(job, sort_keys=True) == json.dumps(before[key], sort_keys=True), key


def test_a_quantity_written_as_a_number_reaches_the_job_as_the_same_quantity() -> None:
    """`cpu: 1` is a valid Quantity in a spec; the typed Job carries it as "1", which the API server reads alike."""
    spec = {**SPEC, "jobTemplate": {"resources": {"limits": {"cpu": 1, "memory": "1Gi"}}},
            "backup": {"volume": {"emptyDir": {"sizeLimit": 2}}}}
    pod = job_of("backup", spec, args={})["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"] == {"limits": {"cpu": "1", "memory": "1Gi"}}
    assert {"name": "backups", "emptyDir": {"sizeLimit": "2"}} in pod["volumes"]


# --- a backup store brings its own Job wiring ---------------------------------------------------------------------


def test_a_store_defined_outside_the_package_wires_the_backup_and_restore_jobs() -> None:
    """A second kind of store (tests/spoolstore.py) gets its volumes, mounts, settings, credentials and arguments
    into the backup and restore Jobs, and nothing of the volume store's, with jobs.py unchanged; the roles that do not
    use the store never see it."""
    with spool_store() as store:
        wiring = store.wiring({"node": "node-a", "path": "/var/spool/db", "tokenSecret": "spool-token"}, "shop",
                              "shop")
        spec = parse_spec(SPEC)
        for role in ROLES:
            job: Any = manifest(build_job(role, OWNER, spec, operator_image="op:1", args=ARGS[role],  # type: ignore[arg-type]
                                          store=wiring))
            pod = job["spec"]["template"]["spec"]
            # the container that reaches the store: the rehearsal's restore runs before the app's rehearsal
            ctr = next((x for x in pod.get("initContainers", []) if x["name"] == "restore"), pod["containers"][0])
            env = {e["name"]: e for e in ctr["env"]}
            if not ROLES[role].uses_store:  # type: ignore[index]
                assert [v["name"] for v in pod["volumes"]] == ["work"] and "SPOOL_TOKEN" not in env
                continue
            assert pod["volumes"] == [{"name": "work", "emptyDir": {}},
                                      {"name": "spool", "hostPath": {"path": "/var/spool/db", "type": "Directory"}}]
            assert ctr["volumeMounts"] == [{"name": "spool", "mountPath": "/spool"},
                                           {"name": "work", "mountPath": "/alembic-operator"}]
            assert env["SPOOL_ROOT"] == {"name": "SPOOL_ROOT", "value": "/spool"}
            assert env["SPOOL_TOKEN"] == {"name": "SPOOL_TOKEN",
                                          "valueFrom": {"secretKeyRef": {"name": "spool-token", "key": "token"}}}
            assert "fsGroup" not in pod["securityContext"]  # not a volume whose type applies it
            cmd = ctr["command"]
            assert cmd[cmd.index("--store") + 1] == "test-spool"
            if role == "backup":
                assert cmd[3:] == ["--store", "test-spool", "--location", "spool://shop/shop", "--prefix", "shop",
                                   "--retain", "3", "--location-prefix", "spool node-a:/var/spool/db/shop/shop"]
            else:
                assert cmd[cmd.index("--dump") + 1] == "/backups/shop/shop/x.dump"  # the reference status kept
        dry = dict(dry_run_jobs(OWNER, spec, operator_image="op:1", store=wiring))
        restore = manifest(dry["restore"])["spec"]["template"]["spec"]["containers"][0]["command"]  # type: ignore[index,call-overload]
        assert restore[restore.index("--dump") + 1] == "spool://shop/shop/dry-run.dump"


def test_the_store_comes_from_its_field_of_spec_backup_and_none_when_backups_are_off() -> None:
    wiring = backupstores.wiring_for(parse_spec(SPEC).backup, "shop", "orders")
    assert wiring is not None and wiring.store == "volume" and wiring.location == "/backups/shop/orders"
    assert wiring.shown_as == "pvc/shop-backups/shop/orders" and wiring.spec_field == "spec.backup.volume"
    off = parse_spec({**SPEC, "backup": {"enabled": False}})
    assert backupstores.wiring_for(off.backup, "shop", "orders") is None
    assert {role for role, _job in dry_run_jobs(OWNER, off, operator_image="op:1", store=None)} == {"migrate",
                                                                                                    "downgrade"}
    with pytest.raises(ValueError, match="backup store"):
        build_job("backup", OWNER, off, operator_image="op:1", args={})


def test_every_store_field_of_the_spec_has_its_store_and_the_cel_rule_names_them_all() -> None:
    from alembic_operator.api import SPEC_RULES, store_fields

    assert {s.spec_field for s in backupstores.REGISTRY} == set(store_fields()) == {"volume", "s3"}
    needed, one = SPEC_RULES[0], SPEC_RULES[1]
    assert needed.rule == "!self.backup.enabled || has(self.backup.volume) || has(self.backup.s3)"
    assert needed.field_path == ".backup"
    assert needed.message.startswith("spec.backup needs one of spec.backup.volume, spec.backup.s3 when")
    assert one.rule == "[has(self.backup.volume), has(self.backup.s3)].filter(x, x).size() <= 1"


def test_a_backup_volume_kubernetes_would_not_read_is_refused_in_the_spec() -> None:
    """The CRD takes any one-key object as spec.backup.volume; a misspelt kind would reach the API server, which drops
    what it does not know and defaults the volume to an emptyDir (backups that vanish with the pod). The spec is
    refused instead, naming the field; a Quantity written as a number is still a volume source."""
    from alembic_operator.api import SpecError

    for volume, said in (({"persistentVolumeClam": {"claimName": "x"}}, "persistentVolumeClam: Extra inputs"),
                         ({"hostPath": {}}, "hostPath.path: Field required")):
        with pytest.raises(SpecError) as err:
            parse_spec({**SPEC, "backup": {"volume": volume}})
        assert "spec.backup.volume: not a Kubernetes volume source" in str(err.value) and said in str(err.value)
    assert parse_spec({**SPEC, "backup": {"volume": {"emptyDir": {"sizeLimit": 1}}}}).backup.volume
