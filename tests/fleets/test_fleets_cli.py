"""The fleet commands' contract (`tokenport fleets|products|devices`): real subprocesses over a
fresh data directory; an activation is done in-process on the same database, as a gateway would."""

from __future__ import annotations

import csv
import hashlib
import hmac
import sqlite3
import stat
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from support.cli import Cli

from tokenport.audit.service import AuditService
from tokenport.billing.ledger import package_tx_id
from tokenport.fleets.identity import activation_mac, device_secret
from tokenport.fleets.service import FleetService
from tokenport.keyfiles import device_token_key
from tokenport.store.audit import AuditStore
from tokenport.store.billing import BillingStore
from tokenport.store.db import open_database
from tokenport.store.fleets import FleetStore
from tokenport.store.retention import RetentionStore
from tokenport.store.tenants import TenantStore
from tokenport.tenancy.service import TenancyService
from tokenport.zones.vault import Vault


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path / "home")


@pytest.fixture
def toys(cli: Cli) -> dict:
    """A maker (tenant toyco) with a fleet `toys` and a product TOY-1."""
    cli.ok("tenants", "create", "toyco")
    cli.ok("fleets", "create", "toyco", "toys")
    return cli.json(
        "products", "create", "toys", "TOY-1", "--entitlement-days", "365", "--daily-tokens", "1000",
        "--monthly-tokens", "20000", "--package-fee-usd", "1.25",
    )  # fmt: skip


def write_csv(path: Path, rows: list[str]) -> Path:
    path.write_text("".join(r + "\n" for r in rows))
    return path


def rows_of(path: Path) -> list[list[str]]:
    with path.open(newline="") as f:
        return list(csv.reader(f))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def sql(cli: Cli, query: str) -> list[tuple]:
    conn = sqlite3.connect(cli.db)
    try:
        return conn.execute(query).fetchall()
    finally:
        conn.close()


# --- fleets and products ----------------------------------------------------------------------------


def test_fleets_create_and_list(cli: Cli) -> None:
    cli.ok("zones", "create", "domestic")
    cli.ok("tenants", "create", "toyco", "--zone", "domestic")
    cli.ok("tenants", "create", "rival")
    f = cli.json("fleets", "create", "toyco", "toys", "--max-addresses", "5", "--auto-quarantine")
    assert f["id"].startswith("flt_")
    assert {k: v for k, v in f.items() if k != "id"} == {
        "name": "toys",
        "tenant": "toyco",
        "zone": "domestic",
        "max_addresses_per_hour": 5,
        "auto_quarantine": True,
    }
    g = cli.json("fleets", "create", "rival", "robots")
    assert (g["zone"], g["max_addresses_per_hour"], g["auto_quarantine"]) == ("overseas", 3, False)
    listed = cli.json("fleets", "list")
    assert [(i["name"], i["tenant"], i["devices"]) for i in listed] == [
        ("toys", "toyco", {}),
        ("robots", "rival", {}),
    ]
    assert [i["name"] for i in cli.json("fleets", "list", "--tenant", "rival")] == ["robots"]
    assert "toys" in cli.out("fleets", "list") and "robots" in cli.out("fleets", "list")

    assert "exists" in cli.fails("fleets", "create", "rival", "toys")
    assert "no tenant" in cli.fails("fleets", "create", "nobody", "x")
    assert "fleet name" in cli.fails("fleets", "create", "toyco", "bad name")
    assert "positive" in cli.fails("fleets", "create", "toyco", "x", "--max-addresses", "0")
    assert [i["name"] for i in cli.json("fleets", "list")] == ["toys", "robots"]


def test_products_create_and_list(cli: Cli) -> None:
    cli.ok("tenants", "create", "toyco")
    cli.ok("fleets", "create", "toyco", "toys")
    p = cli.json(
        "products", "create", "toys", "TOY-1", "--entitlement-days", "365", "--daily-tokens", "20000",
        "--monthly-tokens", "300000", "--rpm", "10", "--concurrency", "2", "--models", "toy-chat, toy-big",
        "--max-output", "256", "--reset-tz", "Asia/Shanghai", "--package-fee-usd", "1.5",
        "--multiplier", "toy-big=2.5", "--multiplier", "toy-chat=0.5",
    )  # fmt: skip
    assert p["id"].startswith("prd_")
    assert {k: v for k, v in p.items() if k != "id"} == {
        "fleet": "toys",
        "sku": "TOY-1",
        "entitlement_days": 365,
        "daily_tokens": 20000,
        "monthly_tokens": 300000,
        "rpm": 10,
        "concurrency": 2,
        "models": ["toy-chat", "toy-big"],
        "max_output": 256,
        "reset_tz": "Asia/Shanghai",
        "package_fee_usd": "1.500000000",
        "multipliers": {"toy-big": 2.5, "toy-chat": 0.5},
    }
    base = ["products", "create", "toys", "TOY-2", "--entitlement-days", "30", "--daily-tokens", "10"]
    plain = cli.json(*base, "--monthly-tokens", "100")
    assert (plain["models"], plain["multipliers"], plain["reset_tz"], plain["package_fee_usd"]) == (
        [],
        {},
        "UTC",
        "0.000000000",
    )
    assert cli.json("products", "list", "toys") == [p, plain]
    assert "TOY-1" in cli.out("products", "list", "toys")

    assert "has a product" in cli.fails(*base, "--monthly-tokens", "100")
    bad = [*base[:3], "TOY-3", *base[4:], "--monthly-tokens", "100"]
    assert "IANA" in cli.fails(*bad, "--reset-tz", "Mars/Olympus")
    assert "negative" in cli.fails(*bad, "--package-fee-usd", "-1")
    assert "MODEL=FACTOR" in cli.fails(*bad, "--multiplier", "toy-big")
    assert "--monthly-tokens must be a positive integer" in cli.fails(*bad[:-1], "0")
    assert "no fleet" in cli.fails("products", "create", "nofleet", "X", *base[4:], "--monthly-tokens", "1")
    assert "no fleet" in cli.fails("products", "list", "nofleet")
    assert [i["sku"] for i in cli.json("products", "list", "toys")] == ["TOY-1", "TOY-2"]


# --- import -----------------------------------------------------------------------------------------


def test_import_writes_secrets_and_the_batch_key_once(cli: Cli, toys: dict, tmp_path: Path) -> None:
    src = write_csv(tmp_path / "s.csv", ["Serial", "SN-1", "SN-2", "", "bad serial", "SN-1", "SN-3"])
    secrets, key_file = tmp_path / "secrets.csv", tmp_path / "batch.key"
    view = cli.json(
        "devices", "import", "toys", "--sku", "TOY-1", "--batch", "b1", "--csv", str(src),
        "--secrets-out", str(secrets), "--batch-key-out", str(key_file),
    )  # fmt: skip
    assert (view["new"], view["existing"], view["batch_created"], view["dry_run"]) == (3, 0, True, False)
    assert view["rejected"] == [  # numbered as in the file: the header is row 1
        {"row": 4, "serial": "", "reason": "empty"},
        {
            "row": 5,
            "serial": "bad serial",
            "reason": "a serial is 1-64 letters, digits, '.', '_', ':' or '-'",
        },
        {"row": 6, "serial": "SN-1", "reason": "repeated in this file"},
    ]
    assert mode(secrets) == 0o600 and mode(key_file) == 0o600
    key = bytes.fromhex(key_file.read_text().strip())
    assert len(key) == 32
    written = rows_of(secrets)
    assert written[0] == ["serial", "secret_hex"]
    assert [r[0] for r in written[1:]] == ["SN-1", "SN-2", "SN-3"]
    for serial, secret in written[1:]:
        assert secret == hmac.new(key, serial.encode(), hashlib.sha256).hexdigest()
    assert not any(key.hex() in r[0] for r in sql(cli, "SELECT hex(sealed_key) FROM device_batches"))

    # again: nothing new; the key is not handed out twice, and no file is overwritten
    again = cli.json("devices", "import", "toys", "--sku", "TOY-1", "--batch", "b1", "--csv", str(src))
    assert (again["new"], again["existing"], len(again["rejected"]), again["batch_created"]) == (
        0,
        3,
        3,
        False,
    )
    more = write_csv(tmp_path / "more.csv", ["SN-3", "SN-4"])
    key2 = tmp_path / "key2"
    err = cli.fails(
        "devices", "import", "toys", "--sku", "TOY-1", "--batch", "b1", "--csv", str(more),
        "--batch-key-out", str(key2),
    )  # fmt: skip
    assert "handed out once" in err and not key2.exists()
    before = secrets.read_text()
    err = cli.fails(
        "devices", "import", "toys", "--sku", "TOY-1", "--batch", "b1", "--csv", str(more),
        "--secrets-out", str(secrets),
    )  # fmt: skip
    assert "not overwritten" in err and secrets.read_text() == before
    assert sql(cli, "SELECT count(*) FROM devices") == [(3,)]  # refused before importing anything

    # secrets of the new devices only, from the same batch key
    secrets2 = tmp_path / "secrets2.csv"
    out = cli.json(
        "devices", "import", "toys", "--sku", "TOY-1", "--batch", "b1", "--csv", str(more),
        "--secrets-out", str(secrets2),
    )  # fmt: skip
    assert (out["new"], out["existing"]) == (1, 1)
    assert rows_of(secrets2)[1:] == [["SN-4", device_secret(key, "SN-4").hex()]]
    text = cli.out("devices", "import", "toys", "--sku", "TOY-1", "--batch", "b1", "--csv", str(src))
    assert "0 new, 3 existing, 3 rejected" in text and "row 5: 'bad serial'" in text


def test_a_dry_run_writes_nothing(cli: Cli, toys: dict, tmp_path: Path) -> None:
    src = write_csv(tmp_path / "s.csv", ["SN-1", "SN-2", "SN 3"])
    changes = sql(cli, "SELECT count(*) FROM changes")
    base = ["devices", "import", "toys", "--sku", "TOY-1", "--batch", "b1", "--csv", str(src)]
    view = cli.json(*base, "--dry-run")
    assert (view["new"], view["dry_run"], view["batch_created"]) == (2, True, True)
    assert view["rejected"] == [
        {"row": 3, "serial": "SN 3", "reason": "a serial is 1-64 letters, digits, '.', '_', ':' or '-'"}
    ]
    assert "dry run, nothing written" in cli.out(*base, "--dry-run")
    assert sql(cli, "SELECT count(*) FROM devices") == [(0,)]
    assert sql(cli, "SELECT count(*) FROM device_batches") == [(0,)]
    assert sql(cli, "SELECT count(*) FROM changes") == changes
    assert cli.json("devices", "list", "toys") == {"data": [], "next_after": None}
    assert "--dry-run writes nothing" in cli.fails(*base, "--dry-run", "--secrets-out", str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()
    assert cli.json(*base)["new"] == 2  # the real thing


def test_a_serial_of_another_fleet_is_rejected_with_its_row(cli: Cli, toys: dict, tmp_path: Path) -> None:
    cli.ok("tenants", "create", "rival")
    cli.ok("fleets", "create", "rival", "robots")
    cli.ok(
        "products",
        "create",
        "robots",
        "BOT",
        "--entitlement-days",
        "1",
        "--daily-tokens",
        "1",
        "--monthly-tokens",
        "1",
    )
    cli.ok(
        "devices",
        "import",
        "toys",
        "--sku",
        "TOY-1",
        "--batch",
        "b1",
        "--csv",
        str(write_csv(tmp_path / "a.csv", ["SN-1"])),
    )
    theirs = write_csv(tmp_path / "b.csv", ["serial", "RB-1", "RB-2", "SN-1", "RB-3"])
    view = cli.json("devices", "import", "robots", "--sku", "BOT", "--batch", "r1", "--csv", str(theirs))
    assert view["new"] == 3
    assert view["rejected"] == [{"row": 4, "serial": "SN-1", "reason": "registered to another fleet"}]
    assert cli.json("devices", "show", "SN-1")["fleet"] == "toys"


def test_import_errors(cli: Cli, toys: dict, tmp_path: Path) -> None:
    src = write_csv(tmp_path / "s.csv", ["SN-1"])
    base = ["devices", "import", "toys", "--batch", "b1"]
    assert "no such file" in cli.fails(*base, "--sku", "TOY-1", "--csv", str(tmp_path / "missing.csv"))
    assert "no product 'TOY-9'" in cli.fails(*base, "--sku", "TOY-9", "--csv", str(src))
    assert "no fleet" in cli.fails(
        "devices", "import", "nofleet", "--sku", "TOY-1", "--batch", "b", "--csv", str(src)
    )
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"SN-1\n\xff\xfe\xfa\n")
    assert "cannot read" in cli.fails(*base, "--sku", "TOY-1", "--csv", str(latin))
    assert sql(cli, "SELECT count(*) FROM devices") == [(0,)]


# --- a device's lifecycle ---------------------------------------------------------------------------


def test_devices_list_pages_by_serial(cli: Cli, toys: dict, tmp_path: Path) -> None:
    src = write_csv(tmp_path / "s.csv", [f"SN-{i}" for i in (5, 1, 4, 2, 3)])
    cli.ok("devices", "import", "toys", "--sku", "TOY-1", "--batch", "b1", "--csv", str(src))
    page = cli.json("devices", "list", "toys", "--limit", "2")
    assert [d["serial"] for d in page["data"]] == ["SN-1", "SN-2"] and page["next_after"] == "SN-2"
    page = cli.json("devices", "list", "toys", "--limit", "2", "--after", "SN-4")
    assert [d["serial"] for d in page["data"]] == ["SN-5"] and page["next_after"] is None
    assert page["data"][0] == {
        "serial": "SN-5",
        "fleet": "toys",
        "product": "TOY-1",
        "batch_id": page["data"][0]["batch_id"],
        "state": "imported",
        "activated_at": None,
        "entitlement_ends_at": None,
    }
    assert "--after SN-2" in cli.out("devices", "list", "toys", "--limit", "2")
    cli.ok("devices", "quarantine", "SN-3")
    assert [d["serial"] for d in cli.json("devices", "list", "toys", "--state", "quarantined")["data"]] == [
        "SN-3"
    ]
    assert cli.run("devices", "list", "toys", "--state", "sleeping").returncode == 2  # argparse's choices


def test_state_changes_single_and_from_a_csv(cli: Cli, toys: dict, tmp_path: Path) -> None:
    src = write_csv(tmp_path / "s.csv", ["SN-1", "SN-2", "SN-3", "SN-4"])
    cli.ok("devices", "import", "toys", "--sku", "TOY-1", "--batch", "b1", "--csv", str(src))
    assert "is not quarantined" in cli.fails("devices", "release", "SN-1")
    assert cli.json("devices", "quarantine", "SN-1", "--reason", "9 addresses") == {
        "serial": "SN-1",
        "state": "quarantined",
    }
    assert cli.json("devices", "release", "SN-1")["state"] == "imported"  # never activated
    assert cli.out("devices", "revoke", "SN-2", "--reason", "cloned").strip() == "SN-2: revoked"
    assert "for good" in cli.fails("devices", "release", "SN-2")
    assert "for good" in cli.fails("devices", "quarantine", "SN-2")
    assert "no device 'SN-404'" in cli.fails("devices", "revoke", "SN-404")
    assert "one of them" in cli.fails("devices", "revoke")
    assert "one of them" in cli.fails("devices", "revoke", "SN-1", "--csv", str(src))

    bulk = write_csv(tmp_path / "bulk.csv", ["serial", "SN-3", "SN-404", "", "SN-2", "SN-4"])
    view = cli.json("devices", "quarantine", "--csv", str(bulk), "--reason", "audit")
    assert view == {
        "action": "quarantine",
        "done": 2,
        "unknown": [{"row": 3, "serial": "SN-404"}],
        "refused": [{"row": 5, "serial": "SN-2", "reason": "device 'SN-2' is revoked, for good"}],
    }
    assert [cli.json("devices", "show", s)["state"] for s in ("SN-1", "SN-2", "SN-3", "SN-4")] == [
        "imported",
        "revoked",
        "quarantined",
        "quarantined",
    ]
    released = cli.out("devices", "release", "--csv", str(bulk))
    assert released.startswith("release: 2 done, 1 unknown, 1 refused")

    device_changes = sql(cli, "SELECT ref FROM changes WHERE kind = 'device' ORDER BY id")
    assert [r[0] for r in device_changes] == ["SN-1", "SN-1", "SN-2", "SN-3", "SN-4", "SN-3", "SN-4"]
    audited = sql(
        cli,
        "SELECT json_extract(entry, '$.action'), json_extract(entry, '$.serial'), "
        "json_extract(entry, '$.reason') FROM audit_entries "
        "WHERE json_extract(entry, '$.action') LIKE 'device.%' ORDER BY idx",
    )
    assert audited[:3] == [
        ("device.quarantine", "SN-1", "9 addresses"),
        ("device.release", "SN-1", ""),
        ("device.revoke", "SN-2", "cloned"),
    ]
    assert len(audited) == 7


def activate(cli: Cli, serial: str, key: bytes) -> dict:
    """What the device endpoint does, in-process on the CLI's database and key directory."""
    engine = open_database(f"sqlite:///{cli.db}")
    try:
        keys = cli.home / "keys"
        vault = Vault(RetentionStore(engine), keys, AuditService(AuditStore(engine), keys))
        tenancy = TenancyService(TenantStore(engine), "overseas")
        svc = FleetService(FleetStore(engine), tenancy, vault.zone_key, device_token_key(keys))
        nonce = svc.challenge(serial)["nonce"]
        return svc.activate(serial, nonce, activation_mac(device_secret(key, serial), serial, nonce))
    finally:
        engine.dispose()


def test_activation_show_renew_and_the_ledger(cli: Cli, toys: dict, tmp_path: Path) -> None:
    src = write_csv(tmp_path / "s.csv", ["SN-1", "SN-2"])
    key_file = tmp_path / "b1.key"
    cli.ok(
        "devices", "import", "toys", "--sku", "TOY-1", "--batch", "b1", "--csv", str(src),
        "--batch-key-out", str(key_file),
    )  # fmt: skip
    key = bytes.fromhex(key_file.read_text())
    shown = cli.json("devices", "show", "SN-1")
    assert (shown["state"], shown["batch"], shown["product"], shown["activated_at"]) == (
        "imported",
        "b1",
        "TOY-1",
        None,
    )
    assert shown["entitlement"] == {
        "product": "TOY-1",
        "ends_at": None,
        "days_left": 365,
        "tokens_left_today": 1000,
        "tokens_left_this_month": 20000,
    }
    assert "never activated" in cli.fails("devices", "renew", "SN-1", "--days", "30")

    answer = activate(cli, "SN-1", key)
    assert answer["device_token"].startswith("tpd_")
    activate(cli, "SN-1", key)  # a second activation: a new token, no second fee
    shown = cli.json("devices", "show", "SN-1")
    assert shown["state"] == "active" and shown["entitlement"]["days_left"] in (364, 365)
    ends = datetime.fromisoformat(shown["entitlement_ends_at"].replace("Z", "+00:00"))
    assert ends - datetime.fromisoformat(shown["activated_at"].replace("Z", "+00:00")) == timedelta(days=365)

    renewed = cli.json("devices", "renew", "SN-1", "--days", "30")
    assert renewed["entitlement_ends_at"] == (ends + timedelta(days=30)).isoformat().replace("+00:00", "Z")
    assert "positive" in cli.fails("devices", "renew", "SN-1", "--days", "0")
    assert "entitled until" in cli.out("devices", "renew", "SN-1", "--days", "1")

    engine = open_database(f"sqlite:///{cli.db}")
    try:
        tenant_id = TenantStore(engine).get_tenant("toyco").id
        txs = [t for t in BillingStore(engine).load_transactions(tenant_id) if t.kind == "package"]
    finally:
        engine.dispose()
    fleet_id = cli.json("fleets", "list")[0]["id"]
    assert [(t.id, sorted(e.amount for e in t.entries)) for t in txs] == [
        (package_tx_id("SN-1", fleet_id), [-1_250_000_000, 1_250_000_000])
    ]
    assert cli.json("ledger", "verify") == {"ok": True, "problems": []}
    assert sql(cli, "SELECT count(*) FROM changes WHERE kind = 'ledger'") == [(1,)]
    assert sql(cli, "SELECT ref FROM changes WHERE kind = 'device' ORDER BY id") == [("SN-1",)] * 3
    assert "activated never" not in cli.out("devices", "show", "SN-1")
    assert "no device" in cli.fails("devices", "show", "SN-404")
