"""A real PostgreSQL server (Debian's package) on a loopback port, for tests and the demo.

    server = PostgresServer(Path("/tmp/pg")); server.start()
    db = server.create_database("shop")      # a fresh database owned by the application role
    db.url                                   # postgresql+psycopg://app:<password>@127.0.0.1:<port>/shop

The server listens on 127.0.0.1 only; the superuser connects over the Unix socket in the data directory's
parent, applications with a password over TCP (scram-sha-256), the way a production database is reached.

Pods on the real node cannot reach the host's loopback: the bed relays an address inside its network namespace
to the server (``Bed.expose_host_port``; the ``postgres_in_bed`` fixture), and ``Database.at`` gives the URL there.
The server itself stays on the host so that the tests without a bed (most of them) need no namespace.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg

from bed import database

PG_BIN_CANDIDATES = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
APP_ROLE = "app"


def pg_bin(tool: str) -> str:
    for directory in PG_BIN_CANDIDATES:
        if (directory / tool).exists():
            return str(directory / tool)
    found = shutil.which(tool)
    if found:
        return found
    raise RuntimeError(f"{tool} not found: install Debian's postgresql package (make deps does)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Database(database.Database):
    """A PostgreSQL database of the test server."""

    @property
    def conninfo(self) -> str:
        return f"host={self.host} port={self.port} dbname={self.name} user={self.user} password={self.password}"

    @contextlib.contextmanager
    def connect(self) -> Iterator[psycopg.Connection]:
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            yield conn

    def query(self, sql: str, *params: object) -> list[tuple[object, ...]]:
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute(sql, params or None)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []


class PostgresServer:
    def __init__(self, base: Path, port: int | None = None, password: str | None = None,
                 durable: bool = False) -> None:
        self.base = base
        # Tests trade durability for speed (fsync off); a benchmark of write timings wants a production's settings.
        self.durable = durable
        self.datadir = base / "data"
        self.socketdir = base / "run"
        self.port = port or free_port()
        # A distinctive password, so leak tests can search for it in logs, Events and specs.
        self.password = password or f"pw-{secrets.token_hex(12)}"
        self._as_postgres: list[str] = []
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            self._as_postgres = ["runuser", "-u", "postgres", "--"]

    def _run(self, *cmd: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([*self._as_postgres, *cmd], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{Path(cmd[0]).name} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout}")
        return proc

    def start(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self.socketdir.mkdir(parents=True, exist_ok=True)
        if self._as_postgres:
            shutil.chown(self.base, "postgres", "postgres")
            shutil.chown(self.socketdir, "postgres", "postgres")
            os.chmod(self.base, 0o755)
        if not (self.datadir / "PG_VERSION").exists():
            self._run(pg_bin("initdb"), "-D", str(self.datadir), "-U", "postgres", "--auth-local=trust",
                      "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync")
        opts = (f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.socketdir} "
                "-c max_connections=200")
        if not self.durable:
            opts += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run(pg_bin("pg_ctl"), "-D", str(self.datadir), "-o", opts, "-l", str(self.base / "postgres.log"),
                  "-w", "-t", "60", "start")
        with self.admin() as conn:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (APP_ROLE,)).fetchone()
            verb = "ALTER" if exists else "CREATE"
            conn.execute(f"{verb} ROLE {APP_ROLE} LOGIN CREATEDB PASSWORD '{self.password}'")

    def stop(self) -> None:
        if (self.datadir / "postmaster.pid").exists():
            with contextlib.suppress(RuntimeError):
                self._run(pg_bin("pg_ctl"), "-D", str(self.datadir), "-m", "immediate", "-w", "stop")

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    @contextlib.contextmanager
    def admin(self, dbname: str = "postgres") -> Iterator[psycopg.Connection]:
        deadline = time.monotonic() + 30
        while True:
            try:
                conn = psycopg.connect(host=str(self.socketdir), port=self.port, user="postgres", dbname=dbname,
                                       autocommit=True)
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        with conn:
            yield conn

    def create_database(self, name: str) -> Database:
        with self.admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}" OWNER {APP_ROLE}')
        with self.admin(name) as conn:
            conn.execute(f"ALTER SCHEMA public OWNER TO {APP_ROLE}")
        return Database(name=name, host="127.0.0.1", port=self.port, user=APP_ROLE, password=self.password,
                        url=f"postgresql+psycopg://{APP_ROLE}:{self.password}@127.0.0.1:{self.port}/{name}")

    def drop_database(self, name: str) -> None:
        with self.admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
