"""How the operator reads the database: URL errors that show nothing of the URL, revisions, unreachable servers."""

from __future__ import annotations

import base64

import pytest

from alembic_operator.dbstate import (
    DatabaseError,
    database_key,
    decode_secret_value,
    parse_url,
    read_revision,
    sanitize,
)
from bed.postgres import Database
from harness import free_port

SECRET = "s3cr3t-Pa55"


@pytest.mark.parametrize(("raw", "says"), [
    (f"not a url {SECRET}", "not a valid SQLAlchemy URL"),
    (f"mssql+pymssql://u:{SECRET}@h/db", "mssql"),
    (f"postgresql+psycopg://u:{SECRET}@h:5432/", "names no database"),
    (f"nosuchdriver://u:{SECRET}@h/db", "unknown database driver"),
])
def test_bad_urls_are_explained_without_showing_them(raw: str, says: str) -> None:
    with pytest.raises(DatabaseError) as err:
        parse_url(raw, "shop-db", "url")
    assert err.value.reason == "InvalidDatabaseURL" and says in err.value.message
    assert SECRET not in err.value.message and "shop-db" in err.value.message
    assert "postgresql+psycopg://user:password@host:5432/dbname" in err.value.message


def test_missing_key_names_the_secret_and_the_field() -> None:
    with pytest.raises(DatabaseError) as err:
        decode_secret_value({"other": base64.b64encode(b"x").decode()}, "shop/shop-db", "url")
    assert err.value.reason == "SecretNotFound" and "spec.database.urlSecretRef.key" in err.value.message
    value = decode_secret_value({"url": base64.b64encode(b"postgresql://a/b").decode()}, "s", "url")
    assert value == "postgresql://a/b"


def test_the_database_key_ignores_credentials_and_driver() -> None:
    a = parse_url(f"postgresql+psycopg://app:{SECRET}@DB.example:5432/shop", "s", "url")
    b = parse_url("postgresql://other:pw@db.example/shop", "s", "url")
    assert a.key == b.key == database_key(a.url)
    assert a.key != parse_url("postgresql://app:pw@db.example/billing", "s", "url").key
    assert a.where == "DB.example:5432/shop"


def test_sanitize_scrubs_passwords_and_urls() -> None:
    url = parse_url(f"postgresql+psycopg://app:{SECRET}@h:5432/db", "s", "url").url
    text = (f"failed: postgresql+psycopg://app:{SECRET}@h:5432/db and {SECRET} and "
            "mysql://x:other@y/z and password=hunter2 ok")
    clean = sanitize(text, url)
    assert SECRET not in clean and "other@" not in clean and "hunter2" not in clean and clean.endswith("ok")


def test_reads_revision_version_table_and_tables(database: Database) -> None:
    target = parse_url(database.url, "s", "url")
    empty = read_revision(target)
    assert empty.ok and empty.revision is None and empty.versioned is False and empty.tables == 0
    database.query("CREATE TABLE customers (id int)")
    database.query("CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)")
    database.query("INSERT INTO alembic_version VALUES ('abc123')")
    obs = read_revision(target)
    assert (obs.revision, obs.versioned, obs.tables) == ("abc123", True, 1)


def test_unreachable_is_transient_and_bad_password_is_not(database: Database) -> None:
    down = read_revision(parse_url(f"postgresql+psycopg://app:{SECRET}@127.0.0.1:{free_port()}/x", "s", "url"))
    assert down.error_reason == "DatabaseUnreachable" and down.transient
    assert SECRET not in down.error_message and "127.0.0.1" in down.error_message
    wrong = database.url.replace(database.password, SECRET)
    denied = read_revision(parse_url(wrong, "s", "url"))
    assert denied.error_reason == "DatabaseAuthenticationFailed" and not denied.transient
    assert SECRET not in denied.error_message and database.password not in denied.error_message


def test_a_database_that_does_not_exist_is_a_humans_problem(database: Database) -> None:
    missing = database.url.rsplit("/", 1)[0] + "/no_such_db"
    obs = read_revision(parse_url(missing, "s", "url"))
    assert obs.error_reason == "DatabaseNotFound" and not obs.transient
    assert "'no_such_db' does not exist" in obs.error_message and "create it" in obs.error_message
    assert database.password not in obs.error_message
