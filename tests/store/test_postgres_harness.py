"""The test database harness works for every backend ``database_url`` offers."""

from __future__ import annotations

from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, insert, select


def test_database_url_round_trip(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        meta = MetaData()
        items = Table("items", meta, Column("id", Integer, primary_key=True), Column("name", String(50)))
        with engine.begin() as conn:
            assert not engine.dialect.has_table(conn, "items")  # the database is fresh
            meta.create_all(conn)
            conn.execute(insert(items), [{"name": "alpha"}, {"name": "beta"}, {"name": "größe ✓"}])
        with engine.connect() as conn:
            rows = conn.execute(select(items.c.name).order_by(items.c.id)).scalars().all()
        assert rows == ["alpha", "beta", "größe ✓"]
        if database_url.startswith("postgresql"):
            assert engine.dialect.driver == "psycopg"
    finally:
        engine.dispose()
