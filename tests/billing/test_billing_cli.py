"""The billing commands' contract: real `tokenport` subprocesses over a fresh data directory."""

from __future__ import annotations

import json
import sqlite3
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from support.cli import Cli

from tokenport.billing.ledger import Lot, grant_tx
from tokenport.store.billing import BillingStore
from tokenport.store.db import open_database

TOKENPORT = str(Path(sys.executable).parent / "tokenport")
USD = 10**9


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path / "home")


def parse_z(text: str) -> datetime:
    assert text.endswith("Z"), text
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# --- prices ---------------------------------------------------------------------------------------


def test_prices_set_and_list(cli: Cli) -> None:
    p = cli.json(
        "prices", "set", "qwen3-32b", "--input", "0.30", "--output", "1.20", "--cached", "0.03",
        "--from", "2027-01-01",
    )  # fmt: skip
    assert p == {
        "model": "qwen3-32b",
        "effective_from": "2027-01-01T00:00:00Z",  # a bare date: midnight UTC
        "free": False,
        "usd_per_million": {
            "input": "0.300000",
            "cached": "0.030000",
            "output": "1.200000",
            "reasoning": None,
        },
    }
    # history added out of order; --cached defaults to the input price; an offset is normalised
    first = cli.json(
        "prices", "set", "qwen3-32b", "--input", "0.4", "--output", "1.6", "--from", "2026-01-01T00:00:00Z"
    )
    assert first["usd_per_million"] == {
        "input": "0.400000",
        "cached": "0.400000",
        "output": "1.600000",
        "reasoning": None,
    }
    mid = cli.json(
        "prices", "set", "qwen3-32b", "--input", "0.35", "--output", "1.4", "--reasoning", "2",
        "--from", "2026-06-01T09:00:00+02:00",
    )  # fmt: skip
    assert mid["effective_from"] == "2026-06-01T07:00:00Z"
    assert mid["usd_per_million"]["reasoning"] == "2.000000"

    before = datetime.now(UTC) - timedelta(seconds=1)
    free = cli.json("prices", "set", "smollm2-135m-instruct", "--free")
    assert free["free"] is True
    assert free["usd_per_million"] == {
        "input": "0.000000",
        "cached": "0.000000",
        "output": "0.000000",
        "reasoning": None,
    }
    assert (
        before <= parse_z(free["effective_from"]) <= datetime.now(UTC) + timedelta(seconds=1)
    )  # default: now
    cheap = cli.json("prices", "set", "a-model", "--input", "0.000001", "--output", "15")
    assert cheap["usd_per_million"]["input"] == "0.000001"

    listed = cli.json("prices", "list")
    assert [(i["model"], i["effective_from"]) for i in listed] == [
        ("a-model", cheap["effective_from"]),
        ("qwen3-32b", "2026-01-01T00:00:00Z"),
        ("qwen3-32b", "2026-06-01T07:00:00Z"),
        ("qwen3-32b", "2027-01-01T00:00:00Z"),
        ("smollm2-135m-instruct", free["effective_from"]),
    ]
    assert listed[3] == p and listed[1] == first and listed[2] == mid and listed[4] == free
    human = cli.out("prices", "list")
    assert "qwen3-32b" in human and "USD/M" in human and "free" in human
    assert "input 0.300000, cached 0.030000, output 1.200000 USD/M" in cli.out(
        "prices", "set", "other", "--input", "0.3", "--output", "1.2", "--cached", "0.03"
    )


def test_prices_set_refuses_bad_input(cli: Cli) -> None:
    cli.json("prices", "set", "m", "--input", "0.30", "--output", "1.20", "--from", "2026-01-01")
    assert "6 decimal places" in cli.fails("prices", "set", "m", "--input", "0.0000001", "--output", "1")
    assert "negative" in cli.fails("prices", "set", "m", "--input", "-1", "--output", "1")
    assert "required" in cli.fails("prices", "set", "m", "--input", "1")
    assert "already has a price" in cli.fails(
        "prices", "set", "m", "--input", "1", "--output", "2", "--from", "2026-01-01T00:00:00Z"
    )
    assert "timezone" in cli.fails(
        "prices", "set", "m", "--input", "1", "--output", "2", "--from", "2026-02-01T00:00:00"
    )
    assert "ISO 8601" in cli.fails("prices", "set", "m", "--input", "1", "--output", "2", "--from", "soon")
    cli.fails("prices", "set", "m", "--input", "1e30", "--output", "1")  # beyond a 64-bit column
    assert [(i["model"], i["effective_from"]) for i in cli.json("prices", "list")] == [
        ("m", "2026-01-01T00:00:00Z")
    ]


# --- credits and balance --------------------------------------------------------------------------


def test_credits_grant_and_balance(cli: Cli) -> None:
    cli.out("tenants", "create", "acme")
    paid = cli.json("credits", "grant", "acme", "10")
    assert paid["id"].startswith("lot_")
    assert (paid["promo"], paid["amount_usd"], paid["amount_nano_usd"], paid["expires_at"]) == (
        False,
        "10.000000000",
        10 * USD,
        None,
    )
    assert abs(parse_z(paid["created_at"]) - datetime.now(UTC)) < timedelta(minutes=1)
    promo = cli.json("credits", "grant", "acme", "5", "--promo", "--expires", "2099-01-01")
    assert promo["promo"] is True
    assert promo["expires_at"] == "2099-01-02T00:00:00Z"  # usable through that day (UTC)
    soon = cli.json("credits", "grant", "acme", "2.5", "--expires", "2098-06-30T12:00:00+00:00")
    assert soon["expires_at"] == "2098-06-30T12:00:00Z"
    tiny = cli.json("credits", "grant", "acme", "0.000000001", "--expires", "2098-06-30T12:00:00Z")
    assert tiny["amount_nano_usd"] == 1 and tiny["amount_usd"] == "0.000000001"
    human = cli.out("credits", "grant", "acme", "1", "--promo", "--expires", "2099-01-01")
    assert "granted 1.000000000 USD (promotional) to acme" in human and "2099-01-02T00:00:00Z" in human

    bal = cli.json("balance", "acme")
    known = {paid["id"], promo["id"], soon["id"], tiny["id"]}
    (promo2,) = [lot for lot in bal["lots"] if lot["id"] not in known]
    assert promo2["id"] in human
    assert bal["tenant"] == "acme"
    assert bal["available_usd"] == "18.500000001"
    assert bal["available_nano_usd"] == 18_500_000_001 and type(bal["available_nano_usd"]) is int
    # burn order: soonest expiry first, then oldest; never-expiring last
    assert [lot["id"] for lot in bal["lots"]] == [
        soon["id"],
        tiny["id"],
        promo["id"],
        promo2["id"],
        paid["id"],
    ]
    assert promo2["promo"] is True and promo2["amount_nano_usd"] == USD
    for lot in bal["lots"]:
        assert (
            lot["remaining_nano_usd"] == lot["amount_nano_usd"] and lot["remaining_usd"] == lot["amount_usd"]
        )
        assert lot["expired"] is False
    assert "18.500000001 USD available" in cli.out("balance", "acme")

    assert "positive" in cli.fails("credits", "grant", "acme", "0")
    assert "future" in cli.fails("credits", "grant", "acme", "1", "--expires", "2020-01-01")
    cli.fails("credits", "grant", "acme", "10000000000")  # $10 billion: beyond a 64-bit column
    assert "nobody" in cli.fails("credits", "grant", "nobody", "1")
    assert cli.json("balance", "acme")["available_nano_usd"] == 18_500_000_001  # nothing was granted


def _grant_in_the_past(cli: Cli, lot_id: str, amount: int, expired_ago: timedelta, promo: bool) -> None:
    """A lot granted two days ago that has already expired, straight into the same database."""
    engine = open_database(f"sqlite:///{cli.db}")
    try:
        with sqlite3.connect(cli.db) as conn:
            tenant_id = conn.execute("SELECT id FROM tenants WHERE name = 'acme'").fetchone()[0]
        now = datetime.now(UTC)
        lot = Lot(lot_id, tenant_id, amount, promo, now - timedelta(days=2), now - expired_ago)
        BillingStore(engine).post(grant_tx(f"tx_{lot_id}", lot), lot)
    finally:
        engine.dispose()


def _expiries(cli: Cli) -> dict[str, list[tuple[str, int]]]:
    with sqlite3.connect(cli.db) as conn:
        rows = conn.execute(
            "SELECT t.id, e.account, e.amount FROM ledger_transactions t JOIN ledger_entries e"
            " ON e.tx_id = t.id WHERE t.kind = 'expiry' ORDER BY e.id"
        ).fetchall()
    out: dict[str, list[tuple[str, int]]] = {}
    for tx_id, account, amount in rows:
        out.setdefault(tx_id, []).append((account, amount))
    return out


def test_credits_expire(cli: Cli) -> None:
    cli.out("tenants", "create", "acme")
    forever = cli.json("credits", "grant", "acme", "1")
    _grant_in_the_past(cli, "lot_old", 3 * USD, timedelta(days=1), promo=False)
    _grant_in_the_past(cli, "lot_recent", 2 * USD, timedelta(minutes=5), promo=True)

    bal = cli.json("balance", "acme")
    assert bal["available_nano_usd"] == USD  # expired lots do not count, before any expiry entry
    assert [(x["id"], x["expired"], x["remaining_nano_usd"]) for x in bal["lots"]] == [
        ("lot_old", True, 3 * USD),
        ("lot_recent", True, 2 * USD),
        (forever["id"], False, USD),
    ]
    # by default a lot that expired minutes ago is left for requests still settling
    expired = cli.json("credits", "expire")["expired"]
    assert len(expired) == 1
    assert _expiries(cli) == {expired[0]: [("lot:lot_old", -3 * USD), ("revenue:breakage", 3 * USD)]}
    # without the grace, only the recent lot is left: the old one is not expired twice
    assert "1 expiry transactions posted" in cli.out("credits", "expire", "--grace-minutes", "0")
    recent = [tx for tx in _expiries(cli) if tx != expired[0]]
    assert _expiries(cli)[recent[0]] == [("lot:lot_recent", -2 * USD), ("funding:promo", 2 * USD)]
    assert "0 expiry transactions posted" in cli.out(
        "credits", "expire", "--grace-minutes", "0"
    )  # idempotent

    bal = cli.json("balance", "acme")
    assert bal["available_nano_usd"] == USD
    assert [(x["remaining_nano_usd"], x["expired"]) for x in bal["lots"]] == [
        (0, True),
        (0, True),
        (USD, False),
    ]
    assert cli.json("ledger", "verify") == {"ok": True, "problems": []}


def test_credits_expire_never_takes_unexpired_credit(cli: Cli) -> None:
    """--grace-minutes is validated: a negative grace would move the cut-off into the future
    (`lot.expired(now - grace)`) and send credit still valid for an hour to breakage; 'nan' and
    '1e20' ended in a traceback (ValueError / OverflowError from timedelta)."""
    cli.out("tenants", "create", "acme")
    in_an_hour = (datetime.now(UTC) + timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    cli.json("credits", "grant", "acme", "5", "--expires", in_an_hour)
    wrong = []
    for grace in ("nan", "1e20", "-120"):
        res = cli.run("credits", "expire", "--grace-minutes", grace)
        if "Traceback" in res.stderr or res.returncode == 0 or not res.stderr.startswith("tokenport: error:"):
            wrong.append((grace, res.returncode, res.stdout.strip(), res.stderr.strip().splitlines()[-1:]))
    assert cli.json("balance", "acme")["available_nano_usd"] == 5 * USD, wrong
    assert _expiries(cli) == {}
    assert wrong == []


# --- ledger verify --------------------------------------------------------------------------------


def test_ledger_verify_detects_tampering(cli: Cli) -> None:
    cli.out("tenants", "create", "acme")
    lot = cli.json("credits", "grant", "acme", "10")
    res = cli.run("ledger", "verify")
    assert res.returncode == 0 and "every invariant holds" in res.stdout, res.stdout + res.stderr

    with sqlite3.connect(cli.db) as conn:
        changed = conn.execute(
            "UPDATE ledger_entries SET amount = amount + 1 WHERE account = ?", (f"lot:{lot['id']}",)
        ).rowcount
        conn.execute(  # and a transaction whose entries are gone
            "INSERT INTO ledger_transactions (id, kind, tenant_id, created_at) VALUES (?, ?, ?, ?)",
            ("tx_ghost", "grant", "ten_x", "2026-01-01 00:00:00.000000"),
        )
    assert changed == 1

    res = cli.run("ledger", "verify")
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr
    assert "entries sum to 1, not 0" in res.stdout
    assert f"lot {lot['id']} does not have exactly one grant" in res.stdout
    assert "transaction tx_ghost has no entries" in res.stdout
    assert "every invariant holds" not in res.stdout
    res = cli.run("ledger", "verify", "--json")
    assert res.returncode == 1
    report = json.loads(res.stdout)
    assert report["ok"] is False and len(report["problems"]) == 4, report
    assert any("entries sum to 1, not 0" in p for p in report["problems"])
