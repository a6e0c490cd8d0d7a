"""Audit entries: content-free facts, as canonical JSON (sorted keys, no spaces), one per request
and per administrative action. Never prompt or completion text: ids, hashes, counts, decisions."""

from __future__ import annotations

import hashlib
from datetime import datetime

import orjson

from tokenport.clock import utc_iso

# The usage record's fields an audit entry keeps (all content-free by construction).
REQUEST_FIELDS = (
    "request_id",
    "tenant_id",
    "key_id",
    "zone",
    "other_zone",
    "endpoint",
    "model",
    "backend",
    "stream",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "status",
    "error_code",
    "cost_nano_usd",
    "plan_units",
    "client_disconnected",
    "request_sha256",
    "response_sha256",
    "retention",
)
DEVICE_FIELDS = ("device_serial", "product_id", "device_units")


def canonical(entry: dict) -> bytes:
    return orjson.dumps(entry, option=orjson.OPT_SORT_KEYS)


def request_entry(record: dict) -> dict:
    """What the audit log says of one request, from its usage record."""
    entry = {"type": "request", **{k: record.get(k) for k in REQUEST_FIELDS}}
    entry["started_at"] = _iso(record["started_at"])
    entry["finished_at"] = _iso(record["finished_at"])
    if record.get("device_serial") is not None:  # a fleet's device: named in the log and receipt
        entry.update({k: record.get(k) for k in DEVICE_FIELDS})
    return entry


def admin_entry(action: str, at: datetime, **refs) -> dict:
    """An administrative action (`tenant.create`, `key.revoke`, ...) and the ids it touched."""
    values = {k: _iso(v) if isinstance(v, datetime) else v for k, v in refs.items()}
    return {"type": "admin", "action": action, "at": _iso(at), **values}


def _iso(value: object) -> str:
    return utc_iso(value) if isinstance(value, datetime) else str(value)


def energy_entry(window: dict, shares: list[dict]) -> dict:
    """A metered window and the digest of its per-request shares (ids and millijoules)."""
    digest = hashlib.sha256(canonical(sorted(shares, key=lambda s: s["request_id"]))).hexdigest()
    return {
        "type": "energy",
        **{k: _iso(v) if isinstance(v, datetime) else v for k, v in window.items()},
        "shares_sha256": digest,
    }
