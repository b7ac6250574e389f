"""A real MariaDB server (Debian's package) on a loopback port, for tests and the demo.

    server = MariaDBServer(Path("/tmp/maria")); server.start()
    db = server.create_database("shop")      # a fresh database the application user may do anything in
    db.url                                   # mysql+pymysql://app:<password>@127.0.0.1:<port>/shop

Like ``bed.postgres``: the server listens on 127.0.0.1 only, plus a Unix socket in its own directory; the
administrator (``root``, unix_socket authentication) connects over that socket only, the application user with a
random password over TCP, the way a production database is reached. Everything lives under ``base`` (data, socket,
pid file, error log), no option file of the host is read (``--no-defaults``), and ``stop()`` leaves no process.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pymysql

from bed import database
from bed.postgres import free_port

MARIADBD = "/usr/sbin/mariadbd"
APP_USER = "app"


def mariadb_tool(tool: str) -> str:
    if tool == "mariadbd" and Path(MARIADBD).exists():
        return MARIADBD
    found = shutil.which(tool)
    if found:
        return found
    raise RuntimeError(f"{tool} not found: install Debian's mariadb-server and mariadb-client (make deps does)")


@dataclass(frozen=True)
class Database(database.Database):
    """A MariaDB database of the test server."""

    @contextlib.contextmanager
    def connect(self) -> Iterator[pymysql.connections.Connection]:  # type: ignore[type-arg]
        conn = pymysql.connect(host=self.host, port=self.port, user=self.user, password=self.password,
                               database=self.name, autocommit=True, connect_timeout=10)
        try:
            yield conn
        finally:
            conn.close()

    def query(self, sql: str, *params: object) -> list[tuple[object, ...]]:
        """Runs one statement (pymysql's ``%s`` placeholders) and returns its rows, or [] for a statement without."""
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute(sql, params or None)
            return list(cur.fetchall()) if cur.description else []


class MariaDBServer:
    def __init__(self, base: Path, port: int | None = None, password: str | None = None) -> None:
        self.base = base
        self.datadir = base / "data"
        self.rundir = base / "run"
        self.socket = self.rundir / "mariadb.sock"
        self.pidfile = self.rundir / "mariadb.pid"
        self.log = base / "mariadb.log"
        self.port = port or free_port()
        # A distinctive password, so leak tests can search for it in logs, Events and specs.
        self.password = password or f"pw-{secrets.token_hex(12)}"
        self._proc: subprocess.Popen[bytes] | None = None
        # mariadbd refuses to run as root without --user; the administrator is the OS user that runs the tests
        # (unix_socket authentication maps it to root, or to an account of its own name when not root).
        self._as_root = os.geteuid() == 0
        self.admin_user = "root" if self._as_root else getpass.getuser()

    def _user_args(self) -> list[str]:
        return ["--user=mysql"] if self._as_root else []

    def start(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self.rundir.mkdir(parents=True, exist_ok=True)
        if self._as_root:
            os.chmod(self.base, 0o755)
            shutil.chown(self.rundir, "mysql", "mysql")
        if not (self.datadir / "mysql").is_dir():
            self.datadir.mkdir(exist_ok=True)
            if self._as_root:
                shutil.chown(self.datadir, "mysql", "mysql")
            cmd = [mariadb_tool("mariadb-install-db"), "--no-defaults", f"--datadir={self.datadir}",
                   *self._user_args(), "--auth-root-authentication-method=socket", "--skip-test-db",
                   "--skip-name-resolve"]
            if not self._as_root:
                cmd.append(f"--auth-root-socket-user={self.admin_user}")
            # Its bootstrap server's temporary tables in the server's own directory, not in /tmp, where another
            # session's bootstrap (a pytest-xdist worker's) may run at the same moment.
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TMPDIR": str(self.rundir)})
            if proc.returncode != 0:
                raise RuntimeError(f"mariadb-install-db failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
        cmd = [mariadb_tool("mariadbd"), "--no-defaults", f"--datadir={self.datadir}", *self._user_args(),
               f"--socket={self.socket}", f"--pid-file={self.pidfile}", f"--log-error={self.log}",
               f"--port={self.port}", "--bind-address=127.0.0.1", "--skip-name-resolve", f"--tmpdir={self.rundir}",
               # small and fast: several servers share a 2-core machine, and the data is thrown away
               "--innodb-buffer-pool-size=32M", "--innodb-log-file-size=16M", "--innodb-flush-log-at-trx-commit=0",
               "--innodb-doublewrite=0", "--innodb-flush-method=nosync", "--sync-binlog=0", "--skip-log-bin",
               "--performance-schema=OFF", "--max-connections=200", "--character-set-server=utf8mb4",
               "--collation-server=utf8mb4_general_ci"]
        # Its own session: a Ctrl-C to pytest's process group does not kill it before the teardown stops it.
        self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, start_new_session=True)
        with self.admin() as conn, conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM mysql.user WHERE user = %s AND host = '%%'", (APP_USER,))
            verb = "ALTER" if cur.fetchone()[0] else "CREATE"  # type: ignore[index]
            cur.execute(f"{verb} USER '{APP_USER}'@'%%' IDENTIFIED BY %s", (self.password,))

    def _pid(self) -> int | None:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc.pid
        with contextlib.suppress(OSError, ValueError):
            return int(self.pidfile.read_text().strip())
        return None

    def stop(self) -> None:
        """Stops the server (a fast shutdown: the data is for tests) and waits until its process is gone."""
        pid = self._pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if self._proc is not None and self._proc.pid == pid:
            try:
                self._proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        else:  # started by another process (e.g. the demo): wait for the pid to go away
            deadline = time.monotonic() + 60
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self._proc = None

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    @contextlib.contextmanager
    def admin(self) -> Iterator[pymysql.connections.Connection]:  # type: ignore[type-arg]
        """The administrator's connection, over the Unix socket (the only way in for it)."""
        deadline = time.monotonic() + 60
        while True:
            try:
                conn = pymysql.connect(unix_socket=str(self.socket), user=self.admin_user, autocommit=True)
                break
            except pymysql.err.OperationalError:
                if self._proc is not None and self._proc.poll() is not None:
                    raise RuntimeError(f"mariadbd exited ({self._proc.returncode}): {self._log_tail()}") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"mariadbd did not accept connections in 60 s: {self._log_tail()}") from None
                time.sleep(0.2)
        try:
            yield conn
        finally:
            conn.close()

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-2000:]
        return "(no log)"

    def create_database(self, name: str) -> Database:
        with self.admin() as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
            cur.execute(f"CREATE DATABASE `{name}`")
            cur.execute(f"GRANT ALL PRIVILEGES ON `{name}`.* TO '{APP_USER}'@'%'")
        return Database(name=name, host="127.0.0.1", port=self.port, user=APP_USER, password=self.password,
                        url=f"mysql+pymysql://{APP_USER}:{self.password}@127.0.0.1:{self.port}/{name}")

    def drop_database(self, name: str) -> None:
        """Drop it even while sessions use it (PostgreSQL's DROP DATABASE ... WITH (FORCE)): a session a test left
        in a transaction (a pod killed mid-migration, its connection still relayed) would hold a metadata lock
        that DROP DATABASE waits on forever."""
        with self.admin() as conn, conn.cursor() as cur:
            cur.execute("SELECT id FROM information_schema.processlist WHERE db = %s AND id <> CONNECTION_ID()",
                        (name,))
            for (session,) in cur.fetchall():
                with contextlib.suppress(pymysql.err.OperationalError):  # it ended meanwhile
                    cur.execute(f"KILL CONNECTION {int(session)}")
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
