"""Energy: electricity, PUE, calibration, certificates, green reports and economics."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from tokenport.cli.common import (
    _billing,
    _energy,
    _print,
    _when,
)


def cmd_energy_tariff(args: argparse.Namespace) -> int:
    energy, _ = _energy(args)
    row = energy.set_tariff(args.period, args.cny_per_kwh, args.source, args.kwh)
    amount = f"{row['kwh']} kWh" if row["kwh"] is not None else "the metered energy"
    _print(row, args.json, [f"{row['period']} {row['source']}: {row['cny_per_kwh']} CNY/kWh for {amount}"])
    return 0


def cmd_energy_pue(args: argparse.Namespace) -> int:
    energy, _ = _energy(args)
    pue = energy.set_pue(args.period, args.value)
    print(f"{args.period}: PUE {pue / 1000}")
    return 0


def cmd_energy_calibrate(args: argparse.Namespace) -> int:
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


def cmd_certificates_add(args: argparse.Namespace) -> int:
    energy, _ = _energy(args)
    cert = energy.add_certificate(args.id, args.mwh, args.period, args.source)
    _print(
        cert,
        args.json,
        [f"recorded certificate {cert['id']}: {cert['mwh']} MWh retired for {cert['period']}"],
    )
    return 0


def cmd_certificates_list(args: argparse.Namespace) -> int:
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


def cmd_green_report(args: argparse.Namespace) -> int:
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


def cmd_economics(args: argparse.Namespace) -> int:
    from tokenport.energy.reports import economics_csv, economics_html, economics_text

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
        print(economics_text(doc), end="")
    return 0


def register(sub: Any, command: Callable[..., argparse.ArgumentParser]) -> None:
    energy = sub.add_parser("energy", help="electricity bought and the PUE, per month").add_subparsers(
        dest="sub", required=True
    )
    c = command(
        energy, "tariff", cmd_energy_tariff, "record electricity bought in a month, per source", creates=True
    )
    c.add_argument("--period", required=True, help="YYYY-MM")
    c.add_argument("--cny-per-kwh", required=True)
    c.add_argument("--source", default="grid", help="e.g. offshore-wind, grid")
    c.add_argument("--kwh", help="kWh bought (default: the metered facility energy not recorded otherwise)")
    c.add_argument("--json", action="store_true")
    c = command(energy, "calibrate", cmd_energy_calibrate, "estimate alpha from measured windows")
    c.add_argument("--node")
    c.add_argument("--since", help="ISO 8601 or a date")
    c.add_argument("--json", action="store_true")
    c = command(energy, "pue", cmd_energy_pue, "the month's PUE (default: [energy] pue)", creates=True)
    c.add_argument("--period", required=True, help="YYYY-MM")
    c.add_argument("--value", required=True)
    certs = sub.add_parser("certificates", help="green certificates (GEC) retired").add_subparsers(
        dest="sub", required=True
    )
    c = command(
        certs, "add", cmd_certificates_add, "record a certificate retired for this site", creates=True
    )
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
