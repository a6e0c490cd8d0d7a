"""Engine creation and migrations. One code path for SQLite (default) and PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, text

MIGRATIONS = Path(__file__).parent / "migrations"


def normalise_url(url: str) -> str:
    """Accept plain postgres:// URLs and use the psycopg 3 driver for them."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def connect(url: str) -> Engine:
    url = normalise_url(url)
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # Room for shared mode's admission threads (8), the usage writer, the change feed and API reads.
    return create_engine(url, pool_pre_ping=True, pool_size=12, max_overflow=8)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # CLI and server write concurrently
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def advisory_lock(conn: Connection, name: str) -> None:
    """PostgreSQL: a transaction-level lock on `name`, shared by every process on the database.
    (SQLite needs none: its write lock covers the whole database.)"""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"), {"k": name})


def write_lock(conn: Connection) -> None:
    """SQLite: take the database's write lock now (a write that changes nothing), so that a
    transaction that reads before it writes cannot fail on a stale snapshot. PostgreSQL: nothing
    (its row locks and advisory locks do the work)."""
    if conn.dialect.name == "sqlite":
        conn.execute(text("UPDATE audit_state SET size = size WHERE zone = ''"))


IN_CHUNK = 128  # ids per IN list in statements run once per batch


def padded_chunks(values: list, size: int = IN_CHUNK) -> list[list]:
    """`values` in lists of exactly `size` (the last one filled up with its own last value), for an
    expanding IN parameter: one statement text whatever the batch's size. An IN list (or a
    multi-row insert) of each length is another statement for the driver and the database to
    prepare and cache: SQLite's statement cache kept ~200 KB per length seen, and the writer
    process grew by tens of MiB over a soak."""
    out = []
    for i in range(0, len(values), size):
        chunk = values[i : i + size]
        out.append(chunk + [chunk[-1]] * (size - len(chunk)))
    return out


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (idempotent)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def open_database(url: str) -> Engine:
    engine = connect(url)
    migrate(engine)
    return engine
