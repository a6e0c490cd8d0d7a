"""Repository for zone-scoped admin tokens (hashes only) and the audit entries of refusals."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.exc import IntegrityError

from tokenport.audit.entries import admin_entry, canonical
from tokenport.store.audit import append as audit_append
from tokenport.store.schema import admin_tokens
from tokenport.tenancy.admins import Admin


class AdminStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def insert(self, token_id: str, name: str, zones: list[str], token_hash: str, at: datetime) -> bool:
        """False if the name is taken. Audited in each of the token's zones."""
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    insert(admin_tokens).values(
                        id=token_id, name=name, zones=",".join(zones), token_hash=token_hash, created_at=at
                    )
                )
                for zone in zones:
                    entry = admin_entry("admin.create", at, admin_id=token_id, name=name, zones=zones)
                    audit_append(conn, zone, [canonical(entry)], at)
        except IntegrityError:
            return False
        return True

    def find(self, token_hash: str) -> Admin | None:
        q = select(admin_tokens).where(
            admin_tokens.c.token_hash == token_hash, admin_tokens.c.revoked_at.is_(None)
        )
        with self.engine.connect() as conn:
            row = conn.execute(q).first()
        return Admin(row.name, frozenset(row.zones.split(","))) if row else None

    def list(self) -> list[dict]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(admin_tokens).order_by(admin_tokens.c.created_at)).all()
        return [
            {
                "id": r.id,
                "name": r.name,
                "zones": r.zones.split(","),
                "created_at": r.created_at,
                "revoked_at": r.revoked_at,
            }
            for r in rows
        ]

    def revoke(self, name: str, at: datetime) -> bool:
        with self.engine.begin() as conn:
            row = conn.execute(select(admin_tokens).where(admin_tokens.c.name == name)).first()
            if row is None:
                return False
            if row.revoked_at is None:
                conn.execute(update(admin_tokens).where(admin_tokens.c.id == row.id).values(revoked_at=at))
                for zone in row.zones.split(","):
                    entry = admin_entry("admin.revoke", at, admin_id=row.id, name=name)
                    audit_append(conn, zone, [canonical(entry)], at)
        return True

    def audit_refusal(self, admin: Admin, zone: str, action: str, at: datetime) -> None:
        """An admin reached for another zone's objects: recorded in that zone's log."""
        with self.engine.begin() as conn:
            entry = admin_entry("admin.denied", at, admin=admin.name, attempted=action, zone=zone)
            audit_append(conn, zone, [canonical(entry)], at)
