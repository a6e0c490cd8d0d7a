"""Supply, certificates, the green report and the value chain, on a real database (SQLite and
PostgreSQL) with metered windows, usage records and ledger revenue written as the gateway does."""

from __future__ import annotations

import json
import subprocess
import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import Engine
from support.live import TOKENPORT
from support.rows import usage_row

from tokenport.billing.ledger import usage_tx
from tokenport.billing.service import BillingService
from tokenport.clock import FakeClock
from tokenport.energy.allocation import Allocation, Share
from tokenport.energy.config import EnergyConfig
from tokenport.energy.green import MJ_PER_KWH
from tokenport.energy.meter import Allocated, RequestMeta, Window
from tokenport.energy.reports import economics_csv, economics_html, economics_text, green_csv, green_html
from tokenport.energy.service import EnergyInputError, EnergyService
from tokenport.store.energy import DuplicateCertificate, EnergyStore
from tokenport.store.meter_store import MeterStore
from tokenport.store.repositories import billing_repositories
from tokenport.store.tenants import TenantStore
from tokenport.store.usage import UsageStore
from tokenport.tenancy.service import TenancyService

T0 = datetime(2026, 10, 10, 12, 0, tzinfo=UTC)
KWH = MJ_PER_KWH


@pytest.fixture
def world(engine: Engine):
    """October 2026: two tenants; 3 kWh metered for `jakarta`, 1 kWh for `toys`, 1 kWh idle."""
    clock = FakeClock(T0)
    tenancy = TenancyService(TenantStore(engine), "overseas", clock)
    jakarta, toys = tenancy.create_tenant("jakarta"), tenancy.create_tenant("toys")
    billing = BillingService(billing_repositories(engine), tenancy, clock)
    lots = {t.id: billing.grant(t.name, "100") for t in (jakarta, toys)}
    store = EnergyStore(engine)
    usage = UsageStore(engine)
    items = []
    for i, (tenant, model, cost) in enumerate(
        [(jakarta, "m-large", 3_000_000_000), (toys, "m-small", 500_000_000)]
    ):
        rid = f"req_{i}"
        row = usage_row(rid, tenant.id, T0 + timedelta(seconds=i), model=model, cost_nano_usd=cost)
        row.update(prompt_tokens=600_000, cached_tokens=0, completion_tokens=400_000)  # a million each
        tx = usage_tx(f"tx_{i}", tenant.id, rid, [(lots[tenant.id].id, cost)], T0)
        items.append({"usage": row, "tx": tx})
    usage.write_settlements(items)
    window = Window("box", "overseas", 0.0, 10.0, T0, T0 + timedelta(seconds=10), 5 * KWH, "measured")
    shares = (Share("req_0", KWH, 2 * KWH), Share("req_1", 0, KWH))
    MeterStore(engine).write(
        [
            Allocated(
                window,
                Allocation(shares, KWH),
                {"req_0": RequestMeta(jakarta.id), "req_1": RequestMeta(toys.id)},
            )
        ]
    )
    cfg = EnergyConfig(pue_milli=1000)
    return EnergyService(store, cfg, clock), clock, jakarta, toys, tenancy


def test_the_green_share_follows_the_certificates(world) -> None:
    energy = world[0]
    assert energy.consumed_mj("2026-10")["consumed_mj"] == 5 * KWH  # metered, PUE 1.0
    assert energy.share_ppm("2026-10") == 0
    energy.add_certificate("GEC-1", "0.002", "2026-10")  # 2 kWh
    energy.add_certificate("GEC-2", "0.002", "2026-10")  # 2 kWh: 4 of 5 kWh green
    assert energy.share_ppm("2026-10") == 800_000
    with pytest.raises(DuplicateCertificate):
        energy.add_certificate("GEC-1", "1", "2026-10")
    energy.set_tariff("2026-10", "0.5", "offshore-wind", "8")  # 8 kWh bought: 4 of 8 green
    assert energy.share_ppm("2026-10") == 500_000
    with pytest.raises(EnergyInputError):
        energy.set_tariff("2026-13", "0.5")
    with pytest.raises(EnergyInputError):
        energy.set_tariff("2026-10", "-1")


def test_reports_spread_idle_energy_and_allocate_certificates_once(world) -> None:
    energy, clock, jakarta, toys, _ = world
    energy.add_certificate("GEC-1", "0.004", "2026-10")  # 4 kWh of 5: 80 % green
    report = energy.green_report(jakarta.id, "jakarta", "overseas", "2026-10")
    assert report["final"] is False  # October is not over on 10 October: provisional
    # jakarta: 3 kWh own + 3/4 of the 1 kWh idle = 3.75 kWh; 80 % green = 3 kWh
    assert report["energy_kwh"] == "3.750000000" and report["green_kwh"] == "3.000000000"
    assert report["green_share"] == "0.8000" and report["tokens"] == 1_000_000
    assert report["certificates"] == [{"id": "GEC-1", "kwh": "3"}]
    assert report["co2_location_g"] == "1989.750"  # 3.75 kWh x 530.6 g
    assert report["co2_market_g"] == "457.200"  # 0.75 kWh x 609.6 g
    assert report["intensity"]["kwh_per_million_tokens"] == "3.750"
    assert report["method"]["measured_share"] == "1.0000"
    assert (
        "GEC-1" in green_csv(report) and "<svg" not in green_html(report) and "jakarta" in green_html(report)
    )

    clock.advance(40 * 24 * 3600)  # November: October's allocation is final, and kept
    results: list = []
    threads = [
        threading.Thread(target=lambda: results.append(energy.allocation("2026-10"))) for _ in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r == results[0] for r in results) and results[0][1] is True
    grants = results[0][0]
    assert sum(g.wh for g in grants) <= 4000  # never more than retired
    assert {(g.tenant_id, g.wh) for g in grants} == {(jakarta.id, 3000), (toys.id, 1000)}
    energy.add_certificate("GEC-late", "1", "2026-10")  # after the allocation: not re-allocated
    assert energy.allocation("2026-10") == (grants, True)
    listed = {c["id"]: c["allocated_wh"] for c in energy.store.certificates("2026-10")}
    assert listed == {"GEC-1": 4000, "GEC-late": 0}


def test_the_value_chain(world) -> None:
    energy, _, jakarta, toys, _ = world
    energy.set_tariff("2026-10", "0.5", "offshore-wind")  # the metered 5 kWh, at 0.5 CNY
    doc = energy.economics("2026-10", 7_100_000, {jakarta.id: "jakarta", toys.id: "toys"})
    assert doc["electricity"]["kwh"] == "5.000000000" and doc["electricity"]["cny"] == "2.50"
    assert doc["tokens"] == 2_000_000 and doc["revenue_usd"] == "3.500000"
    assert doc["revenue_cny"] == "24.85" and doc["value_multiple"] == "9.94"  # 24.85 / 2.50
    assert doc["kwh_per_million_tokens"] == "2.500"
    models = {r["name"]: r for r in doc["by_model"]}
    assert models["m-large"]["revenue_usd"] == "3.000000" and models["m-large"]["own_kwh"] == "3.000000000"
    assert models["m-large"]["idle_kwh"] == "0.750000000"  # idle spread as for customers
    assert models["m-large"]["energy_kwh"] == "3.750000000"
    customers = {r["name"]: r for r in doc["by_customer"]}
    assert customers["toys"]["energy_kwh"] == "1.250000000"  # its 1 kWh and a quarter of the idle
    assert doc["energy"]["method"] == "measured" and doc["missing"] == {}
    assert "value_multiple" in economics_csv(doc) and "<svg" in economics_html(doc)


def test_the_cli(tmp_path: Path) -> None:
    env = {"TOKENPORT_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}

    def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
        res = subprocess.run([TOKENPORT, *args], env=env, capture_output=True, text=True)
        assert (res.returncode == 0) is ok, res.stderr
        return res

    run("tenants", "create", "acme")
    run("energy", "tariff", "--period", "2026-10", "--cny-per-kwh", "0.45", "--source", "offshore-wind")
    run("energy", "pue", "--period", "2026-10", "--value", "1.15")
    added = json.loads(
        run("certificates", "add", "GEC-9", "--mwh", "1.5", "--period", "2026-10", "--json").stdout
    )
    assert added == {"id": "GEC-9", "mwh": "1.5", "period": "2026-10", "source": "offshore-wind"}
    assert (
        "already recorded"
        in run("certificates", "add", "GEC-9", "--mwh", "1", "--period", "2026-10", ok=False).stderr
    )
    listed = json.loads(run("certificates", "list", "--json").stdout)
    assert [c["id"] for c in listed] == ["GEC-9"]
    report = json.loads(run("green", "report", "--tenant", "acme", "--period", "2026-10").stdout)
    assert report["energy_kwh"] == "0.000000000" and report["method"]["pue"] == "1.15"
    assert "value multiple" in run("economics", "--period", "2026-10").stdout
    assert "<svg" in run("economics", "--period", "2026-10", "--format", "html").stdout
    assert (
        "a period is YYYY-MM"
        in run("energy", "pue", "--period", "10-2026", "--value", "1.2", ok=False).stderr
    )
    assert "PUE" in run("energy", "pue", "--period", "2026-10", "--value", "0.5", ok=False).stderr
    assert "not enough measured windows" in run("energy", "calibrate", ok=False).stdout


def _rejected(engine: Engine, tenant_id: str, rid: str = "req_rejected") -> None:
    """A request refused before routing (a 400): no model, no tokens, no cost."""
    row = usage_row(rid, tenant_id, T0 + timedelta(seconds=5), model=None, backend=None, status=400)
    row.update(prompt_tokens=0, cached_tokens=0, completion_tokens=0, error_code="invalid_request")
    UsageStore(engine).insert_many([row])


def test_rejected_requests_never_break_a_report(world, engine: Engine) -> None:
    energy, clock, jakarta, toys, tenancy = world
    _rejected(engine, toys.id)
    energy.set_tariff("2026-10", "0.5")
    doc = energy.economics("2026-10", 7_100_000, {jakarta.id: "jakarta", toys.id: "toys"})
    models = {r["name"]: r for r in doc["by_model"]}
    assert set(models) == {"m-large", "m-small", "(rejected requests)"}
    assert models["(rejected requests)"]["tokens"] == 0 and models["(rejected requests)"]["energy_mj"] == 0
    assert doc["missing"]["by_model.(rejected requests).kwh_per_million_tokens"] == "no tokens in 2026-10"
    page = economics_html(doc)  # it raised AttributeError on the record's missing model
    assert (
        "None" not in page and "(rejected requests)" in page and "(rejected requests)" in economics_csv(doc)
    )
    assert "(rejected requests)" in economics_text(doc)
    report = energy.green_report(toys.id, "toys", "overseas", "2026-10")
    assert report["tokens"] == 1_000_000 and "toys" in green_html(report) and green_csv(report)
    billing = BillingService(billing_repositories(engine), tenancy, clock)
    billing.set_price("m-small", "0.30", "1.20", effective_from=T0 - timedelta(days=1))
    preview = billing.preview_invoice("toys", "2026-10")
    assert preview["total_nano_usd"] == 500_000_000 and preview["rejected_requests"] == 1


def test_no_report_prints_none_and_each_names_what_is_missing(world) -> None:
    energy, _, jakarta, toys, _ = world
    doc = energy.economics("2026-10", None, {jakarta.id: "jakarta", toys.id: "toys"})
    assert doc["electricity"]["cny"] is None and doc["value_multiple"] is None  # JSON null stays...
    tariff = "no tariff for 2026-10: tokenport energy tariff --period 2026-10 --cny-per-kwh X"
    fx = "no CNY/USD rate for 2026-10: tokenport fx set --period 2026-10 --cny-per-usd X"
    assert doc["missing"]["electricity.cny"] == tariff  # ... with what is missing beside it
    assert doc["missing"]["cny_per_usd"] == fx and doc["missing"]["revenue_cny"] == fx
    assert doc["missing"]["value_multiple"] == f"{fx}; {tariff}"
    json.dumps(doc)
    for text in (economics_text(doc), economics_csv(doc), economics_html(doc)):
        assert "None" not in text
        assert tariff in text and fx in text

    empty = energy.economics("2026-11", None, {})  # nothing at all: no energy, no tokens
    assert empty["missing"]["kwh_per_million_tokens"] == "no tokens in 2026-11"
    assert empty["missing"]["energy.measured_share"].startswith("no energy metered in 2026-11")
    assert empty["energy"]["method"] == "none"
    for text in (economics_text(empty), economics_csv(empty), economics_html(empty)):
        assert "None" not in text and "no tokens in 2026-11" in text

    report = energy.green_report(jakarta.id, "jakarta", "overseas", "2026-11")
    assert report["green_share"] is None
    assert report["missing"]["green_share"].startswith("no energy metered for jakarta in 2026-11")
    assert report["missing"]["intensity.kwh_per_million_tokens"] == "no tokens in 2026-11"
    for text in (green_csv(report), green_html(report)):
        assert "None" not in text and "no tokens in 2026-11" in text


def test_energy_per_model_and_per_customer_reconcile_exactly(engine: Engine) -> None:
    """Two windows, one measured and one estimated with idle and others' work, at PUE 1.237:
    per model and per customer, own + idle + others' work = the metered total, to the mJ."""
    clock = FakeClock(T0)
    tenancy = TenancyService(TenantStore(engine), "overseas", clock)
    a, b = tenancy.create_tenant("a"), tenancy.create_tenant("b")
    usage = UsageStore(engine)
    usage.insert_many(
        [
            usage_row("r0", a.id, T0, model="m1"),
            usage_row("r1", b.id, T0, model="m1"),
            usage_row("r2", b.id, T0, model="m2"),
        ]
    )
    store = EnergyStore(engine)
    meta = {r: RequestMeta(t.id) for r, t in (("r0", a), ("r1", b), ("r2", b))}
    w1 = Window("box", "overseas", 0.0, 10.0, T0, T0 + timedelta(seconds=10), 5 * KWH + 11, "measured")
    w2 = Window(
        "box",
        "overseas",
        10.0,
        20.0,
        T0 + timedelta(seconds=10),
        T0 + timedelta(seconds=20),
        3 * KWH + 7,
        "estimated",
    )
    shares1 = (Share("r0", KWH + 3, 2 * KWH), Share("r1", 0, KWH + 5), Share("r2", 7, 13))
    shares2 = (Share("r0", KWH, 0), Share("r2", 1, 1))
    idle1 = 5 * KWH + 11 - sum(s.total_mj for s in shares1)
    MeterStore(engine).write(
        [
            Allocated(w1, Allocation(shares1, idle1), meta),
            Allocated(w2, Allocation(shares2, KWH + 2, KWH + 3), meta),
        ]
    )
    energy = EnergyService(store, EnergyConfig(pue_milli=1000), clock)
    energy.set_pue("2026-10", "1.237")
    doc = energy.economics("2026-10", None, {a.id: "a", b.id: "b"})
    e = doc["energy"]
    assert e["facility_mj"] == ((8 * KWH + 18) * 1237 + 500) // 1000  # x PUE, rounded once
    assert e["idle_mj"] > 0 and e["unattributed_mj"] > 0
    assert e["attributed_mj"] + e["idle_mj"] + e["unattributed_mj"] == e["facility_mj"]
    for group in ("by_model", "by_customer"):
        rows = doc[group]
        assert sum(r["own_mj"] for r in rows) == e["attributed_mj"]
        assert sum(r["idle_mj"] for r in rows) == e["idle_mj"]
        assert sum(r["energy_mj"] for r in rows) + e["unattributed_mj"] == e["facility_mj"]
        assert all(r["energy_mj"] == r["own_mj"] + r["idle_mj"] for r in rows)
    # the customers' energy is the green report's (its shares and its part of the idle, x PUE)
    customers = {r["name"]: r for r in doc["by_customer"]}
    green_b = energy.green_report(b.id, "b", "overseas", "2026-10")["energy_kwh"]
    assert abs(Decimal(customers["b"]["energy_kwh"]) - Decimal(green_b)) <= Decimal("0.000000001")
    measured = Decimal(5 * KWH + 11) / Decimal(8 * KWH + 18)
    assert e["method"] == "mixed" and e["measured_share"] == str(measured.quantize(Decimal("0.0001")))
    assert e["label"] == "mixed: 62.5 % measured, 37.5 % estimated"
    text = economics_text(doc)
    assert "idle" in text and "others' work" in text and "mixed: 62.5 % measured" in text
