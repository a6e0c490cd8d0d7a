"""Storage adapters: SQLAlchemy Core tables, migrations and repositories (SQLite or PostgreSQL)."""
