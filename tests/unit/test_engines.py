"""The database engine seam: the registry, self-registration, unknown schemes, and a second engine plugged in."""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest
from sqlalchemy.engine import URL, make_url

from alembic_operator import cli, dbstate, engines, jobtools, sqlrules
from alembic_operator.dbstate import DatabaseError, parse_url, read_revision
from alembic_operator.engines import postgresql
from alembic_operator.engines.base import observation, read_alembic_state
from alembic_operator.observation import DatabaseObservation
from alembic_operator.runner.lock import database_lock_key


@pytest.mark.parametrize("scheme", ["postgresql", "postgresql+psycopg", "postgresql+psycopg2"])
def test_postgresql_owns_its_schemes(scheme: str) -> None:
    engine = engines.for_url(make_url(f"{scheme}://u:pw@db.example/shop"))
    assert isinstance(engine, postgresql.PostgreSQL) and engines.REGISTRY.get("postgresql") is engine
    assert scheme in engines.supported_schemes()
    assert engine.lock_key("k") == database_lock_key("k")  # the runner's advisory lock, one implementation


def test_unknown_schemes_name_the_field_and_the_supported_ones() -> None:
    with pytest.raises(DatabaseError) as err:
        parse_url("mssql+pymssql://u:hidden-pw@h/db", "shop/shop-db", "url")
    message = err.value.message
    assert err.value.reason == "InvalidDatabaseURL" and "hidden-pw" not in message
    assert "spec.database.urlSecretRef" in message and "mssql" in message and "shop/shop-db" in message
    assert "postgresql, postgresql+psycopg, postgresql+psycopg2" in message
    with pytest.raises(jobtools.JobError) as job_err:
        jobtools.database_from_env({jobtools.URL_ENV: "mssql+pymssql://u:hidden-pw@h/db"})
    assert job_err.value.reason == "InvalidDatabaseURL" and "spec.database.urlSecretRef" in job_err.value.message
    with pytest.raises(engines.UnknownEngine):
        engines.for_backend("oracle")


def test_a_second_implementation_of_one_name_is_refused() -> None:
    with pytest.raises(ValueError, match="two implementations named 'postgresql'"):
        type("Other", (postgresql.PostgreSQL,), {"name": "postgresql"})


# --- a second engine, defined here, goes through the whole seam -----------------------------------------------------


@dataclass(frozen=True)
class FileDB:
    path: Path

    @property
    def where(self) -> str:
        return str(self.path)

    def describe(self) -> dict[str, Any]:
        return {"file": str(self.path)}


class FileSnapshot(engines.Snapshot):
    def __init__(self, db: FileDB) -> None:
        self.db, self.heads = db, heads(db)

    def dump(self, out: IO[bytes]) -> None:
        with open(self.db.path, "rb") as src:
            shutil.copyfileobj(src, out)


def heads(db: FileDB) -> list[str]:
    with contextlib.closing(sqlite3.connect(db.path)) as conn:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'alembic_version'").fetchone():
            return []
        return sorted(str(r[0]) for r in conn.execute("SELECT version_num FROM alembic_version"))


@dataclass
class EverythingIsDestructive:
    """The test engine's scanner: one destructive finding per chunk of SQL."""

    findings: list[sqlrules.Finding] = field(default_factory=list)

    def scan(self, sql: str, revision: str | None = None) -> list[sqlrules.Finding]:
        found = [sqlrules.Finding(rule="anything", severity="destructive", operation="anything", revision=revision,
                                  statement=sql[: sqlrules.STATEMENT_MAX], engine="test-sqlite")]
        self.findings += found
        return found

    def deployed(self) -> None:
        pass

    def at(self, catalog: sqlrules.Catalog) -> None:
        pass


class Scanning:
    """The test engine's scanner module (what `sqlscan` is to PostgreSQL): its rules, registered, and its scanner."""

    RULES: Mapping[str, sqlrules.Rule] = sqlrules.RULESETS.setdefault("test-sqlite", dict([sqlrules.rule(
        "anything", "destructive", "Any SQL may destroy data.", "Read it.")]))

    def scanner(self, catalog: sqlrules.Catalog | None = None) -> sqlrules.Scanner:
        return EverythingIsDestructive()

    def alters_columns(self, items: Sequence[tuple[str | None, str]]) -> bool:
        return False

    def read_catalog(self, connection: sqlrules.Connection,
                     items: Sequence[tuple[str | None, str]]) -> sqlrules.Catalog:
        return sqlrules.Catalog()


@pytest.fixture
def sqlite_engine() -> Iterator[type[engines.Engine[FileDB]]]:
    """SQLite as an engine: defining the class is all it takes to plug it in."""

    class SQLiteFiles(engines.Engine[FileDB]):
        name = "test-sqlite"
        backends = ("sqlite",)
        schemes = ("sqlite",)
        url_example = "sqlite:////path/to/file.db"
        default_port = 0

        def lock_key(self, database_key: str) -> int:
            return 7

        def read_revision(self, target: dbstate.DatabaseTarget) -> DatabaseObservation:
            return observation(*read_alembic_state(target.url, {}))

        def connect(self, url: URL) -> FileDB:
            return FileDB(Path(url.database or ""))

        def snapshot(self, db: FileDB) -> contextlib.AbstractContextManager[engines.Snapshot]:
            return contextlib.nullcontext(FileSnapshot(db))

        def advisory_lock(self, db: FileDB, key: int | None, timeout: float) -> contextlib.AbstractContextManager[None]:
            return contextlib.nullcontext()  # one file, one writer: SQLite locks it itself

        def restore(self, db: FileDB, path: Path) -> list[str]:
            shutil.copyfile(path, db.path)
            return []

        def heads(self, db: FileDB) -> list[str]:
            return heads(db)

        def read_catalog(self, db: FileDB, items: Sequence[tuple[str | None, str]]) -> sqlrules.Catalog | None:
            return None  # nothing to read: every type change is classified from the plan alone

        def scanning(self) -> sqlrules.ScannerModule:
            return Scanning()

    try:
        yield SQLiteFiles
    finally:
        engines.REGISTRY.remove(SQLiteFiles.name)


def run_job(tmp_path: Path, url: str | None, *argv: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    if url:
        monkeypatch.setenv(jobtools.URL_ENV, url)
    result_file = tmp_path / "result.json"
    cli.main(["job", *argv, "--result-file", str(result_file)])
    result: dict[str, Any] = json.loads(result_file.read_text())
    return result


def test_a_registered_engine_serves_the_operator_and_the_jobs(
    sqlite_engine: type[engines.Engine[FileDB]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "app.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)")
        conn.execute("CREATE TABLE orders (id int)")
        conn.execute("INSERT INTO alembic_version VALUES ('a1')")
        conn.commit()
    url = f"sqlite:///{path}"
    assert "sqlite" in engines.supported_schemes()

    # the operator: the URL is accepted, the key and the revision come from the engine
    target = parse_url(url, "s", "url")
    assert isinstance(target.engine, sqlite_engine) and target.key == dbstate.database_key(target.url)
    obs = read_revision(target)
    assert (obs.revision, obs.versioned, obs.tables) == ("a1", True, 1)

    # the Jobs: current, backup into the volume store, restore from it
    assert run_job(tmp_path, url, "current", monkeypatch=monkeypatch) == {"ok": True, "current": "a1"}
    backups = tmp_path / "backups"
    backup = run_job(tmp_path, url, "backup", "--store", "volume", "--location", str(backups), "--prefix", "app",
                     "--retain", "1",
                     monkeypatch=monkeypatch)
    assert backup["ok"] and backup["revision"] == "a1" and backup["file"].endswith("-a1.dump")
    assert Path(backup["file"]).read_bytes() == path.read_bytes()
    assert json.loads(Path(backup["file"] + ".json").read_text())["database"] == {"file": str(path)}
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'b2'")
        conn.commit()
    restored = run_job(tmp_path, url, "restore", "--store", "volume", "--dump", backup["file"], "--sha256",
                       backup["sha256"],
                       monkeypatch=monkeypatch)
    assert restored == {"ok": True, "revision": "a1", "dropped": []}

    # the scan: the plan's dialect picks the engine's scanner
    plan = tmp_path / "plan"
    plan.mkdir()
    (plan / "001.sql").write_text("SELECT 1;\n")
    (plan / "plan.json").write_text(json.dumps({"dialect": "sqlite", "current": None, "target": "x",
                                                "revisions": [{"revision": "x", "file": "001.sql"}]}))
    scan = run_job(tmp_path, None, "scan", "--plan-dir", str(plan), monkeypatch=monkeypatch)
    assert scan["ok"] and scan["destructive"] == ["anything (revision x)"], scan
    capfd.readouterr()


def test_without_the_engine_sqlite_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DatabaseError, match="does not support sqlite databases"):
        parse_url(f"sqlite:///{tmp_path}/x.db", "s", "url")


def test_parse_toc() -> None:
    listing = """;
; Selected TOC Entries:
;
5; 2615 2200 SCHEMA - public app
6; 2615 16410 SCHEMA - s2 app
849; 1247 16401 TYPE public mood app
220; 1255 16409 FUNCTION public f(integer, text) app
216; 1259 16387 TABLE public orders app
215; 1259 16386 SEQUENCE public orders_id_seq app
3374; 0 0 SEQUENCE OWNED BY public orders_id_seq app
218; 1259 16405 VIEW public v app
3365; 0 16387 TABLE DATA public orders app
3220; 2606 16414 FK CONSTRAINT s2 t t_x_fkey app
"""
    toc = postgresql.parse_toc(listing)
    assert toc.schemas == {"public", "s2"}
    assert toc.relations == {("public", "orders"), ("public", "orders_id_seq"), ("public", "v")}
    assert toc.types == {("public", "mood")}
    assert toc.functions == {("public", "f(integer, text)")}
    assert toc.foreign_keys == {("s2", "t t_x_fkey")}


def test_every_engine_implements_the_whole_interface(sqlite_engine: type[engines.Engine[FileDB]]) -> None:
    """An engine registers when its class is defined, before Python could refuse an abstract one: checked here."""
    assert {engine.name for engine in engines.REGISTRY} >= {"postgresql", "mysql", "test-sqlite"}
    for engine in engines.REGISTRY:
        assert not type(engine).__abstractmethods__, (engine.name, sorted(type(engine).__abstractmethods__))
