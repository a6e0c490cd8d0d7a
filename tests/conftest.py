"""Shared pytest fixtures (tests/ is on sys.path, so helpers import as ``support.*``).

Databases: ``database_url`` runs a test once against SQLite and once against a
throwaway PostgreSQL server (``postgres_server``, started once per session; see
tests/support/postgres.py and TOKENPORT_TEST_PG_URL).  Select or skip the
PostgreSQL variants with ``-m postgres`` / ``-m "not postgres"``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from uuid import uuid4

import pytest
from support.postgres import PgServer, PostgresUnavailable, start_postgres


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgServer]:
    try:
        server = start_postgres(tmp_path_factory.mktemp("postgres"))
    except PostgresUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI requires PostgreSQL: {exc}")
        pytest.skip(str(exc))
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """URL of a fresh, empty database (SQLAlchemy URL string), one per test."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/t.db"
    server: PgServer = request.getfixturevalue("postgres_server")
    return server.create_database(f"t_{uuid4().hex[:12]}")
