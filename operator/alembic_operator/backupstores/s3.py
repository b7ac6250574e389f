"""The S3 backup store: dumps are objects in a bucket of AWS S3 or of any server speaking its API.

A resource's dumps live under ``s3://<bucket>/<prefix>/<namespace>/<name>/`` (the location; status names the dumps
``s3://bucket/prefix/namespace/name/<dump>`` too: a location never holds a credential). The Jobs need no volume:

- in the operator, :meth:`S3Store.wiring` turns ``spec.backup.s3`` into plain settings (endpoint, region, path
  style, encryption: the AWS SDK's own variable names where it has one), credentials only as ``secretKeyRef``\\s,
  and, for a web identity (IRSA), a projected ServiceAccount token and ``AWS_ROLE_ARN`` +
  ``AWS_WEB_IDENTITY_TOKEN_FILE`` (the Jobs set automountServiceAccountToken false, so the wiring declares its own
  token, for the role's audience only); a CA bundle from a Secret or ConfigMap is mounted and named in
  ``AWS_CA_BUNDLE``;
- in the Job, the dump is streamed into a multipart upload as the engine produces it (never a local copy): the
  engine writes into a pipe, a reader thread cuts parts, hashes them (sha256 of the whole, MD5 of each part, sent
  as Content-MD5 so the server checks every part) and uploads a few at a time. The upload is completed only when the
  engine finished cleanly, then checked (the object's size and its multipart ETag against what was sent); anything
  else aborts it. The JSON record ``<dump>.json`` (sha256, size, revision) is written last: a dump counts as a backup
  (``list_dumps``, retention, restore) only once its record exists. Pruning also deletes dumps without a record and
  aborts the multipart uploads an interrupted Job left (a bucket lifecycle rule aborting incomplete uploads after a
  day covers a Job killed for good).

A restore downloads the dump to the Job's scratch volume while hashing it, and hands it over only if the sha256 is
the one recorded when it was taken: the whole dump has to be read before its checksum is known, and the engines
restore from a file.

Errors carry their own reasons, with the fix (``reasons.py``, runbook): the bucket missing, access denied, the
endpoint unreachable (or its certificate untrusted), the wrong region, clock skew; a preflight listing finds them
before the database is dumped. An upload cut off midway (the server went away) is ``BackupUploadInterrupted``,
retried with backoff.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import io
import json
import os
import re
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Final

from .. import reasons
from ..jobio import log, remember_secret
from .base import BackupStore, DumpRecord, StoredDump, StoreError, newest_first, to_prune

if TYPE_CHECKING:
    from kubernetes.client.models.v1_volume import V1Volume
    from kubernetes.client.models.v1_volume_mount import V1VolumeMount
    from mypy_boto3_s3.client import S3Client

    from ..api import S3Spec
    from ..jobparts import StoreWiring

# The Jobs' environment: the AWS SDK's own names where it has one (so its documentation applies), ours otherwise.
ENDPOINT_ENV: Final = "AWS_ENDPOINT_URL_S3"
REGION_ENV: Final = "AWS_REGION"
CA_BUNDLE_ENV: Final = "AWS_CA_BUNDLE"
ACCESS_KEY_ENV: Final = "AWS_ACCESS_KEY_ID"
SECRET_KEY_ENV: Final = "AWS_SECRET_ACCESS_KEY"
SESSION_TOKEN_ENV: Final = "AWS_SESSION_TOKEN"
ROLE_ARN_ENV: Final = "AWS_ROLE_ARN"
TOKEN_FILE_ENV: Final = "AWS_WEB_IDENTITY_TOKEN_FILE"
ROLE_SESSION_ENV: Final = "AWS_ROLE_SESSION_NAME"
NO_IMDS_ENV: Final = "AWS_EC2_METADATA_DISABLED"
PATH_STYLE_ENV: Final = "ALEMBIC_OPERATOR_S3_PATH_STYLE"
SSE_ENV: Final = "ALEMBIC_OPERATOR_S3_SSE"
SSE_KMS_KEY_ENV: Final = "ALEMBIC_OPERATOR_S3_SSE_KMS_KEY_ID"
PART_SIZE_ENV: Final = "ALEMBIC_OPERATOR_S3_PART_SIZE"

DEFAULT_REGION: Final = "us-east-1"
TOKEN_DIR: Final = "/var/run/secrets/alembic-operator/s3-token"  # the projected ServiceAccount token's mount
CA_DIR: Final = "/etc/alembic-operator/s3-ca"  # the CA bundle's mount
MIN_PART: Final = 5 << 20  # S3's smallest part but the last
DEFAULT_PART: Final = 16 << 20
PARTS_IN_FLIGHT: Final = 4  # parts uploading at once
PARTS_AHEAD: Final = 8  # parts read and waiting for an upload slot, so that a slow part never stalls the dump:
# memory is about (PARTS_AHEAD + 1) x the part size (144 MiB with 16 MiB parts)
_CHUNK: Final = 1 << 20
PIPE_BUFFER: Final = 1 << 20  # the system's default ceiling for an unprivileged process (fs.pipe-max-size)
_RECORD: Final = ".json"


def _location(config: S3Spec, namespace: str, name: str) -> str:
    return "/".join(["s3:/", config.bucket, *([config.prefix] if config.prefix else []), namespace, name])


def parse_location(location: str) -> tuple[str, str]:
    """(bucket, key prefix without a trailing slash) of ``s3://bucket/key/prefix``."""
    m = re.fullmatch(r"s3://([^/]+)/?(.*)", location.strip())
    if not m or not m.group(1):
        raise StoreError(reasons.INVALID_ARGUMENT, f"{location!r} is not an S3 location (s3://bucket/prefix)")
    return m.group(1), m.group(2).strip("/")


def part_size(number: int, base: int) -> int:
    """The size of part `number` (1-based): `base`, doubled every 1000 parts, so that S3's 10,000 parts hold any
    dump (16 MiB parts: 16 GB in the first 1000, then 32 MiB...) while small dumps keep small parts."""
    return base << ((number - 1) // 1000)


def multipart_etag(part_md5s: list[bytes]) -> str:
    """The ETag S3 gives a multipart object: the MD5 of the parts' MD5 digests, a dash, the number of parts."""
    return f"{hashlib.md5(b''.join(part_md5s)).hexdigest()}-{len(part_md5s)}"  # S3's checksum, not a security one


# --- what went wrong, said with its fix ------------------------------------------------------------------------------


@dataclass(frozen=True)
class S3Failure:
    """An S3 error as the client received it: the error code (``NoSuchBucket``, or the HTTP status of a response
    without a body, ``404``), its message, the HTTP status, and, for a redirect, the bucket's region."""

    code: str
    message: str = ""
    status: int | None = None
    bucket_region: str | None = None


_DENIED: Final = {"AccessDenied", "AllAccessDisabled", "AccountProblem", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                  "InvalidToken", "ExpiredToken", "TokenRefreshRequired", "InvalidSecurity", "InvalidIdentityToken",
                  "IDPRejectedClaim", "InvalidClientTokenId", "UnrecognizedClientException", "403"}
_WRONG_REGION: Final = {"AuthorizationHeaderMalformed", "PermanentRedirect", "IllegalLocationConstraintException",
                        "301", "InvalidRegion"}
_SKEW: Final = {"RequestTimeTooSkewed", "RequestExpired"}
_GONE_UPLOAD: Final = {"NoSuchUpload"}


def explain(failure: S3Failure, bucket: str, region: str, doing: str, *, uploading: bool = False) -> StoreError:
    """The StoreError for `failure` while `doing` (``listing s3://b/p``), with the reason and the fix; `uploading`:
    a multipart upload was under way, so a server error or a lost upload means it was cut off (retried)."""
    code, said = failure.code, f" ({failure.code}: {failure.message})" if failure.message else f" ({failure.code})"
    if code == "NoSuchBucket" or (code == "404" and doing.startswith("listing")):
        return StoreError(reasons.BACKUP_BUCKET_NOT_FOUND, (
            f"the bucket {bucket!r} does not exist on the S3 endpoint{said}: create it (the Jobs never create a "
            "bucket), or fix spec.backup.s3.bucket / spec.backup.s3.endpoint; no migration started"))
    if code in _SKEW:
        return StoreError(reasons.BACKUP_STORE_CLOCK_SKEW, (
            f"the object store refused {doing}{said}: the node's clock differs from the store's by more than S3 "
            "allows (15 minutes). Synchronize the nodes' clocks (NTP/chrony); no migration started"))
    if code in _WRONG_REGION:
        theirs = failure.bucket_region
        where = f"the bucket is in {theirs}. Set spec.backup.s3.region: {theirs}" if theirs else (
            "the bucket is in another region. Set spec.backup.s3.region to the bucket's region")
        return StoreError(reasons.BACKUP_STORE_WRONG_REGION, (
            f"the object store refused {doing} signed for region {region!r}{said}: {where}; no migration started"))
    if code in _DENIED:
        fix = {
            "InvalidAccessKeyId": "the access key id is not known to the store: check the Secret of "
                                  "spec.backup.s3.credentials (and that it is for this endpoint)",
            "SignatureDoesNotMatch": "the secret access key does not match the access key id: check the Secret of "
                                     "spec.backup.s3.credentials",
            "ExpiredToken": "the session token has expired: renew the keys in the Secret",
            "InvalidIdentityToken": "the ServiceAccount token was refused: check the role's trust policy (the "
                                    "cluster's OIDC issuer, the ServiceAccount, spec.backup.s3.webIdentity.audience)",
        }.get(code, "grant the Jobs' identity s3:ListBucket on the bucket and s3:PutObject, s3:GetObject, "
                    "s3:DeleteObject, s3:AbortMultipartUpload, s3:ListBucketMultipartUploads under the prefix")
        return StoreError(reasons.BACKUP_STORE_ACCESS_DENIED,
                          f"the object store refused {doing}{said}: {fix}; no migration started")
    if uploading and (code in _GONE_UPLOAD or (failure.status or 0) >= 500 or code.startswith("5")):
        return StoreError(reasons.BACKUP_UPLOAD_INTERRUPTED, (
            f"the upload broke off while {doing}{said}: the partial upload is aborted and nothing counts as a "
            "backup; the backup is retried"))
    return StoreError(reasons.BACKUP_FAILED, f"the object store refused {doing}{said}")


def unreachable(endpoint: str, detail: str, doing: str, *, uploading: bool = False, tls: bool = False) -> StoreError:
    """The StoreError when no answer came: before the upload, the endpoint is unreachable (or untrusted); during
    it, the upload was cut off (retried)."""
    if uploading:
        return StoreError(reasons.BACKUP_UPLOAD_INTERRUPTED, (
            f"the object store at {endpoint} stopped answering while {doing} ({detail}): the partial upload is "
            "aborted and nothing counts as a backup; the backup is retried"))
    fix = ("the TLS handshake failed: if the endpoint's certificate is signed by a private CA, set "
           "spec.backup.s3.caBundle to that CA; check the scheme (https or http) of spec.backup.s3.endpoint"
           if tls else "check spec.backup.s3.endpoint (scheme, host, port), the store's DNS name, and "
           "that network policies let the Jobs' pods reach it")
    return StoreError(reasons.BACKUP_STORE_UNREACHABLE,
                      f"cannot reach the object store at {endpoint} while {doing} ({detail}): {fix}; no migration "
                      "started")


# --- the Job side: settings from the environment the wiring declared -------------------------------------------------


@dataclass(frozen=True)
class Settings:
    endpoint: str | None
    region: str
    path_style: bool
    ca_bundle: str | None
    sse: str | None
    sse_kms_key: str | None
    part_size: int

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        endpoint = env.get(ENDPOINT_ENV) or None
        path_style = env.get(PATH_STYLE_ENV)
        try:
            part = max(int(env.get(PART_SIZE_ENV) or DEFAULT_PART), MIN_PART)
        except ValueError:
            part = DEFAULT_PART
        return cls(endpoint=endpoint.rstrip("/") if endpoint else None, region=env.get(REGION_ENV) or DEFAULT_REGION,
                   path_style=(path_style == "true") if path_style else endpoint is not None,
                   ca_bundle=env.get(CA_BUNDLE_ENV) or None, sse=env.get(SSE_ENV) or None,
                   sse_kms_key=env.get(SSE_KMS_KEY_ENV) or None, part_size=part)

    def encryption(self) -> dict[str, str]:
        """The server-side encryption arguments of a PutObject / CreateMultipartUpload."""
        if not self.sse:
            return {}
        args = {"ServerSideEncryption": self.sse}
        if self.sse_kms_key and self.sse.startswith("aws:kms"):
            args["SSEKMSKeyId"] = self.sse_kms_key
        return args

    def shown_endpoint(self) -> str:
        return self.endpoint or f"AWS S3 ({self.region})"


@dataclass
class _Upload:
    """One multipart upload fed from a pipe: reads parts, hashes them, uploads a few at a time."""

    client: S3Client
    bucket: str
    key: str
    upload_id: str
    base_part: int
    sha256: hashlib._Hash = field(default_factory=hashlib.sha256)
    size: int = 0
    parts: list[tuple[int, str, bytes]] = field(default_factory=list)  # (number, ETag, MD5 digest)
    error: BaseException | None = None
    producer_ok: bool = False  # set before the producer closes its end: EOF then means "complete"
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def pump(self, fd: int) -> None:
        try:
            # the pool exits (its parts done) before the pipe closes: a failed part closes it, stopping the producer
            with os.fdopen(fd, "rb", buffering=0) as src, ThreadPoolExecutor(PARTS_IN_FLIGHT, "s3-part") as pool:
                pending: deque[Future[None]] = deque()
                number = 1
                while True:
                    chunk = _read_full(src, part_size(number, self.base_part))
                    if not chunk and number > 1:
                        break
                    self.sha256.update(chunk)
                    self.size += len(chunk)
                    while len(pending) >= PARTS_AHEAD:
                        pending.popleft().result()
                    pending.append(pool.submit(self._put, number, chunk))
                    number += 1
                    if not chunk:
                        break
                while pending:
                    pending.popleft().result()
        except BaseException as err:  # closing the pipe's read end stops the producer (EPIPE)
            self.error = err

    def _put(self, number: int, chunk: bytes) -> None:
        digest = hashlib.md5(chunk).digest()  # Content-MD5: the store checks the part
        answer = self.client.upload_part(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id,
                                         PartNumber=number, Body=chunk,
                                         ContentMD5=base64.b64encode(digest).decode())
        with self._lock:
            self.parts.append((number, answer["ETag"], digest))


def _widen(fd: int) -> None:
    """Give the pipe PIPE_BUFFER bytes (Linux's default is 64 KiB): the dump tool keeps writing while the reader
    hashes a part or waits for the GIL (a 64 KiB pipe fills in milliseconds and stalls pg_dump). Best effort: a
    smaller system limit (fs.pipe-max-size) keeps the default."""
    with contextlib.suppress(OSError, AttributeError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BUFFER)


def _read_full(src: io.FileIO, size: int) -> bytes:
    """Up to `size` bytes from `src`, fewer only at its end."""
    buf = bytearray(size)
    view, pos = memoryview(buf), 0
    while pos < size:
        got = src.readinto(view[pos:])
        if not got:
            break
        pos += got
    view.release()
    del buf[pos:]
    return bytes(buf)


class S3Store(BackupStore["S3Spec"]):
    name = "s3"
    spec_field = "s3"

    @classmethod
    def wiring(cls, config: S3Spec, namespace: str, name: str) -> StoreWiring:
        # Kubernetes' models are the operator's: the Job that opens the store never imports them (start-up time)
        from kubernetes.client.models.v1_config_map_projection import V1ConfigMapProjection
        from kubernetes.client.models.v1_key_to_path import V1KeyToPath
        from kubernetes.client.models.v1_projected_volume_source import V1ProjectedVolumeSource
        from kubernetes.client.models.v1_secret_projection import V1SecretProjection
        from kubernetes.client.models.v1_service_account_token_projection import V1ServiceAccountTokenProjection
        from kubernetes.client.models.v1_volume import V1Volume
        from kubernetes.client.models.v1_volume_mount import V1VolumeMount
        from kubernetes.client.models.v1_volume_projection import V1VolumeProjection

        from ..jobparts import SecretEnv, StoreWiring

        settings: list[tuple[str, str]] = [(REGION_ENV, config.region or DEFAULT_REGION)]
        if config.endpoint:
            settings.append((ENDPOINT_ENV, config.endpoint.rstrip("/")))
        path_style = config.force_path_style if config.force_path_style is not None else config.endpoint is not None
        settings.append((PATH_STYLE_ENV, "true" if path_style else "false"))
        if sse := config.server_side_encryption:
            settings.append((SSE_ENV, sse.algorithm))
            if sse.kms_key_id:
                settings.append((SSE_KMS_KEY_ENV, sse.kms_key_id))
        credentials: list[SecretEnv] = []
        volumes: list[V1Volume] = []
        mounts: list[V1VolumeMount] = []
        if keys := config.credentials:
            credentials += [SecretEnv(ACCESS_KEY_ENV, keys.name, keys.access_key_id_key),
                            SecretEnv(SECRET_KEY_ENV, keys.name, keys.secret_access_key_key)]
            if keys.session_token_key:
                credentials.append(SecretEnv(SESSION_TOKEN_ENV, keys.name, keys.session_token_key))
            settings.append((NO_IMDS_ENV, "true"))  # keys are the only credentials: no probing the node's metadata
        if web := config.web_identity:
            volumes.append(V1Volume(name="s3-token", projected=V1ProjectedVolumeSource(default_mode=0o440, sources=[
                V1VolumeProjection(service_account_token=V1ServiceAccountTokenProjection(
                    audience=web.audience, expiration_seconds=web.expiration_seconds, path="token"))])))
            mounts.append(V1VolumeMount(name="s3-token", mount_path=TOKEN_DIR, read_only=True))
            settings += [(ROLE_ARN_ENV, web.role_arn), (TOKEN_FILE_ENV, f"{TOKEN_DIR}/token"),
                         (ROLE_SESSION_ENV, f"alembic-operator-{namespace}-{name}"[:64]), (NO_IMDS_ENV, "true")]
        if ca := config.ca_bundle:
            item = [V1KeyToPath(key=ca.key, path="ca.crt")]
            source = (V1VolumeProjection(secret=V1SecretProjection(name=ca.name, items=item))
                      if ca.kind == "Secret" else
                      V1VolumeProjection(config_map=V1ConfigMapProjection(name=ca.name, items=item)))
            volumes.append(V1Volume(name="s3-ca", projected=V1ProjectedVolumeSource(default_mode=0o444,
                                                                                    sources=[source])))
            mounts.append(V1VolumeMount(name="s3-ca", mount_path=CA_DIR, read_only=True))
            settings.append((CA_BUNDLE_ENV, f"{CA_DIR}/ca.crt"))
        location = _location(config, namespace, name)
        return StoreWiring(
            store=cls.name, location=location, shown_as=location, spec_field="spec.backup.s3",
            volumes=tuple(volumes), mounts=tuple(mounts), settings=tuple(settings), credentials=tuple(credentials),
            fs_group=config.web_identity is not None,  # the projected token is the pod's fsGroup's to read
        )

    # --- in the Job ------------------------------------------------------------------------------------------------

    def __init__(self, location: str, environ: Mapping[str, str] | None = None) -> None:
        super().__init__(location)
        self.bucket, self.prefix = parse_location(location)
        env = environ if environ is not None else os.environ
        self.settings = Settings.from_env(env)
        for secret in (SECRET_KEY_ENV, SESSION_TOKEN_ENV, ACCESS_KEY_ENV):
            remember_secret(env.get(secret))
        self._client: S3Client | None = None
        self._fetched: dict[str, tuple[Path, str, int]] = {}
        self._scratch: tempfile.TemporaryDirectory[str] | None = None
        self._checked = False  # preflight() listed the location

    @property
    def client(self) -> S3Client:
        if self._client is None:
            import boto3  # the Job's dependency only: the operator never loads it
            from botocore.config import Config

            s = self.settings
            config = Config(
                region_name=s.region, signature_version="s3v4", s3={"addressing_style": "path" if s.path_style
                                                                    else "virtual"},
                connect_timeout=10, read_timeout=120, retries={"mode": "standard", "max_attempts": 3},
                max_pool_connections=PARTS_IN_FLIGHT + 2, user_agent_extra="alembic-operator",
                # our own checks: Content-MD5 on each part, the size and ETag of the object, sha256 of the dump
                request_checksum_calculation="when_required", response_checksum_validation="when_required")
            self._client = boto3.session.Session().client("s3", endpoint_url=s.endpoint, config=config,
                                                          verify=s.ca_bundle or True)
        return self._client

    def _key(self, name: str) -> str:
        if not name or "/" in name or name.startswith("."):
            raise StoreError(reasons.INVALID_ARGUMENT, f"{name!r} is not the name of a backup")
        return f"{self.prefix}/{name}" if self.prefix else name

    def _fail(self, err: Exception, doing: str, *, uploading: bool = False) -> StoreError:
        """The StoreError for an exception of the client (botocore's) while `doing`."""
        from botocore import exceptions as bx

        if isinstance(err, StoreError):
            return err
        if isinstance(err, bx.ClientError):
            error = err.response.get("Error", {})
            meta = err.response.get("ResponseMetadata", {})
            headers = meta.get("HTTPHeaders", {})
            failure = S3Failure(code=str(error.get("Code") or meta.get("HTTPStatusCode") or "?"),
                                message=str(error.get("Message") or ""), status=meta.get("HTTPStatusCode"),
                                bucket_region=str(error.get("Region") or headers.get("x-amz-bucket-region") or "")
                                or None)
            return explain(failure, self.bucket, self.settings.region, doing, uploading=uploading)
        if isinstance(err, bx.SSLError):
            return unreachable(self.settings.shown_endpoint(), _short(err), doing, uploading=uploading, tls=True)
        if isinstance(err, bx.ConnectionError | bx.HTTPClientError):
            return unreachable(self.settings.shown_endpoint(), _short(err), doing, uploading=uploading)
        if isinstance(err, bx.NoCredentialsError | bx.PartialCredentialsError | bx.CredentialRetrievalError):
            return StoreError(reasons.BACKUP_STORE_ACCESS_DENIED, (
                f"no usable credentials for the object store while {doing} ({_short(err)}): set "
                "spec.backup.s3.credentials (a Secret with the keys) or spec.backup.s3.webIdentity; no migration "
                "started"))
        if isinstance(err, bx.BotoCoreError | OSError):
            return StoreError(reasons.BACKUP_UPLOAD_INTERRUPTED if uploading else reasons.BACKUP_FAILED,
                              f"the object store failed while {doing}: {_short(err)}")
        raise err

    @contextlib.contextmanager
    def _calling(self, doing: str, *, uploading: bool = False) -> Iterator[None]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except (BotoCoreError, ClientError) as err:
            raise self._fail(err, doing, uploading=uploading) from None

    def _where(self, name: str = "") -> str:
        return f"{self.location}/{name}" if name else self.location

    def preflight(self) -> None:
        """List the location once: what users get wrong (bucket, credentials, endpoint, region, clock) shows here,
        with its reason, before anything is dumped (a GET: its error has a body and a code; a HEAD's has none)."""
        if self._checked:
            return
        with self._calling(f"listing {self._where()}"):
            self.client.list_objects_v2(Bucket=self.bucket, Prefix=self._key("x")[:-1], MaxKeys=1)
        self._checked = True

    def exists(self, name: str) -> bool:
        self.preflight()
        return any(self._head(key) is not None for key in (self._key(name), self._key(name + _RECORD)))

    def _head(self, key: str) -> int | None:
        """The object's size, None when there is none."""
        from botocore.exceptions import ClientError

        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"])
        except ClientError as err:
            if str(err.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self._fail(err, f"reading s3://{self.bucket}/{key}") from None
        except Exception as err:
            raise self._fail(err, f"reading s3://{self.bucket}/{key}") from None

    def write(self, name: str, produce: Callable[[IO[bytes]], None]) -> StoredDump:
        key, where = self._key(name), self._where(name)
        self.preflight()
        with self._calling(f"starting the upload of {where}"):
            upload_id = self.client.create_multipart_upload(
                Bucket=self.bucket, Key=key, ContentType="application/octet-stream",
                **self.settings.encryption())["UploadId"]  # type: ignore[arg-type]
        upload = _Upload(self.client, self.bucket, key, upload_id, self.settings.part_size)
        read_fd, write_fd = os.pipe()
        _widen(write_fd)
        pump = threading.Thread(target=upload.pump, args=(read_fd,), name="s3-upload", daemon=True)
        pump.start()
        out = os.fdopen(write_fd, "wb")
        failed: BaseException | None = None
        try:
            produce(out)
            out.flush()
        except BaseException as err:
            failed = err
        upload.producer_ok = failed is None
        with contextlib.suppress(OSError):
            out.close()
        pump.join()
        if failed is not None or upload.error is not None:
            self._abort(key, upload_id)
            if upload.error is not None:  # the upload broke first; the producer only saw its pipe close
                raise self._fail(_as_exception(upload.error), f"uploading {where}", uploading=True) from None
            assert failed is not None
            raise failed
        parts = sorted(upload.parts)
        try:
            with self._calling(f"completing the upload of {where}", uploading=True):
                answer = self.client.complete_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload_id,
                    MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etag} for n, etag, _md5 in parts]})
        except StoreError:
            self._abort(key, upload_id)
            raise
        self._check(key, where, upload.size, str(answer.get("ETag") or ""), [md5 for _n, _e, md5 in parts])
        return StoredDump(name=name, location=self.reference(name), sha256="sha256:" + upload.sha256.hexdigest(),
                          size=upload.size)

    def _check(self, key: str, where: str, size: int, etag: str, part_md5s: list[bytes]) -> None:
        """The stored object is what was sent: its size, and its ETag where S3's multipart form says it (a KMS-
        encrypted object's ETag is no MD5); otherwise it is deleted and the backup fails."""
        with self._calling(f"checking {where}", uploading=True):
            stored = self.client.head_object(Bucket=self.bucket, Key=key)
        etag = str(stored.get("ETag") or etag).strip('"')
        expected = multipart_etag(part_md5s)
        problem = None
        if int(stored["ContentLength"]) != size:
            problem = f"it holds {stored['ContentLength']} bytes, {size} were sent"
        elif re.fullmatch(r"[0-9a-f]{32}-[0-9]+", etag) and not (self.settings.sse or "").startswith("aws:kms") \
                and etag != expected:
            problem = f"its ETag is {etag}, the parts sent make {expected}"
        if problem:
            with contextlib.suppress(Exception):
                self.client.delete_object(Bucket=self.bucket, Key=key)
            raise StoreError(reasons.BACKUP_FAILED, f"the object store did not keep {where} as sent ({problem}): "
                             "it was deleted and nothing counts as a backup")

    def _abort(self, key: str, upload_id: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except Exception as err:  # the store is gone: the next backup's prune (or the bucket's lifecycle) aborts it
            log(f"could not abort the partial upload of {self._where(key.rpartition('/')[2])} "
                f"({_short(err)}): the next backup's pruning aborts it")

    def write_record(self, name: str, record: DumpRecord) -> None:
        """The record, written last: from now on the dump is a backup (listed, kept, restorable)."""
        with self._calling(f"writing the record of {self._where(name)}"):
            self.client.put_object(Bucket=self.bucket, Key=self._key(name + _RECORD),
                                   Body=(json.dumps(record, indent=2) + "\n").encode(),
                                   ContentType="application/json", **self.settings.encryption())  # type: ignore[arg-type]

    def read_record(self, name: str) -> bytes | None:
        from botocore.exceptions import ClientError

        key = self._key(name + _RECORD)
        try:
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as err:
            if str(err.response.get("Error", {}).get("Code")) in ("NoSuchKey", "404"):
                return None
            raise self._fail(err, f"reading s3://{self.bucket}/{key}") from None
        except Exception as err:
            raise self._fail(err, f"reading s3://{self.bucket}/{key}") from None

    def _names(self) -> list[str]:
        """The object names directly under the location."""
        names: list[str] = []
        prefix = self._key("x")[:-1]
        with self._calling(f"listing {self._where()}"):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                names += [obj["Key"][len(prefix):] for obj in page.get("Contents", [])]
        return [n for n in names if n and "/" not in n]

    def list_dumps(self, prefix: str) -> list[str]:
        """The backups of `prefix`, newest first: the dumps whose record was written (complete and verified)."""
        names = set(self._names())
        return newest_first([n for n in names if n + _RECORD in names], prefix)

    def prune(self, prefix: str, retain: int, keep: str) -> list[str]:
        names = set(self._names())
        dumps = newest_first([n for n in names if n + _RECORD in names], prefix)
        pruned = to_prune(dumps, retain, keep)
        unrecorded = [n for n in newest_first(list(names), prefix) if n + _RECORD not in names and n != keep]
        doomed = [self._key(n) for n in pruned + unrecorded] + [self._key(n + _RECORD) for n in pruned]
        with self._calling(f"pruning {self._where()}"):
            for start in range(0, len(doomed), 1000):
                self.client.delete_objects(Bucket=self.bucket, Delete={
                    "Objects": [{"Key": k} for k in doomed[start:start + 1000]], "Quiet": True})
            for key, upload_id in self._uploads(prefix):  # what interrupted backups left
                if key != self._key(keep):
                    self._abort(key, upload_id)
        for name in unrecorded:
            log(f"deleted {self._where(name)}: an upload without its record (an interrupted backup)")
        return pruned

    def _uploads(self, prefix: str) -> list[tuple[str, str]]:
        """(key, upload id) of the multipart uploads in progress for dumps of `prefix`."""
        found: list[tuple[str, str]] = []
        start = self._key(f"{prefix}-")
        for page in self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=start):
            found += [(u["Key"], u["UploadId"]) for u in page.get("Uploads", []) if u.get("Key") and u.get("UploadId")]
        return found

    def uploads_in_progress(self, prefix: str) -> list[str]:
        """The dumps of `prefix` with a multipart upload in progress (for tests and people)."""
        with self._calling(f"listing the uploads under {self._where()}"):
            return [key.rpartition("/")[2] for key, _id in self._uploads(prefix)]

    def checksum(self, name: str) -> tuple[str, int]:
        """Downloads the dump to the Job's scratch directory, hashing it; `fetch` hands that copy over."""
        if name in self._fetched:
            _path, sha, size = self._fetched[name]
            return sha, size
        if self._scratch is None:
            self._scratch = tempfile.TemporaryDirectory(prefix="s3-restore-")
        path = Path(self._scratch.name, name)
        digest, size = hashlib.sha256(), 0
        from botocore.exceptions import ClientError

        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(name))["Body"]
            with open(path, "wb") as out:
                for chunk in body.iter_chunks(_CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
        except ClientError as err:
            if str(err.response.get("Error", {}).get("Code")) in ("NoSuchKey", "404"):
                raise StoreError(reasons.BACKUP_NOT_FOUND, f"the backup {self._where(name)} does not exist (was it "
                                 "pruned, or is spec.backup.s3 not the store it was written to?)") from None
            raise self._fail(err, f"downloading {self._where(name)}") from None
        except Exception as err:
            raise self._fail(err, f"downloading {self._where(name)}") from None
        sha = "sha256:" + digest.hexdigest()
        self._fetched[name] = (path, sha, size)
        return sha, size

    @contextlib.contextmanager
    def fetch(self, name: str) -> Iterator[Path]:
        self.checksum(name)
        try:
            yield self._fetched[name][0]
        finally:
            path = self._fetched.pop(name)[0]
            with contextlib.suppress(OSError):
                path.unlink()


def _short(err: BaseException) -> str:
    return re.sub(r"\s+", " ", str(err)).strip()[:300] or type(err).__name__


def _as_exception(err: BaseException) -> Exception:
    return err if isinstance(err, Exception) else RuntimeError(str(err))


