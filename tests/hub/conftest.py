"""Every hub test that touches the database runs on both engines: SQLite and PostgreSQL.

PostgreSQL: the server on 127.0.0.1:5432, user `postgres`, trust auth or the test password (`scripts/test`
installs and starts one when nothing listens there). Each test session creates its own uniquely named database and drops it at the
end; each test gets a fresh schema in it (via the connection's `search_path`), so tests never see each
other's rows. When the server is unreachable the PostgreSQL tests FAIL under ``CI=true`` — CI must test both
engines — and are skipped with the reason elsewhere.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from psycopg import sql

PG_HOST = "127.0.0.1"
PG_PORT = int(os.environ.get("SHELFGATE_TEST_PGPORT", "5432"))
"""5432 everywhere; the override exists to check the unreachable-server path without stopping the server."""
PG_USER = "postgres"
TEST_PASSWORD = "shelfgate-test"  # noqa: S105 - a throwaway test-server password, by design known
"""What `scripts/test` sets for user postgres on a server it had to start (Debian asks for a password on
127.0.0.1); libpq reads it from PGPASSWORD, and a trust-auth server ignores it. URLs never hold it."""
os.environ.setdefault("PGPASSWORD", TEST_PASSWORD)

DbUrlFactory = Callable[[], str]


def _admin() -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(
        host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", autocommit=True, connect_timeout=5
    )


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A database of this test session's own on the local server, dropped afterwards."""
    try:
        admin = _admin()
    except psycopg.OperationalError as exc:
        reason = f"PostgreSQL is not reachable at {PG_HOST}:{PG_PORT} as {PG_USER!r}: {exc}".strip()
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} — CI runs the hub tests on both engines (scripts/test starts the server)")
        pytest.skip(f"{reason} — run scripts/test to install and start it")
    name = f"shelfgate_test_{os.getpid()}_{secrets.token_hex(4)}"
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield name
        finally:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _postgres_factory(database: str) -> DbUrlFactory:
    def new_url() -> str:
        schema = f"t_{secrets.token_hex(6)}"
        with psycopg.connect(
            host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=database, autocommit=True
        ) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        options = quote(f"-csearch_path={schema}", safe="")
        return f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{database}?options={options}"

    return new_url


def _sqlite_factory(folder: Path) -> DbUrlFactory:
    folder.mkdir(parents=True, exist_ok=True)
    counter = iter(range(1_000_000))

    def new_url() -> str:
        return f"sqlite:///{folder / f'hub{next(counter)}.sqlite3'}"

    return new_url


@pytest.fixture(params=["sqlite", "postgresql"])
def new_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> DbUrlFactory:
    """Makes URLs of fresh, empty hub databases on the engine this test run is for."""
    if request.param == "sqlite":
        return _sqlite_factory(tmp_path / "db")
    return _postgres_factory(request.getfixturevalue("postgres_database"))


@pytest.fixture
def db_url(new_db_url: DbUrlFactory) -> str:
    """One fresh hub database (SQLite file or PostgreSQL schema)."""
    return new_db_url()
