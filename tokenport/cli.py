"""The `tokenport` command. Works with or without a running server: both share the database,
and a running server sees changes within a second."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys

from tokenport.config import ConfigError, Settings, load_settings


def _settings(args) -> Settings:
    return load_settings(getattr(args, "config", None))


def _service(args):
    from tokenport.store.db import open_database
    from tokenport.store.tenants import TenantStore
    from tokenport.tenancy.service import TenancyService

    settings = _settings(args)
    engine = open_database(settings.database_url)
    return TenancyService(TenantStore(engine), settings.default_zone), engine


def _print(obj, as_json: bool, lines) -> None:
    if as_json:
        print(json.dumps(obj, indent=2))
    else:
        for line in lines:
            print(line)


def cmd_serve(args) -> int:
    import uvicorn

    from tokenport.api.app import TokenportApp
    from tokenport.runtime import Runtime

    settings = _settings(args)
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    if overrides:
        settings = Settings(**{**settings.__dict__, **overrides})
    level = getattr(logging, settings.log_level.upper())
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    if settings.log_level == "debug":  # every SQL statement, its parameters and result rows
        logging.getLogger("sqlalchemy.engine").setLevel(logging.DEBUG)
    say = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    runtime = Runtime(settings, say=say)
    _first_run_demo(runtime, settings)
    say(f"tokenport serving on http://{settings.host}:{settings.port} (data: {settings.home})")
    config = uvicorn.Config(
        TokenportApp(runtime),
        host=settings.host,
        port=settings.port,
        lifespan="on",
        access_log=False,
        log_level="debug" if settings.log_level == "debug" else "warning",
        loop=_loop(),
        http="httptools",
        timeout_graceful_shutdown=30,
        proxy_headers=False,
    )
    # uvicorn re-raises SIGTERM/SIGINT once it has shut down gracefully; that is a clean exit.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(0))
    uvicorn.Server(config).run()
    return 0


def _loop() -> str:
    try:
        import uvloop  # noqa: F401

        return "uvloop"
    except ImportError:
        return "asyncio"


def _first_run_demo(runtime, settings: Settings) -> None:
    """On an empty database: a demo tenant and key, and ready-to-paste examples."""
    if runtime.tenant_store.count_tenants():
        return
    from tokenport.billing.service import BillingService
    from tokenport.store.billing import BillingStore

    runtime.tenancy.create_tenant("demo")
    info, secret = runtime.tenancy.create_key("demo", "created on first run")
    billing = BillingService(BillingStore(runtime.db), runtime.tenancy, runtime.clock)
    model = (
        settings.engine.model_id
        if settings.engine.enabled
        else (settings.backends[0].models[0] if settings.backends else "MODEL")
    )
    priced = ""
    if settings.engine.enabled and billing.price_book().at(model, runtime.clock.now()) is None:
        billing.set_price(model, "0.02", "0.04")
        priced = f"Priced {model} at $0.02 / $0.04 per million input / output tokens (tokenport prices).\n"
    billing.grant("demo", "1", promo=True)
    base = f"http://{settings.host}:{settings.port}"
    print(
        f"""
First run: created tenant 'demo' with $1 of promotional credit, and API key {info.id}
(shown once, keep it):

    {secret}

{priced}
Try it (once the model is loaded):

curl {base}/v1/chat/completions \\
  -H "Authorization: Bearer {secret}" -H "Content-Type: application/json" \\
  -d '{{"model": "{model}", "messages": [{{"role": "user", "content": "Say hello"}}], "max_tokens": 32}}'

pip install openai && python - <<'PY'
from openai import OpenAI
client = OpenAI(base_url="{base}/v1", api_key="{secret}")
reply = client.chat.completions.create(model="{model}", max_tokens=32,
    messages=[{{"role": "user", "content": "Say hello"}}])
print(reply.choices[0].message.content, reply.usage)
PY
""",
        file=sys.stderr,
        flush=True,
    )


def _audit(args):
    from tokenport.audit.service import AuditService
    from tokenport.store.audit import AuditStore

    settings = _settings(args)
    _, engine = _service(args)
    return AuditService(AuditStore(engine), settings.keys_dir)


def cmd_audit_sign(args) -> int:
    heads = _audit(args).sign_heads()
    items = [h.__dict__ for h in heads]
    _print(
        items,
        args.json,
        [f"signed {h.zone}: size {h.size}, root {h.root}" for h in heads] or ["nothing new to sign"],
    )
    return 0


def cmd_audit_verify(args) -> int:
    report = _audit(args).verify()
    ok = not any(z["problems"] for z in report)
    lines = []
    for z in report:
        if z["problems"]:
            lines += [
                f"{z['zone']}: FAILED at index {z['first_bad_index']}",
                *(f"  {p}" for p in z["problems"]),
            ]
        else:
            lines.append(f"{z['zone']}: {z['entries']} entries, every hash and signed head checks out")
    _print({"ok": ok, "zones": report}, args.json, lines or ["the audit log is empty"])
    return 0 if ok else 1


def cmd_receipts_verify(args) -> int:
    """Offline: needs only the receipt (and, to pin who signed it, the published keys)."""
    from pathlib import Path

    from tokenport.audit.receipts import verify_receipt

    try:
        doc = json.loads(Path(args.file).read_text())
        trusted = None
        if args.keys:
            published = json.loads(Path(args.keys).read_text())
            trusted = {k["key_id"]: k["public_key"] for k in published["keys"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"cannot read the receipt or keys: {exc}", file=sys.stderr)
        return 2
    problems = verify_receipt(doc, trusted) if isinstance(doc, dict) else ["not a JSON object"]
    pinned = "against the pinned keys" if trusted is not None else "against its own key (not pinned)"
    lines = [f"FAILED: {p}" for p in problems] or [f"receipt {doc.get('receipt_id', '')} verifies {pinned}"]
    _print({"ok": not problems, "problems": problems, "pinned": trusted is not None}, args.json, lines)
    return 0 if not problems else 1


def cmd_zones_create(args) -> int:
    svc, _ = _service(args)
    name = svc.create_zone(args.name)
    _print({"name": name}, args.json, [f"created zone {name}"])
    return 0


def cmd_zones_list(args) -> int:
    from tokenport.clock import utc_iso

    svc, _ = _service(args)
    items = [{"name": n, "created_at": utc_iso(at)} for n, at in svc.list_zones()]
    _print(items, args.json, [f"{z['name']:24} {z['created_at']}" for z in items])
    return 0


def cmd_tenants_create(args) -> int:
    from tokenport.api.views import tenant_view

    svc, _ = _service(args)
    t = svc.create_tenant(args.name, args.zone)
    _print(tenant_view(t), args.json, [f"created tenant {t.name} ({t.id}) in zone {t.zone}"])
    return 0


def cmd_tenants_list(args) -> int:
    from tokenport.api.views import tenant_view

    svc, _ = _service(args)
    items = [tenant_view(t) for t in svc.list_tenants()]
    _print(items, args.json, [f"{t['name']:24} {t['zone']:16} {t['id']}  {t['created_at']}" for t in items])
    return 0


def parse_duration(text: str) -> int:
    """Seconds, from `3600`, `90s`, `15m`, `24h` or `7d`."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], units[text[-1]]) if text and text[-1] in units else (text, 1)
    if not number.isdigit() or int(number) <= 0:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 3600, 15m, 24h, 7d)")
    return int(number) * unit


def cmd_tenants_retention(args) -> int:
    from tokenport.api.views import tenant_view

    svc, _ = _service(args)
    t = svc.set_retention(args.name, None if args.off else args.ttl)
    state = f"retains bodies for {t.retention_ttl_s} s, encrypted" if t.retention_ttl_s else "retains nothing"
    _print(tenant_view(t), args.json, [f"tenant {t.name} {state}"])
    return 0


def cmd_tenants_purge(args) -> int:
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


def _vault(args):
    from tokenport.store.retention import RetentionStore
    from tokenport.zones.vault import Vault

    audit = _audit(args)
    return Vault(RetentionStore(audit.store.engine), audit.keys_dir, audit)


def cmd_admins_create(args) -> int:
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


def cmd_admins_list(args) -> int:
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


def cmd_admins_revoke(args) -> int:
    from tokenport.clock import SystemClock
    from tokenport.store.admins import AdminStore
    from tokenport.tenancy.service import NotFound

    _, engine = _service(args)
    if not AdminStore(engine).revoke(args.name, SystemClock().now()):
        raise NotFound(f"no admin named {args.name!r}")
    print(f"revoked admin {args.name}")
    return 0


def cmd_backends_add(args) -> int:
    from tokenport.clock import SystemClock
    from tokenport.config import BACKEND_KINDS, BackendConfig
    from tokenport.store.backends import BackendExists, BackendStore
    from tokenport.tenancy.keys import NAME_RE
    from tokenport.tenancy.service import Conflict, InvalidInput

    svc, engine = _service(args)
    settings = _settings(args)
    models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    embeddings = tuple(m.strip() for m in (args.embeddings or "").split(",") if m.strip())
    zone = args.zone or settings.default_zone
    problems = [
        "name: 1-64 letters, digits, '.', '_' or '-'"
        if not NAME_RE.fullmatch(args.name) or len(args.name) > 64
        else "",
        "the name is a configured backend's"
        if args.name in {b.name for b in settings.backends} | {"embedded"}
        else "",
        "--url must start with http:// or https://"
        if not args.url.startswith(("http://", "https://"))
        else "",
        f"there is no zone {zone!r}" if not svc.store.zone_exists(zone) else "",
        "--models must name at least one model" if not models else "",
        "--embeddings must name some of --models" if any(e not in models for e in embeddings) else "",
        f"--kind must be one of {', '.join(BACKEND_KINDS)}" if args.kind not in BACKEND_KINDS else "",
    ]
    if any(problems):
        raise InvalidInput("; ".join(p for p in problems if p))
    cfg = BackendConfig(
        args.name,
        args.url.rstrip("/"),
        zone,
        models,
        args.kind,
        None,
        args.context,
        embeddings,
        max(1, args.weight),
        args.max_inflight,
    )
    try:
        BackendStore(engine).add(cfg, args.api_key_env, SystemClock().now())
    except BackendExists as exc:
        raise Conflict(str(exc)) from None
    view = {"name": cfg.name, "url": cfg.url, "zone": zone, "models": list(models), "kind": cfg.kind}
    _print(view, args.json, [f"added backend {cfg.name} ({cfg.url}) in zone {zone}: {', '.join(models)}"])
    return 0


def cmd_backends_list(args) -> int:
    from tokenport.store.backends import BackendStore

    settings = _settings(args)
    _, engine = _service(args)
    items = [
        {
            "name": b.name,
            "url": b.url,
            "zone": b.zone,
            "models": list(b.models),
            "kind": b.kind,
            "source": source,
        }
        for source, group in (("config", settings.backends), ("registered", BackendStore(engine).load()))
        for b in group
    ]
    lines = [
        f"{b['name']:16} {b['zone']:12} {b['kind']:9} {b['url']:32} {','.join(b['models'])} ({b['source']})"
        for b in items
    ]
    _print(items, args.json, lines or ["no backends (besides the embedded engine)"])
    return 0


def cmd_backends_remove(args) -> int:
    from tokenport.clock import SystemClock
    from tokenport.store.backends import BackendStore
    from tokenport.tenancy.service import NotFound

    _, engine = _service(args)
    if not BackendStore(engine).remove(args.name, SystemClock().now()):
        raise NotFound(f"no registered backend named {args.name!r} (configured ones live in the file)")
    print(f"removed backend {args.name}")
    return 0


def cmd_keys_create(args) -> int:
    from tokenport.api.views import key_view

    svc, _ = _service(args)
    info, secret = svc.create_key(
        args.tenant, args.label, args.rpm, args.tpm, args.budget_usd, args.budget_period
    )
    _print(
        key_view(info, secret),
        args.json,
        [
            f"created key {info.id} for tenant {info.tenant} (zone {info.zone})",
            "secret (shown once, store it now):",
            secret,
        ],
    )
    return 0


def cmd_keys_revoke(args) -> int:
    svc, _ = _service(args)
    svc.revoke_key(args.key_id)
    print(f"revoked {args.key_id}")
    return 0


def cmd_keys_list(args) -> int:
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


def cmd_usage(args) -> int:
    from tokenport.api.admin import parse_since
    from tokenport.api.views import usage_view
    from tokenport.energy.service import EnergyService
    from tokenport.store.energy import EnergyStore
    from tokenport.store.usage import UsageStore

    svc, engine = _service(args)
    if args.tenant:
        svc.tenant(args.tenant)
    since = parse_since(args.since)
    store = UsageStore(engine)
    raw = store.query(args.tenant, since, limit=args.limit)
    energy = EnergyService(EnergyStore(engine), _settings(args).energy).request_figures(raw)
    rows = [{**usage_view(r), "energy": energy.get(r["request_id"])} for r in raw]
    totals = store.totals(args.tenant, since)
    lines = [
        f"{r['started_at']}  {r['request_id']}  {r['tenant']:12} {r['model'] or '-':24} {r['status']} "
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


def _billing(args):
    from tokenport.billing.service import BillingService
    from tokenport.store.billing import BillingStore

    svc, engine = _service(args)
    return BillingService(BillingStore(engine), svc)


def _when(value: str | None, what: str, end_of_day: bool = False):
    """ISO 8601 with a zone; a bare date means midnight UTC (or the end of that day)."""
    from datetime import UTC, date, datetime, time, timedelta

    from tokenport.api.admin import parse_timestamp
    from tokenport.tenancy.service import InvalidInput

    if value is not None and len(value) == 10:
        try:
            day = date.fromisoformat(value)
        except ValueError:
            raise InvalidInput(f"{what} must be an ISO 8601 date or timestamp") from None
        return datetime.combine(day + timedelta(days=1 if end_of_day else 0), time(), UTC)
    return parse_timestamp(value, what)


def cmd_prices_set(args) -> int:
    from tokenport.api.views import price_view

    price = _billing(args).set_price(
        args.model,
        args.input,
        args.output,
        args.cached,
        args.reasoning,
        args.free,
        _when(args.effective_from, "--from"),
    )
    view = price_view(price)
    p = view["usd_per_million"]
    _print(
        view,
        args.json,
        [
            f"{price.model}: from {view['effective_from']}: "
            + (
                "free"
                if price.free
                else f"input {p['input']}, cached {p['cached']}, output {p['output']} USD/M"
            )
        ],
    )
    return 0


def cmd_prices_list(args) -> int:
    from tokenport.api.views import price_view

    book = _billing(args).price_book()
    items = [price_view(p) for m in book.models() for p in book.history(m)]
    _print(
        items,
        args.json,
        [
            f"{i['model']:28} from {i['effective_from']}  "
            + (
                "free"
                if i["free"]
                else "in {input} cached {cached} out {output} USD/M".format(**i["usd_per_million"])
            )
            for i in items
        ],
    )
    return 0


def cmd_credits_grant(args) -> int:
    from tokenport.api.views import lot_view

    lot = _billing(args).grant(
        args.tenant, args.amount_usd, _when(args.expires, "--expires", True), args.promo
    )
    view = lot_view(lot)
    _print(
        view,
        args.json,
        [
            f"granted {view['amount_usd']} USD ({'promotional' if lot.promo else 'paid'}) "
            f"to {args.tenant} as {lot.id}, expires {view['expires_at'] or 'never'}"
        ],
    )
    return 0


def cmd_credits_expire(args) -> int:
    import math
    from datetime import timedelta

    from tokenport.tenancy.service import InvalidInput

    grace = args.grace_minutes
    if not (math.isfinite(grace) and 0 <= grace <= 525_600):
        raise InvalidInput("--grace-minutes must be between 0 and 525600 (a year)")
    posted = _billing(args).expire_due(timedelta(minutes=grace))
    _print({"expired": posted}, args.json, [f"{len(posted)} expiry transactions posted"])
    return 0


def cmd_balance(args) -> int:
    from tokenport.api.views import balance_view

    view = balance_view(_billing(args).balance(args.tenant))
    lines = [f"{view['tenant']}: {view['available_usd']} USD available"]
    lines += [
        f"  {lot['id']}  {'promo' if lot['promo'] else 'paid ':5}  {lot['remaining_usd']:>20} of "
        f"{lot['amount_usd']}  expires {lot['expires_at'] or 'never'}"
        + ("  (expired)" if lot["expired"] else "")
        for lot in view["lots"]
    ]
    _print(view, args.json, lines)
    return 0


def cmd_ledger_verify(args) -> int:
    problems = _billing(args).verify()
    _print(
        {"ok": not problems, "problems": problems},
        args.json,
        problems or ["ledger verified: every invariant holds"],
    )
    return 1 if problems else 0


def _render_invoice(doc: dict, fmt: str, as_json: bool) -> None:
    from tokenport.billing.invoices import render_csv, render_html

    if as_json or fmt == "json":
        print(json.dumps(doc, indent=2))
    elif fmt == "csv":
        print(render_csv(doc), end="")
    elif fmt == "html":
        print(render_html(doc), end="")
    else:
        head = f"{doc['number']}  {doc['tenant']['name']}  {doc['period']}"
        print(f"{head}  {doc['total_usd']} USD  ({doc['status']})")
        for line in doc["lines"]:
            print(f"  {line['model']:28} {line['requests']:>8} requests  {line['amount_usd']:>16} USD")


def _plan_view(plan, tenants: list[str] | None = None) -> dict:
    from tokenport.billing.money import nano_to_usd

    view = {
        "name": plan.name,
        "fee_usd": nano_to_usd(plan.fee_nano),
        "unit": plan.unit,
        "five_hour_limit": plan.five_hour_limit,
        "weekly_limit": plan.weekly_limit,
        "multipliers": {m: p / 1000 for m, p in plan.multipliers},
        "overage": plan.overage,
    }
    if tenants is not None:
        view["tenants"] = tenants
    return view


def cmd_plans_create(args) -> int:
    plan = _billing(args).create_plan(
        args.name, args.fee_usd, args.five_hour, args.weekly, args.unit, args.multiplier, args.overage
    )
    _print(_plan_view(plan), args.json, [f"created plan {plan.name}"])
    return 0


def cmd_plans_list(args) -> int:
    items = [_plan_view(p, t) for p, t in _billing(args).list_plans()]
    _print(
        items,
        args.json,
        [
            f"{i['name']:16} {i['fee_usd']} USD/month  {i['five_hour_limit']} {i['unit']}/5h  "
            f"{i['weekly_limit']} {i['unit']}/week  overage {i['overage']}  "
            f"tenants: {', '.join(i['tenants']) or '-'}"
            for i in items
        ],
    )
    return 0


def cmd_plans_assign(args) -> int:
    plan = None if args.plan == "none" else args.plan
    _billing(args).assign_plan(args.tenant, plan)
    print(f"{args.tenant}: plan {plan or '(none)'}")
    return 0


def cmd_fx_set(args) -> int:
    micro = _billing(args).set_fx_rate(args.period, args.cny_per_usd)
    print(f"{args.period}: {micro / 10**6:.6f} CNY per USD")
    return 0


def cmd_fx_list(args) -> int:
    rates = {p: f"{m / 10**6:.6f}" for p, m in sorted(_billing(args).fx_rates().items())}
    _print(rates, args.json, [f"{p}  {r} CNY per USD" for p, r in rates.items()])
    return 0


def _energy(args):
    from tokenport.energy.service import EnergyService
    from tokenport.store.energy import EnergyStore

    svc, engine = _service(args)
    return EnergyService(EnergyStore(engine), _settings(args).energy), svc


def cmd_energy_tariff(args) -> int:
    energy, _ = _energy(args)
    row = energy.set_tariff(args.period, args.cny_per_kwh, args.source, args.kwh)
    amount = f"{row['kwh']} kWh" if row["kwh"] is not None else "the metered energy"
    _print(row, args.json, [f"{row['period']} {row['source']}: {row['cny_per_kwh']} CNY/kWh for {amount}"])
    return 0


def cmd_energy_pue(args) -> int:
    energy, _ = _energy(args)
    pue = energy.set_pue(args.period, args.value)
    print(f"{args.period}: PUE {pue / 1000}")
    return 0


def cmd_energy_calibrate(args) -> int:
    from tokenport.energy.calibration import calibrate

    energy, _ = _energy(args)
    result = calibrate(energy.store.calibration_samples(args.node, _when(args.since, "--since")))
    if result is None:
        msg = "not enough measured windows with varied work to separate prompt and generation costs"
        _print({"calibrated": False, "reason": msg}, args.json, [msg])
        return 1
    view = {"calibrated": True, **result.__dict__}
    _print(
        view,
        args.json,
        [
            f"{result.windows} measured windows: alpha = {result.alpha:.3f} "
            f"({result.j_per_prefill_token:.4f} J per prompt token, "
            f"{result.j_per_decode_token:.4f} J per generated token; R2 {result.r2:.3f})",
            f"set it with [energy] alpha = {result.alpha:.3f}",
        ],
    )
    return 0


def cmd_certificates_add(args) -> int:
    energy, _ = _energy(args)
    cert = energy.add_certificate(args.id, args.mwh, args.period, args.source)
    _print(
        cert,
        args.json,
        [f"recorded certificate {cert['id']}: {cert['mwh']} MWh retired for {cert['period']}"],
    )
    return 0


def cmd_certificates_list(args) -> int:
    energy, _ = _energy(args)
    items = [
        {
            "id": c["id"],
            "source": c["source"],
            "period": c["period"],
            "mwh": str(c["wh"] / 10**6),
            "allocated_mwh": str(c["allocated_wh"] / 10**6),
        }
        for c in energy.store.certificates(args.period)
    ]
    lines = [
        f"{c['id']:24} {c['period']} {c['source']:16} {c['mwh']} MWh ({c['allocated_mwh']} allocated)"
        for c in items
    ]
    _print(items, args.json, lines or ["no certificates"])
    return 0


def cmd_green_report(args) -> int:
    from tokenport.energy.reports import green_csv, green_html

    energy, svc = _energy(args)
    tenant = svc.tenant(args.tenant)
    doc = energy.green_report(tenant.id, tenant.name, tenant.zone, args.period)
    if args.format == "csv":
        print(green_csv(doc), end="")
    elif args.format == "html":
        print(green_html(doc))
    else:
        print(json.dumps(doc, indent=2))
    return 0


def cmd_economics(args) -> int:
    from tokenport.energy.reports import economics_csv, economics_html

    energy, svc = _energy(args)
    fx = _billing(args).fx_rates().get(args.period)
    doc = energy.economics(args.period, fx, {t.id: t.name for t in svc.list_tenants()})
    if args.format == "csv":
        print(economics_csv(doc), end="")
    elif args.format == "html":
        print(economics_html(doc))
    elif args.format == "json":
        print(json.dumps(doc, indent=2))
    else:
        e = doc["electricity"]
        print(
            f"{doc['period']}: {e['kwh']} kWh bought for {e['cny']} CNY; {doc['tokens']} tokens sold for "
            f"{doc['revenue_usd']} USD ({doc['revenue_cny']} CNY): value multiple {doc['value_multiple']}, "
            f"{doc['kwh_per_million_tokens']} kWh per million tokens, green share {doc['green_share']}"
        )
    return 0


def cmd_invoices_issue(args) -> int:
    _render_invoice(_billing(args).issue_invoice(args.tenant, args.period), args.format, args.json)
    return 0


def cmd_invoices_show(args) -> int:
    _render_invoice(_billing(args).invoice(args.invoice_id), args.format, args.json)
    return 0


def cmd_invoices_list(args) -> int:
    items = _billing(args).list_invoices(args.tenant)
    _print(
        items,
        args.json,
        [
            f"{i['id']}  {i['number']:32} {i['period']}  {i['total_usd']:>16} USD  {i['status']}"
            for i in items
        ],
    )
    return 0


def cmd_invoices_void(args) -> int:
    doc = _billing(args).void_invoice(args.invoice_id, args.reason)
    print(f"voided {doc['number']}: {args.reason}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from tokenport import __version__

    p = argparse.ArgumentParser(prog="tokenport", description=__doc__)
    p.add_argument("--version", action="version", version=f"tokenport {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def command(parent, name, func, help_):
        c = parent.add_parser(name, help=help_)
        c.add_argument("--config", help="TOML config file (default: $TOKENPORT_HOME/tokenport.toml)")
        c.set_defaults(func=func)
        return c

    s = command(sub, "serve", cmd_serve, "run the gateway (and the embedded engine)")
    s.add_argument("--host")
    s.add_argument("--port", type=int)

    audit = sub.add_parser("audit", help="the tamper-evident audit log").add_subparsers(
        dest="sub", required=True
    )
    c = command(
        audit, "sign", cmd_audit_sign, "sign each zone's tree head now (the server does it every 10 s)"
    )
    c.add_argument("--json", action="store_true")
    c = command(audit, "verify", cmd_audit_verify, "recompute the log; exit 1 naming the first bad index")
    c.add_argument("--json", action="store_true")

    receipts = sub.add_parser("receipts", help="signed processing receipts").add_subparsers(
        dest="sub", required=True
    )
    c = receipts.add_parser("verify", help="verify a receipt's signatures and inclusion proof offline")
    c.set_defaults(func=cmd_receipts_verify)
    c.add_argument("file", help="a receipt, as returned by GET /v1/receipts/{request_id}")
    c.add_argument("--keys", help="the published keys (/.well-known/tokenport/keys) to pin the signer")
    c.add_argument("--json", action="store_true")

    zones = sub.add_parser("zones", help="data zones").add_subparsers(dest="sub", required=True)
    c = command(
        zones, "create", cmd_zones_create, "create a zone (immutable; tenants, keys and backends live in one)"
    )
    c.add_argument("name")
    c.add_argument("--json", action="store_true")
    c = command(zones, "list", cmd_zones_list, "list zones")
    c.add_argument("--json", action="store_true")

    tenants = sub.add_parser("tenants", help="manage tenants").add_subparsers(dest="sub", required=True)
    c = command(tenants, "create", cmd_tenants_create, "create a tenant")
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

    backends = sub.add_parser("backends", help="engines registered at run time").add_subparsers(
        dest="sub", required=True
    )
    c = command(backends, "add", cmd_backends_add, "register an OpenAI-compatible engine (vLLM, SGLang, ...)")
    c.add_argument("name")
    c.add_argument("--url", required=True)
    c.add_argument("--zone", help="default: the default zone; fixed for good")
    c.add_argument("--models", required=True, help="comma-separated model ids")
    c.add_argument("--kind", default="openai", help="vllm | sglang | llamacpp | openai")
    c.add_argument("--weight", type=int, default=1)
    c.add_argument("--max-inflight", type=int)
    c.add_argument("--context", type=int, default=131072)
    c.add_argument("--embeddings", help="comma-separated models (among --models) it embeds with")
    c.add_argument("--api-key-env", help="the environment variable holding its API key")
    c.add_argument("--json", action="store_true")
    c = command(backends, "list", cmd_backends_list, "configured and registered backends")
    c.add_argument("--json", action="store_true")
    c = command(backends, "remove", cmd_backends_remove, "remove a registered backend")
    c.add_argument("name")

    admins = sub.add_parser("admins", help="zone-scoped admin tokens").add_subparsers(
        dest="sub", required=True
    )
    c = command(admins, "create", cmd_admins_create, "an admin API token for some zones (shown once)")
    c.add_argument("name")
    c.add_argument("--zones", required=True, help="comma-separated zones the token may act on")
    c.add_argument("--json", action="store_true")
    c = command(admins, "list", cmd_admins_list, "list admin tokens")
    c.add_argument("--json", action="store_true")
    c = command(admins, "revoke", cmd_admins_revoke, "revoke an admin token")
    c.add_argument("name")

    keys = sub.add_parser("keys", help="manage API keys").add_subparsers(dest="sub", required=True)
    c = command(keys, "create", cmd_keys_create, "create an API key (secret shown once)")
    c.add_argument("--tenant", required=True)
    c.add_argument("--label")
    c.add_argument("--rpm", type=int, help="requests per minute limit for this key")
    c.add_argument("--tpm", type=int, help="tokens per minute limit for this key (prompt + completion)")
    c.add_argument("--budget-usd", help="most this key may spend per budget period")
    c.add_argument("--budget-period", choices=("day", "month"), help="the budget's period (UTC)")
    c.add_argument("--json", action="store_true")
    c = command(keys, "revoke", cmd_keys_revoke, "revoke an API key")
    c.add_argument("key_id")
    c = command(keys, "list", cmd_keys_list, "list a tenant's keys")
    c.add_argument("--tenant", required=True)
    c.add_argument("--json", action="store_true")

    prices = sub.add_parser("prices", help="the price book").add_subparsers(dest="sub", required=True)
    c = command(prices, "set", cmd_prices_set, "set a model's price from a moment on (history is kept)")
    c.add_argument("model")
    c.add_argument("--input", help="USD per million uncached input tokens")
    c.add_argument("--output", help="USD per million output tokens")
    c.add_argument("--cached", help="USD per million cached input tokens (default: the input price)")
    c.add_argument("--reasoning", help="USD per million reasoning tokens (default: the output price)")
    c.add_argument("--free", action="store_true", help="explicitly free: served without credit")
    c.add_argument("--from", dest="effective_from", help="ISO 8601 start (default: now)")
    c.add_argument("--json", action="store_true")
    c = command(prices, "list", cmd_prices_list, "every price, with history")
    c.add_argument("--json", action="store_true")

    credits = sub.add_parser("credits", help="prepaid credits").add_subparsers(dest="sub", required=True)
    c = command(credits, "grant", cmd_credits_grant, "grant credit to a tenant")
    c.add_argument("tenant")
    c.add_argument("amount_usd")
    c.add_argument("--expires", help="ISO 8601 timestamp, or a date (credit usable through that day, UTC)")
    c.add_argument("--promo", action="store_true", help="promotional credit (burned before paid credit)")
    c.add_argument("--json", action="store_true")
    c = command(credits, "expire", cmd_credits_expire, "post expiry entries for expired credit")
    c.add_argument(
        "--grace-minutes",
        type=float,
        default=31,
        help="only lots expired longer ago than this (default 31: requests that started before "
        "the expiry may still be settling, for up to the 30-minute hold lifetime)",
    )
    c.add_argument("--json", action="store_true")

    c = command(sub, "balance", cmd_balance, "a tenant's spendable credit, lot by lot in burn order")
    c.add_argument("tenant")
    c.add_argument("--json", action="store_true")

    plans = sub.add_parser("plans", help="coding-style plans").add_subparsers(dest="sub", required=True)
    c = command(plans, "create", cmd_plans_create, "create a plan")
    c.add_argument("name")
    c.add_argument("--fee-usd", required=True, help="monthly fee")
    c.add_argument("--five-hour", type=int, required=True, help="weighted units per rolling 5 hours")
    c.add_argument("--weekly", type=int, required=True, help="weighted units per rolling 7 days")
    c.add_argument("--unit", choices=("tokens", "requests"), default="tokens")
    c.add_argument("--multiplier", action="append", default=[], help="MODEL=FACTOR (repeatable)")
    c.add_argument(
        "--overage",
        choices=("block", "charge"),
        default="block",
        help="past a limit: refuse (429), or charge the prepaid balance",
    )
    c.add_argument("--json", action="store_true")
    c = command(plans, "list", cmd_plans_list, "plans and their tenants")
    c.add_argument("--json", action="store_true")
    c = command(plans, "assign", cmd_plans_assign, "put a tenant on a plan ('none' to take it off)")
    c.add_argument("tenant")
    c.add_argument("plan")

    fx = sub.add_parser("fx", help="the CNY/USD rate per month").add_subparsers(dest="sub", required=True)
    c = command(fx, "set", cmd_fx_set, "record the CNY/USD rate for a month")
    c.add_argument("--period", required=True, help="YYYY-MM")
    c.add_argument("--cny-per-usd", required=True)
    c = command(fx, "list", cmd_fx_list, "the recorded rates")
    c.add_argument("--json", action="store_true")

    energy = sub.add_parser("energy", help="electricity bought and the PUE, per month").add_subparsers(
        dest="sub", required=True
    )
    c = command(energy, "tariff", cmd_energy_tariff, "record electricity bought in a month, per source")
    c.add_argument("--period", required=True, help="YYYY-MM")
    c.add_argument("--cny-per-kwh", required=True)
    c.add_argument("--source", default="grid", help="e.g. offshore-wind, grid")
    c.add_argument("--kwh", help="kWh bought (default: the metered facility energy not recorded otherwise)")
    c.add_argument("--json", action="store_true")
    c = command(energy, "calibrate", cmd_energy_calibrate, "estimate alpha from measured windows")
    c.add_argument("--node")
    c.add_argument("--since", help="ISO 8601 or a date")
    c.add_argument("--json", action="store_true")
    c = command(energy, "pue", cmd_energy_pue, "the month's PUE (default: [energy] pue)")
    c.add_argument("--period", required=True, help="YYYY-MM")
    c.add_argument("--value", required=True)
    certs = sub.add_parser("certificates", help="green certificates (GEC) retired").add_subparsers(
        dest="sub", required=True
    )
    c = command(certs, "add", cmd_certificates_add, "record a certificate retired for this site")
    c.add_argument("id")
    c.add_argument("--mwh", required=True)
    c.add_argument("--period", required=True, help="YYYY-MM it was retired for")
    c.add_argument("--source", default="offshore-wind")
    c.add_argument("--json", action="store_true")
    c = command(certs, "list", cmd_certificates_list, "certificates and how much of each is allocated")
    c.add_argument("--period")
    c.add_argument("--json", action="store_true")
    green = sub.add_parser("green", help="customer green reports").add_subparsers(dest="sub", required=True)
    c = command(green, "report", cmd_green_report, "a tenant's energy, green energy and carbon for a month")
    c.add_argument("--tenant", required=True)
    c.add_argument("--period", required=True, help="YYYY-MM")
    c.add_argument("--format", choices=("json", "csv", "html"), default="json")
    c = command(sub, "economics", cmd_economics, "electricity in, tokens and revenue out, for a month")
    c.add_argument("--period", required=True, help="YYYY-MM")
    c.add_argument("--format", choices=("text", "json", "csv", "html"), default="text")

    inv = sub.add_parser("invoices", help="monthly invoices").add_subparsers(dest="sub", required=True)
    formats = ("text", "json", "csv", "html")
    c = command(inv, "issue", cmd_invoices_issue, "issue a tenant's invoice for a past month (idempotent)")
    c.add_argument("--tenant", required=True)
    c.add_argument("--period", required=True, help="YYYY-MM")
    c.add_argument("--format", choices=formats, default="text")
    c.add_argument("--json", action="store_true")
    c = command(inv, "show", cmd_invoices_show, "show an issued invoice")
    c.add_argument("invoice_id")
    c.add_argument("--format", choices=formats, default="text")
    c.add_argument("--json", action="store_true")
    c = command(inv, "list", cmd_invoices_list, "list invoices")
    c.add_argument("--tenant")
    c.add_argument("--json", action="store_true")
    c = command(inv, "void", cmd_invoices_void, "void an invoice (a new document; the invoice is not edited)")
    c.add_argument("invoice_id")
    c.add_argument("--reason", required=True)

    ledger = sub.add_parser("ledger", help="the double-entry ledger").add_subparsers(
        dest="sub", required=True
    )
    c = command(ledger, "verify", cmd_ledger_verify, "check every ledger invariant (exit 1 on a violation)")
    c.add_argument("--json", action="store_true")

    c = command(sub, "usage", cmd_usage, "per-request usage records and totals")
    c.add_argument("--tenant")
    c.add_argument("--since", help="ISO 8601 timestamp with zone, e.g. 2026-01-01T00:00:00Z")
    c.add_argument("--limit", type=int, default=1000)
    c.add_argument("--json", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    from tokenport.energy.service import EnergyInputError
    from tokenport.store.energy import DuplicateCertificate
    from tokenport.tenancy.service import Conflict, InvalidInput, NotFound

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, InvalidInput, NotFound, Conflict, EnergyInputError, DuplicateCertificate) as exc:
        print(f"tokenport: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
