"""The change feed, as a running gateway reads it: the head, new rows, and consistent snapshots."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, func, select

from tokenport.store.schema import changes

Row = tuple[int, str, str]  # (id, kind, ref)


@contextmanager
def snapshot(engine: Engine) -> Iterator[Connection]:
    """A read-only connection on which every statement sees the same committed state."""
    conn = engine.connect()
    try:
        if engine.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
            conn.begin()
        else:  # SQLite (WAL): a deferred transaction's snapshot starts at its first read
            conn.exec_driver_sql("BEGIN")
        yield conn
    finally:
        conn.rollback()
        conn.close()


def head(conn: Connection) -> tuple[int, int]:
    """(highest id, row count). PostgreSQL hands out ids at insert, not commit, so a change can
    commit below an id already seen; the count gives that away."""
    row = conn.execute(select(func.coalesce(func.max(changes.c.id), 0), func.count())).one()
    return int(row[0]), int(row[1])


def rows_between(conn: Connection, low: int, high: int) -> list[Row]:
    """Rows with low < id <= high, in id order."""
    q = (
        select(changes.c.id, changes.c.kind, changes.c.ref)
        .where(changes.c.id > low, changes.c.id <= high)
        .order_by(changes.c.id)
    )
    return [(r.id, r.kind, r.ref) for r in conn.execute(q)]


class FeedStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def poll(self, after_id: int) -> tuple[tuple[int, int], list[Row]]:
        """The head and the rows above `after_id`, from one snapshot."""
        with snapshot(self.engine) as conn:
            h = head(conn)
            return h, rows_between(conn, after_id, h[0])

    def window(self, low: int, high: int) -> list[Row]:
        with snapshot(self.engine) as conn:
            return rows_between(conn, low, high)
