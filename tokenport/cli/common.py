"""What the commands share: settings, services, output."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from tokenport.config import ConfigError, Settings, load_settings


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(getattr(args, "config", None))


class NoDatabase(ConfigError):
    pass


def _service(args: argparse.Namespace):
    from tokenport.store.db import open_database
    from tokenport.store.tenants import TenantStore
    from tokenport.tenancy.service import TenancyService

    settings = _settings(args)
    if not getattr(args, "creates_database", False):
        _require_database(settings, args)
    engine = open_database(settings.database_url)
    if settings.redis_url:  # running gateways apply what this command changes at once
        from tokenport.store.broadcast import announce_changes

        announce_changes(engine, settings.redis_url)
    return TenancyService(TenantStore(engine), settings.default_zone), engine


def _require_database(settings: Settings, args: argparse.Namespace) -> None:
    """Commands that only read or change what exists never create a database: a wrong data
    directory is an error naming where the path came from, not an empty database."""
    from sqlalchemy import inspect
    from sqlalchemy.exc import SQLAlchemyError

    from tokenport.store.db import connect, normalise_url

    url = normalise_url(settings.database_url)
    origin = _origin(settings, args)
    create = "create one with `tokenport tenants create NAME` (or `tokenport serve`)"
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if not path or path == ":memory:" or Path(path).exists():
            return
        raise NoDatabase(
            f"no tokenport database at {path} ({origin}); nothing was created. Point TOKENPORT_HOME "
            f"(or --config) at the data directory that holds it, or {create}"
        )
    engine = connect(url)
    shown = engine.url.render_as_string(hide_password=True)
    try:
        with engine.connect() as conn:
            migrated = inspect(conn).has_table("alembic_version")
    except SQLAlchemyError as exc:
        raise NoDatabase(f"cannot open the database {shown} ({origin}): {type(exc).__name__}") from None
    finally:
        engine.dispose()
    if not migrated:
        raise NoDatabase(f"the database {shown} ({origin}) holds no tokenport data; {create}")


def _origin(settings: Settings, args: argparse.Namespace) -> str:
    """Where the database's location came from, in words."""
    if os.environ.get("TOKENPORT_DATABASE_URL"):
        return "from TOKENPORT_DATABASE_URL"
    config = getattr(args, "config", None)
    if settings.database_url != f"sqlite:///{settings.home / 'tokenport.db'}":
        return f"from [database] url in {config or settings.home / 'tokenport.toml'}"
    home = (
        f"TOKENPORT_HOME={os.environ['TOKENPORT_HOME']}"
        if os.environ.get("TOKENPORT_HOME")
        else f"the default data directory {settings.home}; TOKENPORT_HOME is not set"
    )
    return f"the data directory: {home}" + (f"; config {config}" if config else "")


def _print(obj: object, as_json: bool, lines: list[str]) -> None:
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


def _billing(args: argparse.Namespace):
    from tokenport.billing.service import BillingService
    from tokenport.store.repositories import billing_repositories

    svc, engine = _service(args)
    return BillingService(billing_repositories(engine), svc)


def _audit(args: argparse.Namespace):
    from tokenport.audit.service import AuditService
    from tokenport.store.audit import AuditStore

    settings = _settings(args)
    _, engine = _service(args)
    return AuditService(AuditStore(engine), settings.keys_dir)


def _vault(args: argparse.Namespace):
    from tokenport.store.retention import RetentionStore
    from tokenport.zones.vault import Vault

    audit = _audit(args)
    return Vault(RetentionStore(audit.store.engine), audit.keys_dir, audit)


def _energy(args: argparse.Namespace):
    from tokenport.energy.service import EnergyService
    from tokenport.store.energy import EnergyStore

    svc, engine = _service(args)
    return EnergyService(EnergyStore(engine), _settings(args).energy), svc
