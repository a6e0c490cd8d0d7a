"""Logging for the gateway's processes (the server and its writer process): one format, and at
`debug` every SQL statement with its parameters (content-free: no table holds request text)."""

from __future__ import annotations

import logging


def configure(level_name: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level_name.upper()), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    if level_name == "debug":
        logging.getLogger("sqlalchemy.engine").setLevel(logging.DEBUG)
