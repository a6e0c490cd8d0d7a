"""Supply, certificates, the green report and the value chain, on a real database (SQLite and
PostgreSQL) with metered windows, usage records and ledger revenue written as the gateway does."""

from __future__ import annotations

import json
import subprocess
import threading
from datetime import UTC, datetime, timedelta
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
from tokenport.energy.reports import economics_csv, economics_html, green_csv, green_html
from tokenport.energy.service import EnergyInputError, EnergyService
from tokenport.store.billing import BillingStore
from tokenport.store.energy import DuplicateCertificate, EnergyStore
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
    billing = BillingService(BillingStore(engine), tenancy, clock)
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
    store.write(
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
    assert models["m-large"]["revenue_usd"] == "3.000000" and models["m-large"]["energy_kwh"] == "3.000000000"
    customers = {r["name"]: r for r in doc["by_customer"]}
    assert customers["toys"]["energy_kwh"] == "1.250000000"  # its 1 kWh and a quarter of the idle
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
