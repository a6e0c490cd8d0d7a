"""What the commands share: settings, services, output."""

from __future__ import annotations

import argparse
import json

from tokenport.config import Settings, load_settings


def _settings(args) -> Settings:
    return load_settings(getattr(args, "config", None))


def _service(args):
    from tokenport.store.db import open_database
    from tokenport.store.tenants import TenantStore
    from tokenport.tenancy.service import TenancyService

    settings = _settings(args)
    engine = open_database(settings.database_url)
    if settings.redis_url:  # running gateways apply what this command changes at once
        from tokenport.store.broadcast import announce_changes

        announce_changes(engine, settings.redis_url)
    return TenancyService(TenantStore(engine), settings.default_zone), engine


def _print(obj, as_json: bool, lines) -> None:
    if as_json:
        print(json.dumps(obj, indent=2))
    else:
        for line in lines:
            print(line)


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


def parse_duration(text: str) -> int:
    """Seconds, from `3600`, `90s`, `15m`, `24h` or `7d`."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], units[text[-1]]) if text and text[-1] in units else (text, 1)
    if not number.isdigit() or int(number) <= 0:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 3600, 15m, 24h, 7d)")
    return int(number) * unit


def _billing(args):
    from tokenport.billing.service import BillingService
    from tokenport.store.billing import BillingStore

    svc, engine = _service(args)
    return BillingService(BillingStore(engine), svc)


def _audit(args):
    from tokenport.audit.service import AuditService
    from tokenport.store.audit import AuditStore

    settings = _settings(args)
    _, engine = _service(args)
    return AuditService(AuditStore(engine), settings.keys_dir)


def _vault(args):
    from tokenport.store.retention import RetentionStore
    from tokenport.zones.vault import Vault

    audit = _audit(args)
    return Vault(RetentionStore(audit.store.engine), audit.keys_dir, audit)


def _energy(args):
    from tokenport.energy.service import EnergyService
    from tokenport.store.energy import EnergyStore

    svc, engine = _service(args)
    return EnergyService(EnergyStore(engine), _settings(args).energy), svc
