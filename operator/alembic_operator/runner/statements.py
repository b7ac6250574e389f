"""What a revision ran: the statements that completed on the migration's connection since the revision started.

On a database whose DDL is not transactional (MySQL, MariaDB) every CREATE/ALTER/DROP commits, so a revision that
fails midway leaves its earlier statements in the database while the version table still names the revision before
it. The runner listens to the migration's own connection (SQLAlchemy's ``after_cursor_execute``: only statements
that completed), starts a fresh list at each revision, and on a failure reports what of the failed revision
committed: everything up to its last DDL statement (which committed it and all before it; the data changes after
it were rolled back with the revision's transaction). Literals are removed (``blockers.redact_query``): a result is
status, and status holds no values.

Standard library and sqlalchemy only, Python 3.9+.
"""

from __future__ import annotations

import re
from typing import Any

from .blockers import redact_query

STATEMENTS_KEPT = 6  # at most this many are reported (statementCount counts them all)
STATEMENT_CHARS = 160
# Statements that commit implicitly on MySQL/MariaDB (the ones a migration runs).
_DDL = re.compile(r"^\s*(?:CREATE|ALTER|DROP|RENAME|TRUNCATE)\b", re.IGNORECASE)
_READ_ONLY = re.compile(r"^\s*(?:SELECT|SHOW|SET|DESCRIBE|DESC|EXPLAIN|USE)\b", re.IGNORECASE)


class StatementLog:
    """The statements of the revision that is running (`start` at each revision)."""

    def __init__(self) -> None:
        self.revision: str | None = None
        self.statements: list[str] = []
        self._version_table = "alembic_version"
        self._attached: set[int] = set()
        self._double_quoted_strings = False

    def attach(self, connection: Any, version_table: str | None = None) -> None:
        """Listen to the migration's connection (once per connection; env.py may run migrations more than once)."""
        from sqlalchemy import event

        self._version_table = version_table or self._version_table
        dialect = getattr(getattr(connection, "dialect", None), "name", "")
        self._double_quoted_strings = dialect in ("mysql", "mariadb")  # "..." is a string there
        if id(connection) in self._attached:
            return
        self._attached.add(id(connection))
        event.listen(connection, "after_cursor_execute", self._completed)

    def start(self, revision: str) -> None:
        self.revision, self.statements = revision, []

    def _completed(self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any,
                   executemany: bool) -> None:
        if self.revision is None or _READ_ONLY.match(statement) or self._version_table in statement:
            return  # reads, session settings and Alembic's own bookkeeping change nothing of the revision's
        self.statements.append(statement)

    def committed(self) -> list[str]:
        """The running revision's statements that committed on a non-transactional-DDL database, redacted: up to
        and including its last DDL statement; [] when it ran no DDL (its transaction was rolled back)."""
        last = max((i for i, s in enumerate(self.statements) if _DDL.match(s)), default=-1)
        return [redact_query(s, STATEMENT_CHARS, self._double_quoted_strings) or ""
                for s in self.statements[: last + 1]]
