"""Prices, credit, plans, exchange rates, invoices and the ledger."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from tokenport.billing.plans import Plan
from tokenport.cli.common import (
    _billing,
    _print,
    _when,
)


def cmd_prices_set(args: argparse.Namespace) -> int:
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


def cmd_prices_list(args: argparse.Namespace) -> int:
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


def cmd_credits_grant(args: argparse.Namespace) -> int:
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


def cmd_credits_expire(args: argparse.Namespace) -> int:
    import math
    from datetime import timedelta

    from tokenport.tenancy.service import InvalidInput

    grace = args.grace_minutes
    if not (math.isfinite(grace) and 0 <= grace <= 525_600):
        raise InvalidInput("--grace-minutes must be between 0 and 525600 (a year)")
    posted = _billing(args).expire_due(timedelta(minutes=grace))
    _print({"expired": posted}, args.json, [f"{len(posted)} expiry transactions posted"])
    return 0


def cmd_balance(args: argparse.Namespace) -> int:
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


def cmd_ledger_verify(args: argparse.Namespace) -> int:
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
        status = doc["status"]
        if status == "preview":
            status = f"preview as of {doc['issued_at']}, not issued" + (
                "" if doc["period_ended"] else "; the month is still running"
            )
        print(f"{head}  {doc['total_usd']} USD  ({status})")
        for line in doc["lines"]:
            print(f"  {line['model']:28} {line['requests']:>8} requests  {line['amount_usd']:>16} USD")
        for fee in doc.get("plan_fees", []):
            print(f"  {'plan fee: ' + fee['plan']:28} {'':>17}  {fee['amount_usd']:>16} USD")
        if doc.get("rejected_requests"):
            print(f"  {'rejected requests':28} {doc['rejected_requests']:>8} requests  {'not billed':>16}")


def _plan_view(plan: Plan, tenants: list[str] | None = None) -> dict:
    from tokenport.money import nano_to_usd

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


def cmd_plans_create(args: argparse.Namespace) -> int:
    plan = _billing(args).create_plan(
        args.name, args.fee_usd, args.five_hour, args.weekly, args.unit, args.multiplier, args.overage
    )
    _print(_plan_view(plan), args.json, [f"created plan {plan.name}"])
    return 0


def cmd_plans_list(args: argparse.Namespace) -> int:
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


def cmd_plans_assign(args: argparse.Namespace) -> int:
    plan = None if args.plan == "none" else args.plan
    _billing(args).assign_plan(args.tenant, plan)
    print(f"{args.tenant}: plan {plan or '(none)'}")
    return 0


def cmd_fx_set(args: argparse.Namespace) -> int:
    micro = _billing(args).set_fx_rate(args.period, args.cny_per_usd)
    print(f"{args.period}: {micro / 10**6:.6f} CNY per USD")
    return 0


def cmd_fx_list(args: argparse.Namespace) -> int:
    rates = {p: f"{m / 10**6:.6f}" for p, m in sorted(_billing(args).fx_rates().items())}
    _print(rates, args.json, [f"{p}  {r} CNY per USD" for p, r in rates.items()])
    return 0


def cmd_invoices_issue(args: argparse.Namespace) -> int:
    _render_invoice(_billing(args).issue_invoice(args.tenant, args.period), args.format, args.json)
    return 0


def cmd_invoices_preview(args: argparse.Namespace) -> int:
    _render_invoice(_billing(args).preview_invoice(args.tenant, args.period), args.format, args.json)
    return 0


def cmd_invoices_show(args: argparse.Namespace) -> int:
    _render_invoice(_billing(args).invoice(args.invoice_id), args.format, args.json)
    return 0


def cmd_invoices_list(args: argparse.Namespace) -> int:
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


def cmd_invoices_void(args: argparse.Namespace) -> int:
    doc = _billing(args).void_invoice(args.invoice_id, args.reason)
    print(f"voided {doc['number']}: {args.reason}")
    return 0


def _register_prices(sub: Any, command: Callable[..., argparse.ArgumentParser]) -> None:
    prices = sub.add_parser("prices", help="the price book").add_subparsers(dest="sub", required=True)
    c = command(
        prices, "set", cmd_prices_set, "set a model's price from a moment on (history is kept)", creates=True
    )
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


def _register_credits(sub: Any, command: Callable[..., argparse.ArgumentParser]) -> None:
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


def _register_balance(sub: Any, command: Callable[..., argparse.ArgumentParser]) -> None:
    c = command(sub, "balance", cmd_balance, "a tenant's spendable credit, lot by lot in burn order")
    c.add_argument("tenant")
    c.add_argument("--json", action="store_true")


def _register_plans(sub: Any, command: Callable[..., argparse.ArgumentParser]) -> None:
    plans = sub.add_parser("plans", help="coding-style plans").add_subparsers(dest="sub", required=True)
    c = command(plans, "create", cmd_plans_create, "create a plan", creates=True)
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


def _register_fx(sub: Any, command: Callable[..., argparse.ArgumentParser]) -> None:
    fx = sub.add_parser("fx", help="the CNY/USD rate per month").add_subparsers(dest="sub", required=True)
    c = command(fx, "set", cmd_fx_set, "record the CNY/USD rate for a month", creates=True)
    c.add_argument("--period", required=True, help="YYYY-MM")
    c.add_argument("--cny-per-usd", required=True)
    c = command(fx, "list", cmd_fx_list, "the recorded rates")
    c.add_argument("--json", action="store_true")


def _register_invoices(sub: Any, command: Callable[..., argparse.ArgumentParser]) -> None:
    inv = sub.add_parser("invoices", help="monthly invoices").add_subparsers(dest="sub", required=True)
    formats = ("text", "json", "csv", "html")
    c = command(inv, "issue", cmd_invoices_issue, "issue a tenant's invoice for a past month (idempotent)")
    c.add_argument("--tenant", required=True)
    c.add_argument("--period", required=True, help="YYYY-MM")
    c.add_argument("--format", choices=formats, default="text")
    c.add_argument("--json", action="store_true")
    c = command(
        inv,
        "preview",
        cmd_invoices_preview,
        "a month's invoice to date (default: this month); issues nothing",
    )
    c.add_argument("--tenant", required=True)
    c.add_argument("--period", help="YYYY-MM (default: the running month)")
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


def _register_ledger(sub: Any, command: Callable[..., argparse.ArgumentParser]) -> None:
    ledger = sub.add_parser("ledger", help="the double-entry ledger").add_subparsers(
        dest="sub", required=True
    )
    c = command(ledger, "verify", cmd_ledger_verify, "check every ledger invariant (exit 1 on a violation)")
    c.add_argument("--json", action="store_true")


def register(sub: Any, command: Callable[..., argparse.ArgumentParser]) -> None:
    _register_prices(sub, command)
    _register_credits(sub, command)
    _register_balance(sub, command)
    _register_plans(sub, command)
    _register_fx(sub, command)
    _register_invoices(sub, command)
    _register_ledger(sub, command)
