"""Zones, tenants, retention, admin tokens, API keys and usage."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from tokenport.cli.common import (
    _print,
    _service,
    _settings,
    _vault,
    parse_duration,
)


def cmd_zones_create(args: argparse.Namespace) -> int:
    svc, _ = _service(args)
    name = svc.create_zone(args.name)
    _print({"name": name}, args.json, [f"created zone {name}"])
    return 0


def cmd_zones_list(args: argparse.Namespace) -> int:
    from tokenport.clock import utc_iso

    svc, _ = _service(args)
    items = [{"name": n, "created_at": utc_iso(at)} for n, at in svc.list_zones()]
    _print(items, args.json, [f"{z['name']:24} {z['created_at']}" for z in items])
    return 0


def cmd_tenants_create(args: argparse.Namespace) -> int:
    from tokenport.api.views import tenant_view

    svc, _ = _service(args)
    t = svc.create_tenant(args.name, args.zone)
    _print(tenant_view(t), args.json, [f"created tenant {t.name} ({t.id}) in zone {t.zone}"])
    return 0


def cmd_tenants_list(args: argparse.Namespace) -> int:
    from tokenport.api.views import tenant_view

    svc, _ = _service(args)
    items = [tenant_view(t) for t in svc.list_tenants()]
    _print(items, args.json, [f"{t['name']:24} {t['zone']:16} {t['id']}  {t['created_at']}" for t in items])
    return 0


def cmd_tenants_retention(args: argparse.Namespace) -> int:
    from tokenport.api.views import tenant_view

    svc, _ = _service(args)
    t = svc.set_retention(args.name, None if args.off else args.ttl)
    state = f"retains bodies for {t.retention_ttl_s} s, encrypted" if t.retention_ttl_s else "retains nothing"
    _print(tenant_view(t), args.json, [f"tenant {t.name} {state}"])
    return 0


def cmd_tenants_purge(args: argparse.Namespace) -> int:
    from pathlib import Path

    svc, _ = _service(args)
    tenant = svc.tenant(args.name)
    receipt = _vault(args).purge_tenant(tenant)
    if args.out:
        Path(args.out).write_text(json.dumps(receipt, indent=2))
    lines = [
        f"purged {receipt['records_deleted']} retained records of {tenant.name} (zone {tenant.zone})",
        f"signed deletion receipt (audit index {receipt['audit_index']})"
        + (f" written to {args.out}" if args.out else ""),
    ]
    _print(receipt, args.json, lines)
    return 0


def cmd_admins_create(args: argparse.Namespace) -> int:
    from tokenport.clock import SystemClock
    from tokenport.store.admins import AdminStore
    from tokenport.tenancy.admins import new_admin_token
    from tokenport.tenancy.keys import NAME_RE, new_id
    from tokenport.tenancy.service import Conflict, InvalidInput

    svc, engine = _service(args)
    zones = sorted({z.strip() for z in args.zones.split(",") if z.strip()})
    if not NAME_RE.fullmatch(args.name):
        raise InvalidInput("admin name must be 1-128 characters of letters, digits, '.', '_' or '-'")
    missing = [z for z in zones if not svc.store.zone_exists(z)]
    if not zones or missing:
        raise InvalidInput(
            f"--zones must name existing zones (unknown: {', '.join(missing) or 'none given'})"
        )
    token, token_hash = new_admin_token()
    if not AdminStore(engine).insert(new_id("adm"), args.name, zones, token_hash, SystemClock().now()):
        raise Conflict(f"admin {args.name!r} already exists")
    view = {"name": args.name, "zones": zones, "token": token}
    _print(
        view,
        args.json,
        [f"created admin {args.name} for zones {', '.join(zones)}", "token (shown once):", token],
    )
    return 0


def cmd_admins_list(args: argparse.Namespace) -> int:
    from tokenport.clock import utc_iso
    from tokenport.store.admins import AdminStore

    _, engine = _service(args)
    items = [
        {
            **a,
            "created_at": utc_iso(a["created_at"]),
            "revoked_at": a["revoked_at"] and utc_iso(a["revoked_at"]),
        }
        for a in AdminStore(engine).list()
    ]
    lines = [
        f"{a['name']:24} {','.join(a['zones']):24} {'revoked' if a['revoked_at'] else 'active'}"
        for a in items
    ]
    _print(items, args.json, lines)
    return 0


def cmd_admins_revoke(args: argparse.Namespace) -> int:
    from tokenport.clock import SystemClock
    from tokenport.store.admins import AdminStore
    from tokenport.tenancy.service import NotFound

    _, engine = _service(args)
    if not AdminStore(engine).revoke(args.name, SystemClock().now()):
        raise NotFound(f"no admin named {args.name!r}")
    print(f"revoked admin {args.name}")
    return 0


def cmd_keys_create(args: argparse.Namespace) -> int:
    from tokenport.api.views import key_view

    limits = (args.label, args.rpm, args.tpm, args.budget_usd, args.budget_period)
    if args.fleet:  # a fleet key: one of the tenant's fleets
        from tokenport.cli.fleets import _fleets
        from tokenport.tenancy.service import InvalidInput

        fleets = _fleets(args)
        if fleets.fleet(args.fleet).tenant_id != fleets.tenancy.tenant(args.tenant).id:
            raise InvalidInput(f"fleet {args.fleet!r} is not tenant {args.tenant!r}'s")
        info, secret = fleets.create_fleet_key(args.fleet, *limits)
    else:
        svc, _ = _service(args)
        info, secret = svc.create_key(args.tenant, *limits)
    view = key_view(info, secret) | ({"fleet": args.fleet} if args.fleet else {})
    _print(
        view,
        args.json,
        [
            f"created {'fleet ' if args.fleet else ''}key {info.id} for tenant {info.tenant} "
            f"(zone {info.zone})",
            "secret (shown once, store it now):",
            secret,
        ],
    )
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    svc, _ = _service(args)
    svc.revoke_key(args.key_id)
    print(f"revoked {args.key_id}")
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    from tokenport.api.views import key_view

    svc, _ = _service(args)
    items = [key_view(k) for k in svc.list_keys(args.tenant)]
    _print(
        items,
        args.json,
        [
            f"{k['id']:22} {k['prefix']}…  {'revoked' if k['revoked'] else 'active':8} {k['label'] or ''}"
            for k in items
        ],
    )
    return 0


def cmd_usage(args: argparse.Namespace) -> int:
    from tokenport.api.admin import parse_since
    from tokenport.api.views import usage_view
    from tokenport.energy.request_figures import RequestFigures
    from tokenport.energy.service import EnergyService
    from tokenport.store.energy import EnergyStore
    from tokenport.store.usage import UsageStore

    svc, engine = _service(args)
    if args.tenant:
        svc.tenant(args.tenant)
    since = parse_since(args.since)
    store = UsageStore(engine)
    raw = store.query(args.tenant, since, limit=args.limit)
    energy = RequestFigures(EnergyService(EnergyStore(engine), _settings(args).energy)).request_figures(raw)
    rows = [{**usage_view(r), "energy": energy.get(r["request_id"])} for r in raw]
    totals = store.totals(args.tenant, since)
    lines = [
        f"{r['started_at']}  {r['request_id']}  {r['tenant']:12} "
        f"{r['model'] or '(rejected)':24} {r['status']} "
        f"in={r['prompt_tokens']} cached={r['cached_tokens']} out={r['completion_tokens']} "
        f"{r['finish_reason'] or '-'}{' disconnected' if r['client_disconnected'] else ''}"
        for r in rows
    ]
    lines.append(
        f"total: {totals['requests']} requests, {totals['prompt_tokens']} prompt "
        f"({totals['cached_tokens']} cached), {totals['completion_tokens']} completion tokens"
    )
    _print({"data": rows, "totals": totals}, args.json, lines)
    return 0


def _register_zones(sub: Any, command: Callable[..., argparse.ArgumentParser]) -> None:
    zones = sub.add_parser("zones", help="data zones").add_subparsers(dest="sub", required=True)
    c = command(
        zones,
        "create",
        cmd_zones_create,
        "create a zone (immutable; tenants, keys and backends live in one)",
        creates=True,
    )
    c.add_argument("name")
    c.add_argument("--json", action="store_true")
    c = command(zones, "list", cmd_zones_list, "list zones")
    c.add_argument("--json", action="store_true")


def _register_tenants(sub: Any, command: Callable[..., argparse.ArgumentParser]) -> None:
    tenants = sub.add_parser("tenants", help="manage tenants").add_subparsers(dest="sub", required=True)
    c = command(tenants, "create", cmd_tenants_create, "create a tenant", creates=True)
    c.add_argument("name")
    c.add_argument("--zone", help="zone (default: the configured default zone); immutable")
    c.add_argument("--json", action="store_true")
    c = command(tenants, "list", cmd_tenants_list, "list tenants")
    c.add_argument("--json", action="store_true")
    c = command(tenants, "retention", cmd_tenants_retention, "opt a tenant in to encrypted retention, or out")
    c.add_argument("name")
    mode = c.add_mutually_exclusive_group(required=True)
    mode.add_argument("--ttl", type=parse_duration, help="keep bodies this long (3600, 15m, 24h, 7d)")
    mode.add_argument("--off", action="store_true", help="zero retention (the default)")
    c.add_argument("--json", action="store_true")
    c = command(
        tenants, "purge", cmd_tenants_purge, "delete all retained data of a tenant; signed deletion receipt"
    )
    c.add_argument("name")
    c.add_argument("--out", help="also write the deletion receipt to this file")
    c.add_argument("--json", action="store_true")


def _register_admins(sub: Any, command: Callable[..., argparse.ArgumentParser]) -> None:
    admins = sub.add_parser("admins", help="zone-scoped admin tokens").add_subparsers(
        dest="sub", required=True
    )
    c = command(
        admins, "create", cmd_admins_create, "an admin API token for some zones (shown once)", creates=True
    )
    c.add_argument("name")
    c.add_argument("--zones", required=True, help="comma-separated zones the token may act on")
    c.add_argument("--json", action="store_true")
    c = command(admins, "list", cmd_admins_list, "list admin tokens")
    c.add_argument("--json", action="store_true")
    c = command(admins, "revoke", cmd_admins_revoke, "revoke an admin token")
    c.add_argument("name")


def _register_keys(sub: Any, command: Callable[..., argparse.ArgumentParser]) -> None:
    keys = sub.add_parser("keys", help="manage API keys").add_subparsers(dest="sub", required=True)
    c = command(keys, "create", cmd_keys_create, "create an API key (secret shown once)")
    c.add_argument("--tenant", required=True)
    c.add_argument("--label")
    c.add_argument("--rpm", type=int, help="requests per minute limit for this key")
    c.add_argument("--tpm", type=int, help="tokens per minute limit for this key (prompt + completion)")
    c.add_argument("--budget-usd", help="most this key may spend per budget period")
    c.add_argument("--budget-period", choices=("day", "month"), help="the budget's period (UTC)")
    c.add_argument("--fleet", help="a fleet key (tpf_...): it may name that fleet's devices per request")
    c.add_argument("--json", action="store_true")
    c = command(keys, "revoke", cmd_keys_revoke, "revoke an API key")
    c.add_argument("key_id")
    c = command(keys, "list", cmd_keys_list, "list a tenant's keys")
    c.add_argument("--tenant", required=True)
    c.add_argument("--json", action="store_true")


def _register_usage(sub: Any, command: Callable[..., argparse.ArgumentParser]) -> None:
    c = command(sub, "usage", cmd_usage, "per-request usage records and totals")
    c.add_argument("--tenant")
    c.add_argument("--since", help="ISO 8601 timestamp with zone, e.g. 2026-01-01T00:00:00Z")
    c.add_argument("--limit", type=int, default=1000)
    c.add_argument("--json", action="store_true")


def register(sub: Any, command: Callable[..., argparse.ArgumentParser]) -> None:
    _register_zones(sub, command)
    _register_tenants(sub, command)
    _register_admins(sub, command)
    _register_keys(sub, command)
    _register_usage(sub, command)
