"""JSON views of admin objects, shared by the admin API and the CLI's --json output."""

from __future__ import annotations

from datetime import datetime

from tokenport.clock import utc_iso
from tokenport.store.tenants import KeyInfo, Tenant


def _iso(dt: datetime | None) -> str | None:
    return utc_iso(dt) if dt else None


def tenant_view(t: Tenant) -> dict:
    return {"id": t.id, "name": t.name, "zone": t.zone, "created_at": _iso(t.created_at)}


def key_view(k: KeyInfo, secret: str | None = None) -> dict:
    view = {
        "id": k.id,
        "tenant": k.tenant,
        "zone": k.zone,
        "label": k.label,
        "prefix": k.prefix,
        "rpm_limit": k.rpm_limit,
        "created_at": _iso(k.created_at),
        "revoked_at": _iso(k.revoked_at),
        "revoked": k.revoked_at is not None,
    }
    if secret is not None:
        view["key"] = secret  # only in the answer to creation: it is not stored
    return view


def usage_view(row: dict) -> dict:
    return {k: (_iso(v) if isinstance(v, datetime) else v) for k, v in row.items() if k != "tenant_id"}
