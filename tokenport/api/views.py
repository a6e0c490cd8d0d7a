"""JSON views of admin objects, shared by the admin API and the CLI's --json output."""

from __future__ import annotations

from datetime import datetime

from tokenport.billing.prices import Price
from tokenport.billing.service import Balance, LotBalance
from tokenport.clock import utc_iso
from tokenport.store.tenants import KeyInfo, Tenant


def _iso(dt: datetime | None) -> str | None:
    return utc_iso(dt) if dt else None


def _usd(nano: int | None) -> str | None:
    from tokenport.money import nano_to_usd

    return nano_to_usd(nano) if nano is not None else None


def tenant_view(t: Tenant) -> dict:
    return {
        "id": t.id,
        "name": t.name,
        "zone": t.zone,
        "created_at": _iso(t.created_at),
        "retention_ttl_s": t.retention_ttl_s,
    }


def key_view(k: KeyInfo, secret: str | None = None) -> dict:
    view = {
        "id": k.id,
        "tenant": k.tenant,
        "zone": k.zone,
        "label": k.label,
        "prefix": k.prefix,
        "rpm_limit": k.rpm_limit,
        "tpm_limit": k.tpm_limit,
        "budget_usd": _usd(k.budget_nano_usd),
        "budget_period": k.budget_period,
        "created_at": _iso(k.created_at),
        "revoked_at": _iso(k.revoked_at),
        "revoked": k.revoked_at is not None,
    }
    if secret is not None:
        view["key"] = secret  # only in the answer to creation: it is not stored
    return view


def usage_view(row: dict) -> dict:
    return {k: (_iso(v) if isinstance(v, datetime) else v) for k, v in row.items() if k != "tenant_id"}


def price_view(p: Price) -> dict:
    from tokenport.money import price_to_usd_per_m

    return {
        "model": p.model,
        "effective_from": _iso(p.effective_from),
        "free": p.free,
        "usd_per_million": {
            "input": price_to_usd_per_m(p.input),
            "cached": price_to_usd_per_m(p.cached),
            "output": price_to_usd_per_m(p.output),
            "reasoning": price_to_usd_per_m(p.reasoning) if p.reasoning is not None else None,
        },
    }


def lot_view(lot: LotBalance, remaining: int | None = None, expired: bool | None = None) -> dict:
    from tokenport.money import nano_to_usd

    view = {
        "id": lot.id,
        "promo": lot.promo,
        "amount_usd": nano_to_usd(lot.amount),
        "amount_nano_usd": lot.amount,
        "created_at": _iso(lot.created_at),
        "expires_at": _iso(lot.expires_at),
    }
    if remaining is not None:
        view |= {"remaining_usd": nano_to_usd(remaining), "remaining_nano_usd": remaining, "expired": expired}
    return view


def balance_view(b: Balance) -> dict:
    from tokenport.money import nano_to_usd

    return {
        "tenant": b.tenant,
        "available_usd": nano_to_usd(b.available),
        "available_nano_usd": b.available,
        "lots": [lot_view(i.lot, i.remaining, i.expired) for i in b.lots],
    }
