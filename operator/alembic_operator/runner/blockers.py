"""Who blocks a migration: the sessions holding the lock it waits for, named without their secrets.

A statement that waits for a lock makes every later query on that table queue behind it; the runner bounds the wait
(lock_timeout) and, while it waits, a `LockWatch` thread asks the database on a connection of its own who blocks the
migration's session (DialectSQL.blockers), so that a timeout can name them: pid, user, application, client address,
state, transaction age and the first characters of their query. A query's text may carry values (the simple query
protocol inlines them): `redact_query` keeps its shape and drops every literal and comment.

Standard library only (it runs in the app's image); the SQL is the dialect's (lock.DialectSQL).
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from .results import Blocker

QUERY_CHARS = 80  # how much of a blocker's query is shown, after redaction

# One token of SQL: what may carry a value (string, dollar-quoted or numeric literals, comments) or must be kept whole
# so that its content is not mistaken for one (quoted identifiers, $1 placeholders, names with digits).
_TOKEN = re.compile(
    r"""(?P<string>(?:[EeBbXxNn]|[Uu]&)?'(?:[^'\\]|\\.|'')*(?:'|$))"""
    r"""|(?P<dollar>\$(?P<tag>[A-Za-z_][A-Za-z0-9_]*|)\$.*?(?:\$(?P=tag)\$|$))"""
    r"""|(?P<comment>--[^\n]*|/\*.*?(?:\*/|$))"""
    r"""|(?P<ident>"(?:[^"]|"")*"?|\$\d+|[A-Za-z_][A-Za-z0-9_$]*)"""
    r"""|(?P<number>\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)""",
    re.DOTALL,
)
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+")


def redact_query(text: str | None, limit: int = QUERY_CHARS, double_quoted_strings: bool = False) -> str | None:
    """The query's shape without its values: literals become ?, comments go, whitespace collapses; cut to `limit`.

    Unterminated literals (pg_stat_activity cuts long queries) are redacted to the end. `double_quoted_strings`:
    "..." is a string (MySQL, MariaDB without ANSI_QUOTES), not an identifier."""
    if text is None:
        return None

    def replace(match: re.Match[str]) -> str:
        kind = match.lastgroup
        if kind in ("string", "dollar", "number") or (
                double_quoted_strings and kind == "ident" and match.group(0).startswith('"')):
            return "?"
        if kind == "comment":
            return " "
        return match.group(0)

    shape = _URL.sub("?", _TOKEN.sub(replace, text))
    shape = " ".join(shape.split())
    return shape if len(shape) <= limit else shape[: limit - 3].rstrip() + "..."


def from_row(row: Sequence[Any], double_quoted_strings: bool = False) -> Blocker:
    """A blocker from a DialectSQL.blockers (or holder) row, its query already redacted (see `redact_query`)."""
    pid, user, application, client, state, seconds, query, relation = (list(row) + [None] * 8)[:8]
    blocker: Blocker = {"pid": int(pid)}
    for key, value in (("user", user), ("application", application), ("client", client), ("state", state),
                       ("relation", relation)):
        if value not in (None, ""):
            blocker[key] = str(value)[:64]  # type: ignore[literal-required]
    if seconds is not None:
        blocker["transactionSeconds"] = round(float(seconds), 1)
    redacted = redact_query(query, double_quoted_strings=double_quoted_strings)
    if redacted:
        blocker["query"] = redacted
    return blocker


def describe_blocker(blocker: Blocker) -> str:
    """pid 4242 (user app, application 'nightly-report', client 10.0.0.7, idle in transaction, transaction open for
    42s, query 'SELECT count(*) FROM orders WHERE code <> ?')"""
    parts = []
    if blocker.get("user"):
        parts.append(f"user {blocker['user']}")
    if blocker.get("application"):
        parts.append(f"application {blocker['application']!r}")
    parts.append(f"client {blocker.get('client') or 'local'}")
    if blocker.get("state"):
        parts.append(str(blocker["state"]))
    seconds = blocker.get("transactionSeconds")
    if seconds is not None:
        parts.append(f"transaction open for {seconds:.0f}s")
    query = blocker.get("query")
    if query and query.startswith("<"):  # <insufficient privilege>: another role's session
        parts.append("query hidden (grant pg_read_all_stats to the migration's role to see it)")
    elif query:
        parts.append(f"query {query!r}")
    return f"pid {blocker['pid']} ({', '.join(parts)})"


def describe_blockers(blockers: Sequence[Blocker], most: int = 3) -> str:
    """The first `most` blockers, described; how many more there are."""
    text = "; ".join(describe_blocker(b) for b in blockers[:most])
    return text + (f"; and {len(blockers) - most} more session(s)" if len(blockers) > most else "")


def poll_interval(lock_timeout_ms: int | None) -> float:
    """Often enough to see a blocker a few times before the lock timeout gives up, rarely enough to cost nothing."""
    if not lock_timeout_ms:
        return 1.0
    return min(0.5, max(0.05, lock_timeout_ms / 1000 / 6))


class LockWatch:
    """Watches one backend (the migration's session) from a connection of its own and remembers who blocked it
    last; logs each wait (who, for which relation) to the Job's log."""

    def __init__(self, engine: Any, blockers_sql: str | Sequence[str], interval: float, log: Callable[[str], None],
                 doing: Callable[[], str] = lambda: "the migration", double_quoted_strings: bool = False) -> None:
        self.engine = engine
        # Several queries (MySQL: metadata locks, row locks, open transactions): the first that names someone.
        self.queries = [blockers_sql] if isinstance(blockers_sql, str) else list(blockers_sql)
        self.double_quoted_strings = double_quoted_strings
        self.interval = interval
        self.log = log
        self.doing = doing
        self.last: list[Blocker] = []  # who blocked the session the last time it waited
        self.last_seen = 0.0  # time.monotonic() of that observation
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, pid: int) -> None:
        self._thread = threading.Thread(target=self._run, args=(pid,), name="lock-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def recent(self, within: float) -> list[Blocker]:
        """Who blocked the session, if that was seen in the last `within` seconds."""
        return list(self.last) if self.last and time.monotonic() - self.last_seen <= within else []

    def _blockers(self, conn: Any, text: Callable[[str], Any], pid: int) -> list[Any] | None:
        """The rows of the first query that names someone; a query the server refuses (a privilege, a plugin or a
        table it lacks) is dropped for good. None: none is left to ask."""
        for query in list(self.queries):
            try:
                rows = conn.execute(text(query), {"pid": pid}).fetchall()
            except Exception as exc:
                self.queries.remove(query)
                with contextlib.suppress(Exception):
                    conn.rollback()
                if not self.queries:
                    self.log(f"stopped watching the migration's locks: {type(exc).__name__}: {str(exc)[:200]}")
                    return None
                continue
            if rows:
                return list(rows)
        return []

    def _run(self, pid: int) -> None:
        from sqlalchemy import text

        try:
            conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        except Exception as exc:
            self.log(f"cannot watch the migration's locks: {type(exc).__name__}")
            return
        waiting_since: float | None = None
        reported: tuple[int, ...] = ()
        last_log = 0.0
        try:
            while not self._stop.wait(self.interval):
                rows = self._blockers(conn, text, pid)
                if rows is None:
                    return
                now = time.monotonic()
                if not rows:
                    if waiting_since is not None:
                        self.log(f"{self.doing()} got its lock after waiting {now - waiting_since:.1f}s")
                    waiting_since, reported = None, ()
                    continue
                blockers = [from_row(row, self.double_quoted_strings) for row in rows]
                self.last, self.last_seen = blockers, now
                waiting_since = waiting_since if waiting_since is not None else now
                pids = tuple(b["pid"] for b in blockers)
                if pids != reported or now - last_log >= 10:
                    on = f" on {blockers[0]['relation']}" if blockers[0].get("relation") else ""
                    self.log(f"{self.doing()} waits for a lock{on} held by {describe_blockers(blockers)}")
                    reported, last_log = pids, now
        finally:
            with contextlib.suppress(Exception):
                conn.close()
