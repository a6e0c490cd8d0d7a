"""Repository for backends registered at run time: added and removed with an audit entry in their
zone and a change-feed row, so running gateways pick them up within a second."""

from __future__ import annotations

import json
import os
from dataclasses import fields, replace
from datetime import datetime

from sqlalchemy import Connection, Engine, Row, delete, insert, select
from sqlalchemy.exc import IntegrityError

from tokenport.config import BackendConfig, Waits, without_v1
from tokenport.store.audit import audit_action
from tokenport.store.schema import backends, changes


class BackendExists(Exception):
    pass


def _config(r: Row, base: Waits) -> BackendConfig:
    key = os.environ.get(r.api_key_env) if r.api_key_env else None
    own = json.loads(r.waits) if r.waits else None
    return BackendConfig(
        name=r.name,
        url=without_v1(r.url) or r.url,  # registered before `backends add` took the /v1 off
        zone=r.zone,
        models=tuple(r.models.split(",")),
        kind=r.kind,
        api_key=key or None,
        context=int(r.context),
        embeddings=tuple(e for e in r.embeddings.split(",") if e),
        weight=int(r.weight),
        max_inflight=r.max_inflight,
        waits=replace(base, **own) if own else None,
    )


def own_waits(waits: dict[str, float]) -> str | None:
    """The bounds a backend sets itself, as stored (Waits field -> seconds)."""
    known = {f.name for f in fields(Waits)}
    return json.dumps({k: float(v) for k, v in waits.items() if k in known}) if waits else None


class BackendStore:
    def __init__(self, engine: Engine, base_waits: Waits | None = None) -> None:
        self.engine = engine
        self.base_waits = base_waits or Waits()  # [upstream]: what a backend does not set itself

    def add(
        self, cfg: BackendConfig, api_key_env: str | None, at: datetime, waits: dict[str, float] | None = None
    ) -> None:
        row = {
            "name": cfg.name,
            "url": cfg.url,
            "zone": cfg.zone,
            "models": ",".join(cfg.models),
            "kind": cfg.kind,
            "weight": cfg.weight,
            "max_inflight": cfg.max_inflight,
            "context": cfg.context,
            "embeddings": ",".join(cfg.embeddings),
            "api_key_env": api_key_env,
            "created_at": at,
            "waits": own_waits(waits or {}),
        }
        refs = {k: row[k] for k in ("url", "zone", "models", "kind", "weight", "max_inflight")}
        try:
            with self.engine.begin() as conn:
                audit_action(conn, "backend.add", at, backend=cfg.name, **refs)
                conn.execute(insert(backends).values(**row))
                conn.execute(insert(changes).values(kind="backend", ref=cfg.name, at=at))
        except IntegrityError as exc:
            raise BackendExists(f"backend {cfg.name!r} already exists") from exc

    def remove(self, name: str, at: datetime) -> bool:
        with self.engine.begin() as conn:
            zone = conn.execute(select(backends.c.zone).where(backends.c.name == name)).scalar()
            if zone is None:
                return False
            audit_action(conn, "backend.remove", at, zone=zone, backend=name)
            conn.execute(delete(backends).where(backends.c.name == name))
            conn.execute(insert(changes).values(kind="backend", ref=name, at=at))
        return True

    def load(self, conn: Connection | None = None) -> list[BackendConfig]:
        q = select(backends).order_by(backends.c.name)
        if conn is not None:
            return [_config(r, self.base_waits) for r in conn.execute(q)]
        with self.engine.connect() as c:
            return [_config(r, self.base_waits) for r in c.execute(q)]
