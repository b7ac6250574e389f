"""A real S3-compatible server (SeaweedFS' ``weed server -s3``, built from its Go module) on loopback ports.

    server = SeaweedFS(Path("/tmp/s3")); server.start()
    server.create_bucket("shop")              # a bucket the tests' keys may use
    server.endpoint, server.keys              # http://127.0.0.1:<port>, Keys(access, secret)

One process runs the master, a volume server, the filer and the S3 gateway, each on a free 127.0.0.1 port, with
its data in a temporary directory. The gateway requires signed requests: `keys` may do anything, `reader` may only
read and list, and any other key is refused, so wrong credentials fail as they would on AWS S3.
``stop()`` ends the process and keeps its data (``start()`` again brings the same buckets back): the tests cut an
upload off that way.

Pods on the real node reach it through the bed's relay, like PostgreSQL (``Bed.expose_host_port``; the
``s3_in_bed`` fixture). The binary is cached by ``tests/bed/build-seaweedfs.sh`` (``make seaweedfs``).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PROBE_BUCKET = "alembic-operator-probe"  # start() writes here to know the server takes writes


@dataclass(frozen=True)
class Keys:
    access: str
    secret: str


def weed_binary() -> Path:
    """The cached `weed` (building it the first time: minutes, niced)."""
    out = subprocess.run([str(HERE / "build-seaweedfs.sh")], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1]) / "weed"


def _free_ports(n: int) -> list[int]:
    """`n` distinct free loopback ports."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


class SeaweedFS:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.data = base / "data"
        self.keys = Keys("AKIA" + secrets.token_hex(8).upper(), secrets.token_urlsafe(30))
        self.reader = Keys("AKIA" + secrets.token_hex(8).upper(), secrets.token_urlsafe(30))
        (self.master, self.master_grpc, self.volume, self.volume_grpc, self.filer, self.filer_grpc, self.port,
         self.port_grpc) = _free_ports(8)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @staticmethod
    def closed_port() -> int:
        """A loopback port nothing listens on (an unreachable endpoint)."""
        return _free_ports(1)[0]

    def _config(self) -> Path:
        path = self.base / "s3.json"
        path.write_text(json.dumps({"identities": [
            {"name": "tests", "credentials": [{"accessKey": self.keys.access, "secretKey": self.keys.secret}],
             "actions": ["Admin", "Read", "List", "Tagging", "Write"]},
            {"name": "reader", "credentials": [{"accessKey": self.reader.access, "secretKey": self.reader.secret}],
             "actions": ["Read", "List"]},
        ]}))
        path.chmod(0o600)
        return path

    def start(self, timeout: float = 120) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        weed = weed_binary()
        # -logdir: glog's files (weed.INFO, weed.ERROR...) go with the server, not to /tmp.
        cmd = [str(weed), f"-logdir={self.base}", "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={self.data}",
               f"-master.port={self.master}", f"-master.port.grpc={self.master_grpc}", "-master.telemetry=false",
               "-master.volumeSizeLimitMB=256", "-volume.max=0", "-master.electionTimeout=1s",
               "-volume.preStopSeconds=0",
               f"-volume.port={self.volume}", f"-volume.port.grpc={self.volume_grpc}",
               "-filer", f"-filer.port={self.filer}", f"-filer.port.grpc={self.filer_grpc}",
               f"-filer.localSocket={self.base / 'filer.sock'}", f"-s3.localSocket={self.base / 's3.sock'}",
               "-s3", f"-s3.port={self.port}", f"-s3.port.grpc={self.port_grpc}", "-s3.port.iceberg=0",
               "-s3.port.lance=0", f"-s3.config={self._config()}"]
        log = open(self.base / "weed.log", "ab")  # noqa: SIM115 (the process keeps it)
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}: see {self.base / 'weed.log'}")
            if self._answers() and self._writable():
                return
            time.sleep(0.2)
        raise RuntimeError(f"SeaweedFS did not answer on {self.endpoint} in {timeout}s: see {self.base / 'weed.log'}")

    def _answers(self) -> bool:
        """The gateway answers S3 requests (an anonymous one is refused with S3's XML: it is serving)."""
        try:
            urllib.request.urlopen(f"{self.endpoint}/", timeout=2)
        except urllib.error.HTTPError as err:
            return err.code == 403 and self.filer_ready()
        except OSError:
            return False
        return self.filer_ready()

    def _writable(self) -> bool:
        """An object can be written: after a restart the gateway answers before its volumes take writes again."""
        from botocore.config import Config

        probe = self.client(config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1},
                                          connect_timeout=2, read_timeout=5))
        try:
            with contextlib.suppress(probe.exceptions.BucketAlreadyOwnedByYou, probe.exceptions.BucketAlreadyExists):
                probe.create_bucket(Bucket=PROBE_BUCKET)
            probe.put_object(Bucket=PROBE_BUCKET, Key="probe", Body=b"ok")
        except Exception:  # not yet (the first write waits for a volume: its read times out)
            return False
        return True

    def filer_ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.volume), timeout=1):
                return True
        except OSError:
            return False

    def client(self, keys: Keys | None = None, config: Any = None) -> Any:
        import boto3
        from botocore.config import Config

        keys = keys or self.keys
        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=keys.access, aws_secret_access_key=keys.secret,
            config=config or Config(s3={"addressing_style": "path"}, retries={"mode": "standard", "max_attempts": 5},
                                    request_checksum_calculation="when_required"))

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def env(self, keys: Keys | None = None) -> dict[str, str]:
        """The environment of a backup or restore Job writing to this server (as the S3 store's wiring sets it)."""
        keys = keys or self.keys
        return {"AWS_ENDPOINT_URL_S3": self.endpoint, "AWS_REGION": "us-east-1",
                "ALEMBIC_OPERATOR_S3_PATH_STYLE": "true", "AWS_ACCESS_KEY_ID": keys.access,
                "AWS_SECRET_ACCESS_KEY": keys.secret, "AWS_EC2_METADATA_DISABLED": "true"}

    def stop(self, grace: float = 5) -> None:
        """End the server (its data stays for a `start()`): SIGTERM, SIGKILL after `grace` seconds (its graceful
        shutdown can take 20)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None
        for port in (self.master_grpc, self.volume_grpc, self.filer_grpc, self.port_grpc):
            for sock in Path("/tmp").glob(f"seaweedfs-*-grpc-{port}.sock"):  # weed server puts them there, always
                sock.unlink(missing_ok=True)

    def destroy(self) -> None:
        self.stop(grace=0.5)
        shutil.rmtree(self.base, ignore_errors=True)
