"""The S3 backup store's pure parts: its Job wiring from spec.backup.s3, the spec's checks, the Job's settings, the
part sizes and ETag, and what each S3 error becomes (reason and fix). Its I/O against a real server is in
tests/postgres/test_s3_jobtools.py and tests/mariadb/test_s3_mariadb.py."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from alembic_operator import backupstores, reasons
from alembic_operator.api import SpecError, parse_spec
from alembic_operator.backupstores.s3 import (
    S3Failure,
    S3Store,
    Settings,
    explain,
    multipart_etag,
    parse_location,
    part_size,
    unreachable,
)
from alembic_operator.jobparts import manifest
from alembic_operator.jobs import Owner, build_job

BASE: dict[str, Any] = {
    "database": {"urlSecretRef": {"name": "shop-db", "key": "url"}},
    "migrations": {"image": "ghcr.io/acme/shop:1.4.2"},
    "targetRevision": "head",
}
OWNER = Owner(name="orders", namespace="shop", uid="0000-1111", generation=2)


def spec_with(s3: dict[str, Any]) -> Any:
    return parse_spec({**BASE, "backup": {"s3": s3, "retain": 4}})


def jobs_of(s3: dict[str, Any]) -> dict[str, dict[str, Any]]:
    spec = spec_with(s3)
    wiring = backupstores.wiring_for(spec.backup, OWNER.namespace, OWNER.name)
    args = {"backup": {}, "restore": {"file": "s3://b/x.dump", "sha256": "sha256:" + "a" * 64, "lockKey": "1"}}
    return {role: manifest(build_job(role, OWNER, spec, operator_image="op:1", args=args[role],  # type: ignore[arg-type]
                                     store=wiring)) for role in args}


def env_of(job: dict[str, Any]) -> dict[str, Any]:
    ctr = job["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in ctr["env"]}


def test_static_keys_reach_the_jobs_as_secret_references_and_no_volume_is_mounted() -> None:
    jobs = jobs_of({"bucket": "shop-backups", "prefix": "prod/db", "endpoint": "https://s3.example.internal:9000",
                    "region": "eu-west-1", "credentials": {"name": "s3-keys"}})
    for role, job in jobs.items():
        pod = job["spec"]["template"]["spec"]
        assert [v["name"] for v in pod["volumes"]] == ["work"], role  # the Job's scratch space only
        assert "fsGroup" not in pod["securityContext"] and pod["automountServiceAccountToken"] is False
        env = env_of(job)
        assert env["AWS_ACCESS_KEY_ID"] == {"secretKeyRef": {"name": "s3-keys", "key": "AWS_ACCESS_KEY_ID"}}
        assert env["AWS_SECRET_ACCESS_KEY"] == {"secretKeyRef": {"name": "s3-keys", "key": "AWS_SECRET_ACCESS_KEY"}}
        assert env["AWS_ENDPOINT_URL_S3"] == "https://s3.example.internal:9000" and env["AWS_REGION"] == "eu-west-1"
        assert env["ALEMBIC_OPERATOR_S3_PATH_STYLE"] == "true" and env["AWS_EC2_METADATA_DISABLED"] == "true"
        assert "AWS_ROLE_ARN" not in env and "AWS_CA_BUNDLE" not in env and "ALEMBIC_OPERATOR_S3_SSE" not in env
    cmd = jobs["backup"]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert cmd[3:] == ["--store", "s3", "--location", "s3://shop-backups/prod/db/shop/orders", "--prefix", "orders",
                       "--retain", "4", "--location-prefix", "s3://shop-backups/prod/db/shop/orders"]
    restore = jobs["restore"]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert restore[3:7] == ["--store", "s3", "--dump", "s3://b/x.dump"]


def test_web_identity_projects_its_own_token_for_the_roles_audience() -> None:
    """The Jobs never mount the ServiceAccount's API token (automount false): the wiring declares a projected token
    for the role's audience only, and the AWS SDK's web-identity variables point at it."""
    jobs = jobs_of({"bucket": "shop-backups", "region": "eu-west-1",
                    "webIdentity": {"roleArn": "arn:aws:iam::123456789012:role/shop-backups"}})
    for job in jobs.values():
        pod = job["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False and pod["securityContext"]["fsGroup"] == 65532
        token = next(v for v in pod["volumes"] if v["name"] == "s3-token")
        assert token["projected"] == {"defaultMode": 0o440, "sources": [{"serviceAccountToken": {
            "audience": "sts.amazonaws.com", "expirationSeconds": 3600, "path": "token"}}]}
        ctr = pod["containers"][0]
        assert {"name": "s3-token", "mountPath": "/var/run/secrets/alembic-operator/s3-token", "readOnly": True} in \
            ctr["volumeMounts"]
        env = env_of(job)
        assert env["AWS_ROLE_ARN"] == "arn:aws:iam::123456789012:role/shop-backups"
        assert env["AWS_WEB_IDENTITY_TOKEN_FILE"] == "/var/run/secrets/alembic-operator/s3-token/token"
        assert env["AWS_ROLE_SESSION_NAME"] == "alembic-operator-shop-orders"
        assert env["ALEMBIC_OPERATOR_S3_PATH_STYLE"] == "false"  # AWS S3: virtual-hosted buckets
        assert "AWS_ACCESS_KEY_ID" not in env and "AWS_SECRET_ACCESS_KEY" not in env


def test_a_ca_bundle_from_a_secret_or_configmap_is_mounted_and_encryption_is_a_setting() -> None:
    for kind, source in (("Secret", "secret"), ("ConfigMap", "configMap")):
        job = jobs_of({"bucket": "shop-backups", "endpoint": "https://minio.corp:9000",
                       "caBundle": {"kind": kind, "name": "corp-ca", "key": "root.pem"},
                       "serverSideEncryption": {"algorithm": "aws:kms", "kmsKeyId": "alias/backups"}})["backup"]
        pod = job["spec"]["template"]["spec"]
        ca = next(v for v in pod["volumes"] if v["name"] == "s3-ca")
        assert ca["projected"]["sources"] == [{source: {"name": "corp-ca", "items": [{"key": "root.pem",
                                                                                       "path": "ca.crt"}]}}]
        env = env_of(job)
        assert env["AWS_CA_BUNDLE"] == "/etc/alembic-operator/s3-ca/ca.crt"
        assert env["ALEMBIC_OPERATOR_S3_SSE"] == "aws:kms"
        assert env["ALEMBIC_OPERATOR_S3_SSE_KMS_KEY_ID"] == "alias/backups"


def test_the_spec_refuses_credentials_in_the_endpoint_two_credential_sources_and_bad_names() -> None:
    with pytest.raises(SpecError, match="endpoint"):
        spec_with({"bucket": "shop-backups", "endpoint": "https://AKIA:secret@s3.example.com"})
    with pytest.raises(SpecError, match=r"spec\.backup\.s3: set only one of credentials"):
        spec_with({"bucket": "shop-backups", "credentials": {"name": "k"},
                   "webIdentity": {"roleArn": "arn:aws:iam::123456789012:role/r"}})
    with pytest.raises(SpecError, match="bucket"):
        spec_with({"bucket": "Shop_Backups"})
    with pytest.raises(SpecError, match="prefix"):
        spec_with({"bucket": "shop-backups", "prefix": "/leading/slash"})
    with pytest.raises(SpecError, match=r"one store|only one"):
        parse_spec({**BASE, "backup": {"s3": {"bucket": "shop-backups"},
                                       "volume": {"persistentVolumeClaim": {"claimName": "x"}}}})
    assert spec_with({"bucket": "shop-backups"}).backup.store()[0] == "s3"  # type: ignore[index]


def test_the_location_never_names_a_credential() -> None:
    wiring = S3Store.wiring(spec_with({"bucket": "b-1", "credentials": {"name": "keys"}}).backup.s3, "ns", "app")
    assert wiring.location == wiring.shown_as == "s3://b-1/ns/app" and wiring.spec_field == "spec.backup.s3"
    assert "keys" not in json.dumps([wiring.location, wiring.settings])
    assert parse_location("s3://b-1/ns/app") == ("b-1", "ns/app") and parse_location("s3://b-1") == ("b-1", "")
    store, name = S3Store.open_dump("s3://b-1/p/ns/app/app-20260101T000000Z-abc.dump")
    assert (store.bucket, store.prefix, name) == ("b-1", "p/ns/app", "app-20260101T000000Z-abc.dump")  # type: ignore[attr-defined]


def test_the_jobs_settings_come_from_the_environment_the_wiring_declared() -> None:
    s = Settings.from_env({"AWS_ENDPOINT_URL_S3": "http://127.0.0.1:8333/", "ALEMBIC_OPERATOR_S3_PART_SIZE": "1"})
    assert (s.endpoint, s.region, s.path_style, s.part_size) == ("http://127.0.0.1:8333", "us-east-1", True, 5 << 20)
    aws = Settings.from_env({"AWS_REGION": "eu-west-1", "ALEMBIC_OPERATOR_S3_SSE": "aws:kms",
                             "ALEMBIC_OPERATOR_S3_SSE_KMS_KEY_ID": "k"})
    assert (aws.endpoint, aws.path_style, aws.shown_endpoint()) == (None, False, "AWS S3 (eu-west-1)")
    assert aws.encryption() == {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "k"}
    assert Settings.from_env({"ALEMBIC_OPERATOR_S3_SSE": "AES256", "ALEMBIC_OPERATOR_S3_SSE_KMS_KEY_ID": "k"}) \
        .encryption() == {"ServerSideEncryption": "AES256"}


def test_parts_grow_so_that_ten_thousand_hold_any_dump_and_the_etag_is_s3s() -> None:
    base = 16 << 20
    assert [part_size(n, base) for n in (1, 1000, 1001, 2001)] == [base, base, 2 * base, 4 * base]
    assert sum(part_size(n, base) for n in range(1, 10001)) > 5 * 10**12  # S3's largest object: 5 TB
    import hashlib

    a, b = hashlib.md5(b"a").digest(), hashlib.md5(b"b").digest()
    assert multipart_etag([a, b]) == hashlib.md5(a + b).hexdigest() + "-2"


@pytest.mark.parametrize(("failure", "reason", "says"), [
    (S3Failure("NoSuchBucket", "The specified bucket does not exist", 404), reasons.BACKUP_BUCKET_NOT_FOUND,
     "create it"),
    (S3Failure("InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist", 403),
     reasons.BACKUP_STORE_ACCESS_DENIED, "access key id is not known"),
    (S3Failure("SignatureDoesNotMatch", "", 403), reasons.BACKUP_STORE_ACCESS_DENIED, "secret access key"),
    (S3Failure("AccessDenied", "Access Denied", 403), reasons.BACKUP_STORE_ACCESS_DENIED, "s3:PutObject"),
    (S3Failure("AuthorizationHeaderMalformed", "the region 'us-east-1' is wrong; expecting 'eu-west-1'", 400,
               "eu-west-1"), reasons.BACKUP_STORE_WRONG_REGION, "spec.backup.s3.region: eu-west-1"),
    (S3Failure("301", "", 301), reasons.BACKUP_STORE_WRONG_REGION, "to the bucket's region"),
    (S3Failure("RequestTimeTooSkewed", "The difference between the request time and the current time is too "
               "large.", 403), reasons.BACKUP_STORE_CLOCK_SKEW, "NTP"),
    (S3Failure("InternalError", "We encountered an internal error", 500), reasons.BACKUP_FAILED, "InternalError"),
])
def test_each_s3_error_has_its_reason_and_its_fix(failure: S3Failure, reason: str, says: str) -> None:
    err = explain(failure, "shop-backups", "us-east-1", "listing s3://shop-backups/shop/orders")
    assert err.reason == reason and says in err.message
    info = reasons.info(err.reason)
    if info.kind == "stalled":  # Stalled under its own reason (reconcile/migrating.py), with a runbook entry
        assert "BackupSucceeded" in info.where and info.runbook and "no migration started" in err.message


def test_an_upload_cut_off_midway_is_retried_and_a_missing_bucket_on_a_head_is_still_named() -> None:
    cut = explain(S3Failure("InternalError", "", 503), "b", "r", "uploading s3://b/x", uploading=True)
    gone = explain(S3Failure("NoSuchUpload", "", 404), "b", "r", "uploading s3://b/x", uploading=True)
    assert cut.reason == gone.reason == reasons.BACKUP_UPLOAD_INTERRUPTED
    assert reasons.BACKUP_UPLOAD_INTERRUPTED in reasons.TRANSIENT_JOB_REASONS
    assert explain(S3Failure("404"), "b", "r", "listing s3://b").reason == reasons.BACKUP_BUCKET_NOT_FOUND
    denied = explain(S3Failure("AccessDenied"), "b", "r", "uploading s3://b/x", uploading=True)
    assert denied.reason == reasons.BACKUP_STORE_ACCESS_DENIED  # a policy refusal is not passing


def test_no_answer_is_unreachable_before_the_upload_and_interrupted_during_it() -> None:
    before = unreachable("https://s3.example:9000", "connection refused", "listing s3://b/p")
    assert before.reason == reasons.BACKUP_STORE_UNREACHABLE and "spec.backup.s3.endpoint" in before.message
    tls = unreachable("https://s3.example:9000", "certificate verify failed", "listing s3://b/p", tls=True)
    assert tls.reason == reasons.BACKUP_STORE_UNREACHABLE and "spec.backup.s3.caBundle" in tls.message
    during = unreachable("https://s3.example:9000", "connection reset", "uploading s3://b/x", uploading=True)
    assert during.reason == reasons.BACKUP_UPLOAD_INTERRUPTED and "retried" in during.message


def test_a_backup_jobs_start_up_loads_none_of_the_operators_packages() -> None:
    """What a backup or restore Job imports before pg_dump starts is its start-up, seconds on a busy node (make
    bench-s3): the operator's packages (pydantic models, Kubernetes' models, Alembic, Kopf) stay out of it."""
    code = ("import sys; from alembic_operator import cli, jobtools, backupstores, engines; "
            "backupstores.store_kind('s3'); engines.for_backend('postgresql'); engines.for_backend('mysql'); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'pydantic', 'kubernetes', 'alembic', 'kopf'}))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]", loaded
