"""The fleet store (`store/fleets.py`) behind the fleet service, on SQLite and on PostgreSQL: fleets,
products, imports by batch, a device's lifecycle, challenges, activation with its package fee,
and the per-device day counters kept with the usage records."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, func, select
from support.rows import usage_row

from tokenport.billing.ledger import LedgerError, package_tx, package_tx_id
from tokenport.billing.service import BillingService
from tokenport.clock import FakeClock
from tokenport.fleets.identity import activation_mac, device_secret, open_batch_key, read_token
from tokenport.fleets.records import ACTIVE, IMPORTED, QUARANTINED, REVOKED, Device
from tokenport.fleets.service import ActivationRefused, FleetService
from tokenport.store.audit import AuditStore
from tokenport.store.billing import BillingStore
from tokenport.store.fleets import FleetStore
from tokenport.store.repositories import billing_repositories
from tokenport.store.schema import (
    changes,
    device_batches,
    device_days,
    device_nonces,
    devices,
    ledger_transactions,
    metadata,
)
from tokenport.store.tenants import TenantStore
from tokenport.store.usage import UsageStore
from tokenport.tenancy.service import Conflict, InvalidInput, NotFound, TenancyService

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
USD = 10**9


def zone_key(zone: str) -> bytes:
    return hashlib.sha256(b"test zone key|" + zone.encode()).digest()


@pytest.fixture
def tenancy(engine: Engine, clock: FakeClock) -> TenancyService:
    svc = TenancyService(TenantStore(engine), "overseas", clock)
    svc.create_zone("domestic")
    svc.create_tenant("toyco", "domestic")
    svc.create_tenant("rival")
    return svc


@pytest.fixture
def store(engine: Engine) -> FleetStore:
    return FleetStore(engine)


@pytest.fixture
def svc(store: FleetStore, tenancy: TenancyService, clock: FakeClock) -> FleetService:
    return FleetService(store, tenancy, zone_key, os.urandom(32), clock)


@pytest.fixture
def toys(svc: FleetService):
    """A fleet of toyco's with one product: 1 USD per activation, 365 days, 1000 tokens a day."""
    fleet = svc.create_fleet("toyco", "toys", max_addresses=5, auto_quarantine=True)
    product = svc.create_product(
        "toys", "TOY-1", 365, 1000, 20_000, rpm=10, concurrency=2, models=["toy-chat", "toy-big"],
        max_output=256, reset_tz="Asia/Shanghai", package_fee_usd="1", multipliers=["toy-big=2.5"],
    )  # fmt: skip
    return fleet, product


def count(engine: Engine, table, *where) -> int:
    q = select(func.count()).select_from(table)
    for w in where:
        q = q.where(w)
    with engine.connect() as conn:
        return conn.execute(q).scalar_one()


def change_rows(engine: Engine) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        return [(r.kind, r.ref) for r in conn.execute(select(changes).order_by(changes.c.id))]


def actions(engine: Engine, zone: str) -> list[dict]:
    entries = [json.loads(e.entry) for e in AuditStore(engine).entries(zone)]
    return [e for e in entries if e.get("type") == "admin"]


# --- schema -----------------------------------------------------------------------------------------


def test_the_migrations_build_exactly_the_schema(engine: Engine) -> None:
    """Migrated from nothing, the database has what schema.py declares: no table, column, index
    or type more or less (fleets' tables and the usage record's device columns included)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
    assert diff == []
    assert {"fleets", "products", "device_batches", "devices", "device_nonces", "device_days"} <= set(
        metadata.tables
    )


# --- fleets and products ----------------------------------------------------------------------------


def test_fleets_are_created_in_their_tenants_zone_and_audited(
    svc: FleetService, store: FleetStore, engine: Engine, clock: FakeClock
) -> None:
    fleet = svc.create_fleet("toyco", "toys", max_addresses=5, auto_quarantine=True)
    assert fleet.id.startswith("flt_") and fleet.zone == "domestic"
    assert (fleet.max_addresses_per_hour, fleet.auto_quarantine) == (5, True)
    assert store.fleet("toys") == fleet == store.fleet_by_id(fleet.id)
    clock.advance(1)
    other = svc.create_fleet("rival", "robots")
    assert other.zone == "overseas" and (other.max_addresses_per_hour, other.auto_quarantine) == (3, False)
    assert store.list_fleets() == [fleet, other]
    assert svc.list_fleets("rival") == [other]
    assert store.fleet("nope") is None and store.fleet_by_id("flt_nope") is None

    with pytest.raises(Conflict):
        svc.create_fleet("rival", "toys")  # names are unique across tenants
    with pytest.raises(NotFound):
        svc.create_fleet("nobody", "x")
    for bad in ("", "bad name", "x" * 129):
        with pytest.raises(InvalidInput):
            svc.create_fleet("toyco", bad)
    with pytest.raises(InvalidInput):
        svc.create_fleet("toyco", "zero", max_addresses=0)

    assert ("fleet", fleet.id) in change_rows(engine)
    created = [a for a in actions(engine, "domestic") if a["action"] == "fleet.create"]
    assert [(a["id"], a["name"], a["tenant_id"], a["zone"]) for a in created] == [
        (fleet.id, "toys", fleet.tenant_id, "domestic")
    ]
    assert not [a for a in actions(engine, "overseas") if a.get("name") == "toys"]  # its zone only


def test_products_round_trip_and_validation(
    svc: FleetService, store: FleetStore, engine: Engine, toys
) -> None:
    fleet, product = toys
    assert product.models == ("toy-chat", "toy-big")
    assert product.multipliers == (("toy-big", 2500),)
    assert product.package_fee_nano == USD
    assert store.products(fleet.id) == [product] == svc.list_products("toys")
    assert store.product_by_id(product.id) == product
    assert store.product_by_id("prd_nope") is None
    assert isinstance(store.products(fleet.id)[0].multipliers[0], tuple)
    assert product.units("toy-big", 10) == 25 and product.units("toy-chat", 10) == 10

    plain = svc.create_product("toys", "TOY-2", 30, 10, 100)
    assert (plain.models, plain.multipliers, plain.reset_tz, plain.package_fee_nano) == ((), (), "UTC", 0)
    assert (plain.rpm, plain.concurrency, plain.max_output) == (None, None, None)
    assert store.products(fleet.id) == [product, plain]  # by SKU

    with pytest.raises(Conflict):
        svc.create_product("toys", "TOY-1", 30, 10, 100)
    with pytest.raises(NotFound):
        svc.create_product("nofleet", "TOY-9", 30, 10, 100)
    bad = [
        {"entitlement_days": 0},
        {"daily_tokens": -1},
        {"monthly_tokens": 0},
        {"rpm": 0},
        {"reset_tz": "Mars/Olympus"},
        {"package_fee_usd": "-1"},
        {"package_fee_usd": "abc"},
        {"multipliers": ["toy-big"]},
        {"multipliers": ["toy-big=0"]},
    ]
    for override in bad:
        kw = {"entitlement_days": 30, "daily_tokens": 10, "monthly_tokens": 100, **override}
        with pytest.raises(InvalidInput):
            svc.create_product("toys", "TOY-X", **kw)
    assert [p.sku for p in store.products(fleet.id)] == ["TOY-1", "TOY-2"]
    assert ("product", product.id) in change_rows(engine)
    audited = [a for a in actions(engine, "domestic") if a["action"] == "product.create"]
    assert [(a["sku"], a["multipliers"], a["package_fee_nano"]) for a in audited] == [
        ("TOY-1", [["toy-big", 2500]], USD),
        ("TOY-2", [], 0),
    ]


# --- import -----------------------------------------------------------------------------------------


def test_import_is_idempotent_and_says_why_rows_are_rejected(
    svc: FleetService, store: FleetStore, engine: Engine, toys
) -> None:
    fleet, product = toys
    rows = ["SN-1", " SN-2 ", "", "bad serial", "SN-1", "x" * 65, "SN-3"]
    summary, key = svc.import_devices("toys", "TOY-1", "b1", rows)
    assert summary.batch_created and summary.new == ["SN-1", "SN-2", "SN-3"] and summary.existing == []
    assert [(r, why) for r, _, why in summary.rejected] == [
        (3, "empty"),
        (4, "a serial is 1-64 letters, digits, '.', '_', ':' or '-'"),
        (5, "repeated in this file"),
        (6, "a serial is 1-64 letters, digits, '.', '_', ':' or '-'"),
    ]
    batch = store.batch(fleet.id, "b1")
    assert batch is not None and store.batch_by_id(summary.batch_id) == batch
    assert open_batch_key(zone_key("domestic"), "domestic", fleet.id, batch.id, batch.sealed_key) == key
    assert key not in batch.sealed_key  # sealed, not stored in the clear
    assert svc.secret_of("SN-2") == device_secret(key, "SN-2")
    d = store.device("SN-2")
    assert d == Device("SN-2", fleet.id, product.id, batch.id, IMPORTED)

    again, key2 = svc.import_devices("toys", "TOY-1", "b1", rows)
    assert key2 == key and not again.batch_created
    assert (again.new, sorted(again.existing), len(again.rejected)) == ([], ["SN-1", "SN-2", "SN-3"], 4)
    assert count(engine, devices) == 3 and count(engine, device_batches) == 1
    assert change_rows(engine).count(("batch", batch.id)) == 2  # created, one chunk; none again

    assert store.existing_serials(["SN-1", "SN-3", "SN-9"]) == {"SN-1": fleet.id, "SN-3": fleet.id}
    assert store.existing_serials([]) == {}
    imported = [a for a in actions(engine, "domestic") if a["action"] == "devices.import"]
    assert [(a["count"], a["batch_ids"], a["fleet_id"]) for a in imported] == [(3, [batch.id], fleet.id)]
    assert [a["action"] for a in actions(engine, "domestic")].count("batch.create") == 1


def test_a_serial_of_another_fleet_is_rejected(svc: FleetService, store: FleetStore, toys) -> None:
    svc.create_fleet("rival", "robots")
    svc.create_product("robots", "BOT", 30, 10, 100)
    svc.import_devices("toys", "TOY-1", "b1", ["SN-1"])
    summary, _ = svc.import_devices("robots", "BOT", "r1", ["SN-1", "RB-1"])
    assert summary.new == ["RB-1"]
    assert [(s, why) for _, s, why in summary.rejected] == [("SN-1", "registered to another fleet")]
    assert store.device("SN-1").fleet_id == toys[0].id


def test_a_batch_belongs_to_one_product(svc: FleetService, toys) -> None:
    svc.create_product("toys", "TOY-2", 30, 10, 100)
    svc.import_devices("toys", "TOY-1", "b1", ["SN-1"])
    with pytest.raises(Conflict):
        svc.import_devices("toys", "TOY-2", "b1", ["SN-2"])
    with pytest.raises(NotFound):
        svc.import_devices("toys", "TOY-9", "b2", ["SN-2"])
    with pytest.raises(InvalidInput):
        svc.import_devices("toys", "TOY-1", "bad batch", ["SN-2"])


def test_a_dry_run_writes_nothing(svc: FleetService, store: FleetStore, engine: Engine, toys) -> None:
    before = (change_rows(engine), len(AuditStore(engine).entries("domestic")))
    summary, _ = svc.import_devices("toys", "TOY-1", "b1", ["SN-1", "SN-2", "bad one"], dry_run=True)
    assert summary.dry_run and summary.batch_created and summary.new == ["SN-1", "SN-2"]
    assert len(summary.rejected) == 1
    assert count(engine, devices) == 0 and count(engine, device_batches) == 0
    assert store.batch(toys[0].id, "b1") is None
    assert (change_rows(engine), len(AuditStore(engine).entries("domestic"))) == before


def test_a_chunk_with_a_serial_registered_meanwhile_is_refused_whole(
    svc: FleetService, store: FleetStore, engine: Engine, toys
) -> None:
    fleet, product = toys
    svc.import_devices("toys", "TOY-1", "b1", ["SN-1"])
    batch = store.batch(fleet.id, "b1")
    late = [Device(s, fleet.id, product.id, batch.id, IMPORTED) for s in ("SN-2", "SN-1")]
    with pytest.raises(Conflict):
        store.insert_devices(late, T0)
    assert store.device("SN-2") is None and count(engine, devices) == 1


def test_importing_twenty_thousand_serials(
    svc: FleetService, store: FleetStore, engine: Engine, toys
) -> None:
    serials = [f"TOY-{i:08d}" for i in range(20_000)]
    summary, _ = svc.import_devices("toys", "TOY-1", "big", iter(serials))
    assert len(summary.new) == 20_000 and summary.rejected == []
    assert count(engine, devices) == 20_000
    assert len(store.existing_serials(serials)) == 20_000  # more than one query's worth
    again, _ = svc.import_devices("toys", "TOY-1", "big", iter(serials))
    assert (len(again.new), len(again.existing)) == (0, 20_000)
    imported = [a for a in actions(engine, "domestic") if a["action"] == "devices.import"]
    assert [a["count"] for a in imported] == [10_000, 10_000]  # the service's chunks
    batch_id = summary.batch_id
    assert change_rows(engine).count(("batch", batch_id)) == 1 + 2  # created, then 2 chunks
    assert change_rows(engine).count(("fleet", toys[0].id)) == 1  # created; imports name the batch


def test_devices_are_listed_by_serial_a_page_at_a_time(svc: FleetService, store: FleetStore, toys) -> None:
    svc.import_devices("toys", "TOY-1", "b1", [f"SN-{i:02d}" for i in range(10)][::-1])
    svc.set_state("SN-03", QUARANTINED)
    svc.set_state("SN-07", QUARANTINED)
    fleet = toys[0]
    page = store.list_devices(fleet.id, limit=4)
    assert [d.serial for d in page] == ["SN-00", "SN-01", "SN-02", "SN-03"]
    page = store.list_devices(fleet.id, after=page[-1].serial, limit=4)
    assert [d.serial for d in page] == ["SN-04", "SN-05", "SN-06", "SN-07"]
    assert [d.serial for d in store.list_devices(fleet.id, after="SN-07")] == ["SN-08", "SN-09"]
    assert [d.serial for d in svc.list_devices("toys", QUARANTINED)] == ["SN-03", "SN-07"]
    assert [d.serial for d in store.list_devices(fleet.id, QUARANTINED, after="SN-03")] == ["SN-07"]
    assert store.list_devices("flt_other") == []


# --- a device's lifecycle ---------------------------------------------------------------------------


def test_state_changes_revoke_is_final_release_only_from_quarantine(
    svc: FleetService, store: FleetStore, engine: Engine, clock: FakeClock, toys
) -> None:
    svc.import_devices("toys", "TOY-1", "b1", ["SN-1", "SN-2"])
    with pytest.raises(Conflict):
        svc.set_state("SN-1", ACTIVE)  # release: it is not quarantined
    clock.advance(60)
    assert svc.set_state("SN-1", QUARANTINED, "seen from 9 addresses").state == QUARANTINED
    assert store.device("SN-1").state == QUARANTINED
    assert svc.set_state("SN-1", ACTIVE).state == IMPORTED  # never activated: back to imported
    assert store.device("SN-1").state == IMPORTED
    svc.set_state("SN-1", REVOKED, "cloned firmware")
    for state in (ACTIVE, QUARANTINED, REVOKED):
        with pytest.raises(Conflict):
            svc.set_state("SN-1", state)
    assert store.device("SN-1").state == REVOKED
    with pytest.raises(NotFound):
        svc.set_state("SN-404", REVOKED)
    assert store.set_state("SN-404", REVOKED, "", T0) is False
    assert store.device("SN-2").state == IMPORTED  # the others untouched

    assert [c for c in change_rows(engine) if c[0] == "device"] == [("device", "SN-1")] * 3
    audited = [a for a in actions(engine, "domestic") if a["action"].startswith("device.")]
    assert [(a["action"], a["serial"], a["state"], a["reason"]) for a in audited] == [
        ("device.quarantine", "SN-1", QUARANTINED, "seen from 9 addresses"),
        ("device.release", "SN-1", IMPORTED, ""),
        ("device.revoke", "SN-1", REVOKED, "cloned firmware"),
    ]
    assert audited[0]["at"] == "2026-03-01T12:01:00Z"


def test_the_store_refuses_a_change_made_stale_by_another_process(
    svc: FleetService, store: FleetStore, engine: Engine, clock: FakeClock, toys
) -> None:
    """What the service checked may have changed before the store writes (another process): a
    revoked device is never released, re-quarantined or activated, and only a quarantined one is
    released; nothing is written then."""
    fleet, _ = toys
    svc.import_devices("toys", "TOY-1", "b1", ["SN-1", "SN-2"])
    read_before = store.device("SN-1")  # imported
    svc.set_state("SN-1", REVOKED)
    before = (change_rows(engine), len(AuditStore(engine).entries("domestic")))
    fee = package_tx(package_tx_id("SN-1", fleet.id), fleet.tenant_id, USD, T0)
    assert store.activate(read_before, T0, T0 + timedelta(days=1), fee) is False
    for state in (ACTIVE, IMPORTED, QUARANTINED):
        assert store.set_state("SN-1", state, "", T0) is False
    assert store.set_state("SN-2", ACTIVE, "", T0) is False  # a release of a device not quarantined
    assert (change_rows(engine), len(AuditStore(engine).entries("domestic"))) == before
    assert store.device("SN-1") == replace(read_before, state=REVOKED)
    assert store.device("SN-2").state == IMPORTED
    assert count(engine, ledger_transactions) == 0

    svc.set_state("SN-2", QUARANTINED)
    assert store.activate(store.device("SN-2"), T0, T0 + timedelta(days=1), None) is False
    assert store.set_state("SN-2", IMPORTED, "", T0) is True
    fee = package_tx(
        package_tx_id("SN-2", fleet.id), fleet.tenant_id, USD, T0
    )  # its product's, as the service posts it
    assert store.activate(store.device("SN-2"), T0, T0 + timedelta(days=1), fee) is True
    assert store.device("SN-2").state == ACTIVE


def challenge_and_answer(svc: FleetService, serial: str, key: bytes) -> dict:
    nonce = svc.challenge(serial)["nonce"]
    return svc.activate(serial, nonce, activation_mac(device_secret(key, serial), serial, nonce))


def test_activation_starts_the_entitlement_and_posts_the_fee_once(
    svc: FleetService, store: FleetStore, engine: Engine, clock: FakeClock, toys
) -> None:
    fleet, _ = toys
    _, key = svc.import_devices("toys", "TOY-1", "b1", ["SN-1", "SN-2"])
    answer = challenge_and_answer(svc, "SN-1", key)
    token = read_token(svc.token_key, answer["device_token"])
    assert token is not None and token.serial == "SN-1"
    assert answer["entitlement"]["days_left"] == 365
    assert answer["entitlement"]["ends_at"] == "2027-03-01T12:00:00Z"
    d = store.device("SN-1")
    assert (d.state, d.activated_at, d.entitlement_ends_at) == (ACTIVE, T0, T0 + timedelta(days=365))

    clock.advance(86_400)
    again = challenge_and_answer(svc, "SN-1", key)  # a new token; the clock does not restart
    assert again["entitlement"]["days_left"] == 364
    assert store.device("SN-1").activated_at == T0
    fee_id = package_tx_id("SN-1", fleet.id)
    txs = [t for t in BillingStore(engine).load_transactions(fleet.tenant_id) if t.kind == "package"]
    assert [(t.id, sorted(e.amount for e in t.entries)) for t in txs] == [(fee_id, [-USD, USD])]
    assert ("ledger", fee_id) in change_rows(engine)
    assert BillingService(billing_repositories(engine), None).verify() == []

    # the store on its own: a second activation writes nothing
    before = (
        change_rows(engine),
        count(engine, ledger_transactions),
        len(AuditStore(engine).entries("domestic")),
    )
    fee = package_tx(fee_id, fleet.tenant_id, USD, clock.now())
    assert store.activate(store.device("SN-1"), clock.now(), clock.now(), fee) is False
    assert store.device("SN-1").entitlement_ends_at == T0 + timedelta(days=365)
    after = (
        change_rows(engine),
        count(engine, ledger_transactions),
        len(AuditStore(engine).entries("domestic")),
    )
    assert after == before
    activated = [a for a in actions(engine, "domestic") if a["action"] == "device.activate"]
    assert [(a["serial"], a["fee_tx"], a["fee_nano_usd"]) for a in activated] == [("SN-1", fee_id, USD)]

    svc.set_state("SN-1", QUARANTINED)
    assert svc.set_state("SN-1", ACTIVE).state == ACTIVE  # activated before: released to active
    assert store.device("SN-1").state == ACTIVE


def test_a_package_fee_seen_before_is_refused_and_nothing_is_written(
    store: FleetStore, svc: FleetService, engine: Engine, clock: FakeClock, toys
) -> None:
    fleet, _ = toys
    _, key = svc.import_devices("toys", "TOY-1", "b1", ["SN-1", "SN-2"])
    challenge_and_answer(svc, "SN-1", key)
    before = (change_rows(engine), count(engine, ledger_transactions))
    reused = package_tx(package_tx_id("SN-1", fleet.id), fleet.tenant_id, USD, clock.now())
    with pytest.raises(LedgerError):
        store.activate(store.device("SN-2"), clock.now(), clock.now() + timedelta(days=1), reused)
    d = store.device("SN-2")
    assert (d.state, d.activated_at) == (IMPORTED, None)
    assert (change_rows(engine), count(engine, ledger_transactions)) == before


def test_a_device_is_activated_once_when_two_processes_race(
    store: FleetStore, svc: FleetService, engine: Engine, clock: FakeClock, toys
) -> None:
    fleet, _ = toys
    svc.import_devices("toys", "TOY-1", "b1", ["SN-1"])
    device = store.device("SN-1")
    fee = package_tx(package_tx_id("SN-1", fleet.id), fleet.tenant_id, USD, T0)
    barrier, results = threading.Barrier(4), []

    def go() -> None:
        barrier.wait()
        results.append(store.activate(device, T0, T0 + timedelta(days=365), fee))

    threads = [threading.Thread(target=go) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False, False, False, True]
    assert count(engine, ledger_transactions, ledger_transactions.c.kind == "package") == 1


def test_activation_refusals(svc: FleetService, clock: FakeClock, toys) -> None:
    _, key = svc.import_devices("toys", "TOY-1", "b1", ["SN-1", "SN-2"])
    nonce = svc.challenge("SN-1")["nonce"]
    with pytest.raises(ActivationRefused) as wrong:
        svc.activate("SN-1", nonce, "00" * 32)
    assert wrong.value.status == 401
    mac = activation_mac(device_secret(key, "SN-1"), "SN-1", nonce)
    with pytest.raises(ActivationRefused) as replay:  # the nonce was used by the wrong answer
        svc.activate("SN-1", nonce, mac)
    assert replay.value.status == 409
    svc.set_state("SN-2", REVOKED)
    with pytest.raises(ActivationRefused) as revoked:
        challenge_and_answer(svc, "SN-2", key)
    assert (revoked.value.status, revoked.value.code) == (403, "device_revoked")
    with pytest.raises(ActivationRefused) as unknown:
        challenge_and_answer(svc, "SN-404", key)
    assert unknown.value.status == 401


def test_renew_extends_from_the_end_or_from_now(
    svc: FleetService, store: FleetStore, engine: Engine, clock: FakeClock, toys
) -> None:
    _, key = svc.import_devices("toys", "TOY-1", "b1", ["SN-1", "SN-2"])
    with pytest.raises(Conflict):
        svc.renew("SN-2", 30)  # never activated
    with pytest.raises(InvalidInput):
        svc.renew("SN-1", 0)
    challenge_and_answer(svc, "SN-1", key)
    end = T0 + timedelta(days=365)
    assert svc.renew("SN-1", 30).entitlement_ends_at == end + timedelta(days=30)
    assert store.device("SN-1").entitlement_ends_at == end + timedelta(days=30)
    clock.advance(500 * 86_400)  # run out: renewed from now
    assert svc.renew("SN-1", 10).entitlement_ends_at == clock.now() + timedelta(days=10)
    assert store.device("SN-1").entitlement_ends_at == clock.now() + timedelta(days=10)
    renewals = [a for a in actions(engine, "domestic") if a["action"] == "device.renew"]
    assert [a["ends_at"] for a in renewals] == ["2027-03-31T12:00:00Z", "2027-07-24T12:00:00Z"]
    assert [c for c in change_rows(engine) if c[0] == "device"] == [("device", "SN-1")] * 3


# --- challenges -------------------------------------------------------------------------------------


def test_a_challenge_is_taken_once_and_only_before_it_expires(store: FleetStore, engine: Engine) -> None:
    store.add_nonce("n1", "SN-1", T0 + timedelta(minutes=2))
    store.add_nonce("n2", "SN-1", T0 + timedelta(minutes=2))
    store.add_nonce("n3", "SN-2", T0 + timedelta(minutes=2))
    assert store.take_nonce("n1", "SN-2", T0) == "unknown"  # another device's challenge
    assert store.take_nonce("n1", "SN-1", T0) == "ok"
    assert store.take_nonce("n1", "SN-1", T0 + timedelta(seconds=1)) == "used"
    assert store.take_nonce("nx", "SN-1", T0) == "unknown"
    assert store.take_nonce("n2", "SN-1", T0 + timedelta(minutes=2)) == "unknown"  # expired
    assert store.take_nonce("n2", "SN-1", T0 + timedelta(minutes=1)) == "ok"  # ... not before
    assert store.take_nonce("n3", "SN-2", T0 + timedelta(minutes=3)) == "unknown"
    assert count(engine, device_nonces) == 3

    # a new challenge deletes those that expired long before it; a recent replay still says "used"
    store.add_nonce("n4", "SN-1", T0 + timedelta(minutes=60))
    assert count(engine, device_nonces) == 4
    assert store.take_nonce("n1", "SN-1", T0 + timedelta(minutes=50)) == "used"
    store.add_nonce("n5", "SN-1", T0 + timedelta(hours=2))
    with engine.connect() as conn:
        left = set(conn.execute(select(device_nonces.c.nonce)).scalars())
    assert left == {"n4", "n5"}
    assert store.take_nonce("n1", "SN-1", T0 + timedelta(hours=2)) == "unknown"


# --- quotas -----------------------------------------------------------------------------------------


def test_device_days_are_counted_from_usage_rows(svc: FleetService, store: FleetStore, engine: Engine, toys):
    fleet, product = toys
    svc.import_devices("toys", "TOY-1", "b1", ["SN-1", "SN-2"])
    usage = UsageStore(engine)

    def row(rid: str, serial: str | None, day: str | None, units: int | None) -> dict:
        return usage_row(
            rid, fleet.tenant_id, T0, zone="domestic", device_serial=serial, product_id=product.id,
            device_units=units, device_day=day,
        )  # fmt: skip

    usage.insert_many(
        [
            row("r1", "SN-1", "2026-03-01", 100),
            row("r2", "SN-1", "2026-03-01", 25),
            row("r3", "SN-1", "2026-03-02", 7),
            row("r4", "SN-1", "2026-02-28", 1000),  # last month
            row("r5", "SN-2", "2026-03-01", 3),
            row("r6", None, None, None),  # not a device's request
        ]
    )
    usage.insert_many([row("r1", "SN-1", "2026-03-01", 100)])  # a retried batch counts nothing twice
    assert store.used("SN-1", "2026-03-01", "2026-03-01") == (125, 125)
    assert store.used("SN-1", "2026-03-02", "2026-03-01") == (7, 132)
    assert store.used("SN-1", "2026-02-28", "2026-02-01") == (1000, 1000)
    assert store.used("SN-2", "2026-03-01", "2026-03-01") == (3, 3)
    assert store.used("SN-3", "2026-03-01", "2026-03-01") == (0, 0)
    assert count(engine, device_days) == 4

    d = store.device("SN-1")
    clock_day = svc.clock.now()  # 2026-03-01 20:00 in Asia/Shanghai
    assert clock_day == T0
    left = svc.entitlement(d, product)
    assert (left["tokens_left_today"], left["tokens_left_this_month"]) == (1000 - 125, 20_000 - 125)
