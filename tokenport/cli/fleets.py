"""Device fleets (docs/fleets.md): fleets, products (the service package sold with the hardware),
devices imported by production batch, and a device's lifecycle."""

from __future__ import annotations

import argparse
import csv
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from tokenport.cli.common import _print, _service, _settings

if TYPE_CHECKING:
    from tokenport.fleets.records import Device, Fleet, Product
    from tokenport.fleets.service import FleetService, ImportSummary
    from tokenport.store.fleets import FleetStore


def _fleets_and_store(args: argparse.Namespace) -> tuple[FleetService, FleetStore]:
    """The fleet service and its store: batch keys sealed under the zone's retention key
    (zones/vault.py), device tokens signed with the deployment's device-token key (keyfiles.py)."""
    from tokenport.audit.service import AuditService
    from tokenport.fleets.service import FleetService
    from tokenport.keyfiles import device_token_key
    from tokenport.store.audit import AuditStore
    from tokenport.store.fleets import FleetStore
    from tokenport.store.retention import RetentionStore
    from tokenport.zones.vault import Vault

    keys_dir = _settings(args).keys_dir
    tenancy, engine = _service(args)
    vault = Vault(RetentionStore(engine), keys_dir, AuditService(AuditStore(engine), keys_dir))
    store = FleetStore(engine)
    return FleetService(store, tenancy, vault.zone_key, device_token_key(keys_dir)), store


def _fleets(args: argparse.Namespace) -> FleetService:
    return _fleets_and_store(args)[0]


def _iso(value: Any) -> str | None:
    from tokenport.clock import utc_iso

    return utc_iso(value) if value is not None else None


# --- views ----------------------------------------------------------------------------------------


def fleet_view(f: Fleet, tenant: str) -> dict:
    return {
        "id": f.id,
        "name": f.name,
        "tenant": tenant,
        "zone": f.zone,
        "max_addresses_per_hour": f.max_addresses_per_hour,
        "auto_quarantine": f.auto_quarantine,
    }


def product_view(p: Product, fleet: str) -> dict:
    from tokenport.money import nano_to_usd

    return {
        "id": p.id,
        "fleet": fleet,
        "sku": p.sku,
        "entitlement_days": p.entitlement_days,
        "daily_tokens": p.daily_tokens,
        "monthly_tokens": p.monthly_tokens,
        "rpm": p.rpm,
        "concurrency": p.concurrency,
        "models": list(p.models),
        "max_output": p.max_output,
        "reset_tz": p.reset_tz,
        "package_fee_usd": nano_to_usd(p.package_fee_nano),
        "multipliers": {m: w / 1000 for m, w in p.multipliers},
    }


def device_view(d: Device, fleet: str, sku: str | None) -> dict:
    return {
        "serial": d.serial,
        "fleet": fleet,
        "product": sku,
        "batch_id": d.batch_id,
        "state": d.state,
        "activated_at": _iso(d.activated_at),
        "entitlement_ends_at": _iso(d.entitlement_ends_at),
    }


def _product_line(v: dict) -> str:
    limits = f"{v['daily_tokens']}/day {v['monthly_tokens']}/month"
    extra = [f"rpm {v['rpm']}"] if v["rpm"] else []
    extra += [f"concurrency {v['concurrency']}"] if v["concurrency"] else []
    extra += [f"max output {v['max_output']}"] if v["max_output"] else []
    extra += [f"models {','.join(v['models'])}"] if v["models"] else []
    return (
        f"{v['sku']:20} {v['entitlement_days']} days  {limits} ({v['reset_tz']})  "
        f"fee {v['package_fee_usd']} USD" + "".join(f"  {e}" for e in extra)
    )


# --- fleets and products --------------------------------------------------------------------------


def cmd_fleets_create(args: argparse.Namespace) -> int:
    svc = _fleets(args)
    f = svc.create_fleet(args.tenant, args.name, args.max_addresses, args.auto_quarantine)
    view = fleet_view(f, args.tenant)
    _print(view, args.json, [f"created fleet {f.name} ({f.id}) for tenant {args.tenant} in zone {f.zone}"])
    return 0


def cmd_fleets_list(args: argparse.Namespace) -> int:
    svc, store = _fleets_and_store(args)
    fleets = svc.list_fleets(args.tenant)
    names = {t.id: t.name for t in svc.tenancy.list_tenants()}
    items = [
        {**fleet_view(f, names.get(f.tenant_id, f.tenant_id)), "devices": store.count_devices(f.id)}
        for f in fleets
    ]
    lines = [
        f"{i['name']:24} {i['tenant']:16} {i['zone']:12} {i['id']}  "
        + "  ".join(f"{state} {n}" for state, n in sorted(i["devices"].items()))
        for i in items
    ]
    _print(items, args.json, lines)
    return 0


def cmd_fleets_report(args: argparse.Namespace) -> int:
    from tokenport.cli.common import _billing
    from tokenport.fleets.report import report_csv, report_html

    svc = _fleets(args)
    fleet = svc.fleet(args.fleet)
    tenant = next(t for t in svc.tenancy.list_tenants() if t.id == fleet.tenant_id)
    available = _billing(args).balance(tenant.name).available
    doc = svc.report(args.fleet, args.period, available)
    fmt = "json" if args.json else args.format
    if fmt == "json":
        _print(doc, True, [])
    else:
        print(report_csv(doc) if fmt == "csv" else report_html(doc), end="")
    return 0


def cmd_products_create(args: argparse.Namespace) -> int:
    models = [m.strip() for m in (args.models or "").split(",") if m.strip()]
    p = _fleets(args).create_product(
        args.fleet,
        args.sku,
        args.entitlement_days,
        args.daily_tokens,
        args.monthly_tokens,
        args.rpm,
        args.concurrency,
        models,
        args.max_output,
        args.reset_tz,
        args.package_fee_usd,
        args.multiplier,
    )
    view = product_view(p, args.fleet)
    _print(view, args.json, [f"created product {p.sku} ({p.id}) in fleet {args.fleet}", _product_line(view)])
    return 0


def cmd_products_list(args: argparse.Namespace) -> int:
    items = [product_view(p, args.fleet) for p in _fleets(args).list_products(args.fleet)]
    _print(items, args.json, [_product_line(v) for v in items])
    return 0


# --- import ---------------------------------------------------------------------------------------


class SerialReader:
    """The first cell of each row of a CSV file, streamed; a first row whose first cell is
    `serial` (any case) is a header, skipped. Rows are numbered as in the file (the header is
    row 1)."""

    def __init__(self, path: Path) -> None:
        from tokenport.tenancy.service import InvalidInput

        self.path = path
        self.header = False
        if not path.is_file():
            raise InvalidInput(f"--csv {path}: no such file")

    def file_row(self, row: int) -> int:
        """The file's row number of the `row`-th serial read."""
        return row + (1 if self.header else 0)

    def __iter__(self) -> Iterator[str]:
        for number, cell in self.rows():
            if number == 1 and cell.strip().lower() == "serial":
                self.header = True
                continue
            yield cell

    def rows(self) -> Iterator[tuple[int, str]]:
        """(file row, first cell) for every row."""
        from tokenport.tenancy.service import InvalidInput

        try:
            with self.path.open(newline="", encoding="utf-8-sig") as f:
                for number, row in enumerate(csv.reader(f), start=1):
                    yield number, row[0] if row else ""
        except (UnicodeDecodeError, csv.Error, OSError) as exc:
            raise InvalidInput(f"--csv {self.path}: cannot read it ({type(exc).__name__}: {exc})") from None


def _exclusive(path: str, what: str) -> TextIO:
    """A new file, mode 0600; an existing one is never overwritten."""
    from tokenport.tenancy.service import InvalidInput

    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise InvalidInput(f"{what} {path} exists: it is not overwritten") from None
    except OSError as exc:
        raise InvalidInput(f"{what} {path}: {exc.strerror}") from None
    return os.fdopen(fd, "w", newline="")


class ImportOutputs:
    """The secrets file (serial, secret hex, for the new devices) and the batch key file, created
    before the import and removed again if it fails."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.secrets_path, self.key_path = args.secrets_out, args.batch_key_out
        self.files: list[tuple[str, TextIO]] = []

    def __enter__(self) -> ImportOutputs:
        for path, what in ((self.secrets_path, "--secrets-out"), (self.key_path, "--batch-key-out")):
            if path:
                self.files.append((path, _exclusive(path, what)))
        return self

    def write(self, summary: ImportSummary, key: bytes) -> None:
        from tokenport.fleets.identity import device_secret

        for path, f in self.files:
            if path == self.secrets_path:
                out = csv.writer(f)
                out.writerow(("serial", "secret_hex"))
                out.writerows((s, device_secret(key, s).hex()) for s in summary.new)
            else:
                f.write(key.hex() + "\n")

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> None:
        for path, f in self.files:
            f.close()
            if exc_type is not None:
                Path(path).unlink(missing_ok=True)


def _check_import(args: argparse.Namespace, svc: FleetService) -> None:
    """Refuse what cannot be done before anything is imported."""
    from tokenport.tenancy.service import Conflict, InvalidInput

    if args.dry_run and (args.secrets_out or args.batch_key_out):
        raise InvalidInput("--dry-run writes nothing: leave out --secrets-out and --batch-key-out")
    if args.batch_key_out and svc.store.batch(svc.fleet(args.fleet).id, args.batch) is not None:
        raise Conflict(
            f"batch {args.batch!r} exists: its key was handed out once, when the batch was created"
        )


def _import_view(summary: ImportSummary, reader: SerialReader) -> dict:
    """The summary, its rows numbered as in the file."""
    view = summary.view()
    for r in view["rejected"]:
        r["row"] = reader.file_row(r["row"])
    return view


def _import_lines(view: dict, args: argparse.Namespace) -> list[str]:
    batch = "new batch" if view["batch_created"] else "batch"
    head = "dry run, nothing written: " if view["dry_run"] else ""
    lines = [
        f"{head}fleet {view['fleet']}, product {view['sku']}, {batch} {view['batch']} "
        f"({view['batch_id']}): {view['new']} new, {view['existing']} existing, "
        f"{len(view['rejected'])} rejected"
    ]
    lines += [f"  row {r['row']}: {r['serial']!r}: {r['reason']}" for r in view["rejected"]]
    if args.secrets_out:
        lines.append(f"secrets of the {view['new']} new devices written to {args.secrets_out}")
    if args.batch_key_out:
        lines.append(f"batch key written to {args.batch_key_out} (handed out this once)")
    return lines


def cmd_devices_import(args: argparse.Namespace) -> int:
    from tokenport.fleets.identity import SealedKeyError
    from tokenport.tenancy.service import Conflict, InvalidInput

    svc = _fleets(args)
    _check_import(args, svc)
    reader = SerialReader(Path(args.csv))
    try:
        with ImportOutputs(args) as out:
            summary, key = svc.import_devices(args.fleet, args.sku, args.batch, reader, args.dry_run)
            if args.batch_key_out and not summary.batch_created:
                raise Conflict(f"batch {args.batch!r} was created meanwhile: its key is not handed out")
            out.write(summary, key)
    except SealedKeyError:
        raise InvalidInput(
            f"the key of batch {args.batch!r} does not open under its zone's key: is this the key "
            f"directory ({_settings(args).keys_dir}) the batch was created with?"
        ) from None
    view = _import_view(summary, reader)
    view.update(secrets_out=args.secrets_out, batch_key_out=args.batch_key_out)
    _print(view, args.json, _import_lines(view, args))
    return 0


# --- a device's lifecycle -------------------------------------------------------------------------


def cmd_devices_show(args: argparse.Namespace) -> int:
    svc = _fleets(args)
    d = svc.device(args.serial)
    fleet, product = svc.store.fleet_by_id(d.fleet_id), svc.store.product_by_id(d.product_id)
    batch = svc.store.batch_by_id(d.batch_id)
    assert fleet is not None and product is not None and batch is not None
    view = {**device_view(d, fleet.name, product.sku), "batch": batch.name}
    view["entitlement"] = e = svc.entitlement(d, product)
    lines = [
        f"{d.serial}: {d.state}, fleet {fleet.name}, product {product.sku}, batch {batch.name}",
        f"  activated {view['activated_at'] or 'never'}, entitlement ends {e['ends_at'] or '-'} "
        f"({e['days_left']} days left)",
        f"  tokens left: {e['tokens_left_today']} today, {e['tokens_left_this_month']} this month "
        f"({product.reset_tz})",
    ]
    _print(view, args.json, lines)
    return 0


def cmd_devices_list(args: argparse.Namespace) -> int:
    svc = _fleets(args)
    skus = {p.id: p.sku for p in svc.list_products(args.fleet)}
    found = svc.list_devices(args.fleet, args.state, args.after, args.limit)
    items = [device_view(d, args.fleet, skus.get(d.product_id)) for d in found]
    more = found[-1].serial if found and len(found) >= min(max(1, args.limit), 10_000) else None
    lines = [
        f"{i['serial']:24} {i['state']:12} {i['product'] or '-':16} "
        f"activated {i['activated_at'] or '-'}  ends {i['entitlement_ends_at'] or '-'}"
        for i in items
    ]
    if more:
        lines.append(f"(more: --after {more})")
    _print({"data": items, "next_after": more}, args.json, lines)
    return 0


def _set_state(svc: FleetService, serial: str, args: argparse.Namespace) -> Device:
    return svc.set_state(serial, args.target, args.reason or "")


def _bulk_state(svc: FleetService, args: argparse.Namespace) -> dict:
    """Every serial of the file (blank rows skipped): done, unknown, or refused and why."""
    from tokenport.tenancy.service import Conflict, NotFound

    done, unknown, refused = 0, [], []
    for row, cell in SerialReader(Path(args.csv)).rows():
        serial = cell.strip()
        if not serial or (row == 1 and serial.lower() == "serial"):
            continue
        try:
            _set_state(svc, serial, args)
            done += 1
        except NotFound:
            unknown.append({"row": row, "serial": serial})
        except Conflict as exc:
            refused.append({"row": row, "serial": serial, "reason": str(exc)})
    return {"action": args.action, "done": done, "unknown": unknown, "refused": refused}


def cmd_devices_state(args: argparse.Namespace) -> int:
    from tokenport.tenancy.service import InvalidInput

    if (args.serial is None) == (args.csv is None):
        raise InvalidInput(f"{args.action} names a SERIAL or a --csv FILE of serials (one of them)")
    svc = _fleets(args)
    if args.serial is not None:
        d = _set_state(svc, args.serial, args)
        _print({"serial": d.serial, "state": d.state}, args.json, [f"{d.serial}: {d.state}"])
        return 0
    view = _bulk_state(svc, args)
    lines = [
        f"{args.action}: {view['done']} done, {len(view['unknown'])} unknown, {len(view['refused'])} refused"
    ]
    lines += [f"  row {u['row']}: {u['serial']!r}: no such device" for u in view["unknown"]]
    lines += [f"  row {r['row']}: {r['serial']!r}: {r['reason']}" for r in view["refused"]]
    _print(view, args.json, lines)
    return 0


def cmd_devices_renew(args: argparse.Namespace) -> int:
    d = _fleets(args).renew(args.serial, args.days)
    ends = _iso(d.entitlement_ends_at)
    _print(
        {"serial": d.serial, "entitlement_ends_at": ends}, args.json, [f"{d.serial}: entitled until {ends}"]
    )
    return 0


def cmd_devices_flagged(args: argparse.Namespace) -> int:
    flags = _fleets(args).flags(args.fleet, args.limit)
    lines = [f"{f['at']}  {f['serial']:24} {f['kind']:10} {f['detail']}" for f in flags]
    _print(flags, args.json, lines or ["no device flagged"])
    return 0


# --- registration ---------------------------------------------------------------------------------


def _register_fleets(sub: Any, command: Callable[..., argparse.ArgumentParser]) -> None:
    fleets = sub.add_parser("fleets", help="device fleets of hardware makers").add_subparsers(
        dest="sub", required=True
    )
    c = command(fleets, "create", cmd_fleets_create, "create a fleet for a maker's tenant (in its zone)")
    c.add_argument("tenant")
    c.add_argument("name")
    c.add_argument(
        "--max-addresses",
        type=int,
        default=3,
        help="client addresses a device may use per hour before it is flagged (default 3)",
    )
    c.add_argument("--auto-quarantine", action="store_true", help="quarantine a flagged device at once")
    c.add_argument("--json", action="store_true")
    c = command(fleets, "list", cmd_fleets_list, "list fleets")
    c.add_argument("--tenant")
    c.add_argument("--json", action="store_true")
    _register_fleet_report(fleets, command)


def _register_fleet_report(fleets: Any, command: Callable[..., argparse.ArgumentParser]) -> None:
    c = command(
        fleets, "report", cmd_fleets_report, "a fleet's month: funnel, tokens per device, pool, top devices"
    )
    c.add_argument("fleet")
    c.add_argument("--period", required=True, help="YYYY-MM")
    c.add_argument("--format", choices=("json", "csv", "html"), default="json")
    c.add_argument("--json", action="store_true")


def _register_products(sub: Any, command: Callable[..., argparse.ArgumentParser]) -> None:
    products = sub.add_parser("products", help="a fleet's service packages (SKUs)").add_subparsers(
        dest="sub", required=True
    )
    c = command(products, "create", cmd_products_create, "create a product (the package sold with a device)")
    c.add_argument("fleet")
    c.add_argument("sku")
    c.add_argument("--entitlement-days", type=int, required=True, help="service days from first activation")
    c.add_argument("--daily-tokens", type=int, required=True, help="weighted tokens per device per local day")
    c.add_argument("--monthly-tokens", type=int, required=True, help="weighted tokens per device per month")
    c.add_argument("--rpm", type=int, help="requests per minute per device")
    c.add_argument("--concurrency", type=int, help="streams at once per device")
    c.add_argument("--models", help="comma-separated models a device may call (default: every model)")
    c.add_argument("--max-output", type=int, help="output tokens per request, at most")
    c.add_argument("--reset-tz", default="UTC", help="IANA time zone of the daily and monthly resets")
    c.add_argument("--package-fee-usd", help="charged to the maker at each device's first activation")
    c.add_argument("--multiplier", action="append", default=[], help="MODEL=FACTOR (repeatable)")
    c.add_argument("--json", action="store_true")
    c = command(products, "list", cmd_products_list, "a fleet's products")
    c.add_argument("fleet")
    c.add_argument("--json", action="store_true")


def _register_devices(sub: Any, command: Callable[..., argparse.ArgumentParser]) -> None:
    from tokenport.fleets.records import ACTIVE, QUARANTINED, REVOKED, STATES

    devices = sub.add_parser("devices", help="a fleet's devices").add_subparsers(dest="sub", required=True)
    c = command(devices, "import", cmd_devices_import, "import serials by production batch (idempotent)")
    c.add_argument("fleet")
    c.add_argument("--sku", required=True)
    c.add_argument("--batch", required=True, help="the production batch (created on first import)")
    c.add_argument("--csv", required=True, help="serials in the first column; a 'serial' header is skipped")
    c.add_argument("--dry-run", action="store_true", help="sort the rows, write nothing")
    c.add_argument("--secrets-out", help="write serial,secret_hex of the new devices here (mode 0600)")
    c.add_argument("--batch-key-out", help="write the new batch's key here (mode 0600; only at creation)")
    c.add_argument("--json", action="store_true")
    c = command(devices, "show", cmd_devices_show, "a device, its entitlement and the tokens it has left")
    c.add_argument("serial")
    c.add_argument("--json", action="store_true")
    c = command(devices, "list", cmd_devices_list, "a fleet's devices, by serial")
    c.add_argument("fleet")
    c.add_argument("--state", choices=STATES)
    c.add_argument("--after", help="the last serial of the previous page")
    c.add_argument("--limit", type=int, default=100, help="at most this many (1-10000)")
    c.add_argument("--json", action="store_true")
    for action, target, help_ in (
        ("revoke", REVOKED, "revoke a device, for good"),
        ("quarantine", QUARANTINED, "hold a device for review"),
        ("release", ACTIVE, "release a quarantined device"),
    ):
        c = command(devices, action, cmd_devices_state, help_ + " (or every serial of --csv FILE)")
        c.add_argument("serial", nargs="?")
        c.add_argument("--reason", help="why (kept in the audit log)")
        c.add_argument("--csv", help="a file of serials (first column)")
        c.add_argument("--json", action="store_true")
        c.set_defaults(action=action, target=target)
    c = command(devices, "renew", cmd_devices_renew, "extend a device's entitlement by N days")
    c.add_argument("serial")
    c.add_argument("--days", type=int, required=True)
    c.add_argument("--json", action="store_true")
    c = command(devices, "flagged", cmd_devices_flagged, "devices flagged as possible clones, latest first")
    c.add_argument("fleet")
    c.add_argument("--limit", type=int, default=1000)
    c.add_argument("--json", action="store_true")


def register(sub: Any, command: Callable[..., argparse.ArgumentParser]) -> None:
    _register_fleets(sub, command)
    _register_products(sub, command)
    _register_devices(sub, command)
