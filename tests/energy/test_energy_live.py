"""Energy through a live gateway: a node's windows are metered, allocated to the requests that
were in flight, written with their audit entries, and add up."""

from __future__ import annotations

import sqlite3
import time

import httpx
import pytest
from support.live import mock_config, start_server, wait_until


@pytest.fixture(scope="module")
def metered(tmp_path_factory, mock_engine):
    cfg = mock_config(mock_engine.url)
    cfg["energy"] = {
        "window_s": 1,
        "pue": 1.25,
        "nodes": [{"name": "box", "source": "model", "idle_w": 10, "dynamic_w": 90, "backends": ["mock"]}],
    }
    server = start_server(tmp_path_factory.mktemp("energy-home"), cfg)
    yield server
    server.stop()
    server.verify_ledger()


def _rows(server, sql: str, *args) -> list[tuple]:
    db = sqlite3.connect(server.home / "tokenport.db")
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def test_windows_are_shared_among_the_requests_in_flight(metered) -> None:
    _, secret = metered.new_key("energy-user")
    headers = {"Authorization": f"Bearer {secret}"}
    ids = []
    for stream in (False, True, False):
        body = {
            "model": "mock-model",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 5,
            "stream": stream,
            "mock_chunk_delay_ms": 200,  # ~1 s of generation: spans a window or two
        }
        r = httpx.post(metered.base_url + "/v1/chat/completions", json=body, headers=headers, timeout=10)
        assert r.status_code == 200
        ids.append(r.headers["x-request-id"])
    refused = httpx.post(
        metered.base_url + "/v1/chat/completions",
        json={"model": "domestic-model", "messages": [{"role": "user", "content": "x"}]},
        headers=headers,
    )
    assert refused.status_code == 403

    def shared_out() -> bool:
        got = {r[0] for r in _rows(metered, "SELECT DISTINCT request_id FROM energy_shares")}
        return set(ids) <= got

    wait_until(shared_out, 10, 0.2, "energy shares")
    assert not _rows(
        metered, "SELECT 1 FROM energy_shares WHERE request_id = ?", refused.headers["x-request-id"]
    ), "a request the engine never saw uses none of its energy"
    time.sleep(1.2)  # one more window, idle
    windows = _rows(
        metered, "SELECT id, energy_mj, idle_mj, method, requests, zone, unattributed_mj FROM energy_windows"
    )
    assert windows and {w[3] for w in windows} == {"estimated"} and {w[5] for w in windows} == {"overseas"}
    for wid, energy, idle, _, n, _, others in windows:
        shared = _rows(
            metered,
            "SELECT COALESCE(SUM(static_mj + dynamic_mj), 0), COUNT(*) FROM energy_shares"
            " WHERE window_id = ?",
            wid,
        )[0]
        assert shared[0] + idle + others == energy and shared[1] == n
        # the power model: between idle (10 W) and full (100 W) over about one second
        assert 8_000 <= energy <= 110_000
    assert any(w[4] == 0 and w[2] == w[1] for w in windows), "an idle window is kept whole"
    entries = [
        r[0] for r in _rows(metered, 'SELECT entry FROM audit_entries WHERE entry LIKE \'%"type":"energy"%\'')
    ]
    assert len(entries) == len(windows)


def test_energy_reaches_the_usage_api_receipts_and_the_green_report(metered) -> None:
    from tokenport.audit.receipts import verify_receipt

    _, secret = metered.new_key("energy-reader")
    headers = {"Authorization": f"Bearer {secret}"}
    body = {"model": "mock-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    r = httpx.post(metered.base_url + "/v1/chat/completions", json=body, headers=headers, timeout=10)
    rid = r.headers["x-tokenport-receipt-id"]

    def receipt() -> dict | None:
        doc = httpx.get(f"{metered.base_url}/v1/receipts/{rid}", headers=headers, timeout=10).json()
        return doc if doc["energy"].get("complete") else None

    doc = wait_until(receipt, 10, 0.3, "a receipt with its energy")
    e = doc["energy"]
    assert verify_receipt(doc) == [] and e["metered"] and e["method"] == "estimated"
    assert e["energy_mj"] == (e["it_energy_mj"] * 1250 + 500) // 1000 and e["pue"] == "1.25"
    assert e["green_mj"] == 0 and e["co2_location_ug"] > 0  # no certificates: nothing green
    assert e["co2_market_ug"] >= e["co2_location_ug"]  # the residual mix is dirtier than the grid
    tampered = {**doc, "energy": {**e, "energy_mj": 0}}
    assert any("signature" in p for p in verify_receipt(tampered))

    usage = httpx.get(metered.base_url + "/v1/account/usage?group_by=model", headers=headers).json()
    (row,) = usage["data"]
    assert row["energy_mj"] == e["energy_mj"] and row["co2_location_ug"] == e["co2_location_ug"]
    assert usage["totals"]["energy_mj"] == e["energy_mj"]
    record = metered.record(rid)
    assert record["energy"]["energy_mj"] == e["energy_mj"] and record["energy"]["method"] == "estimated"

    green = httpx.get(metered.base_url + "/v1/account/green", headers=headers).json()
    assert green["tenant"] == "energy-reader" and green["final"] is False
    assert float(green["energy_kwh"]) > 0 and green["certificates"] == []
    assert green["method"]["estimated_share"] == "1.0000"
    bad = httpx.get(metered.base_url + "/v1/account/green?period=2026-13", headers=headers)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "period"
    html = httpx.get(metered.base_url + "/v1/account/green?format=html", headers=headers)
    assert html.headers["content-type"].startswith("text/html") and "energy-reader" in html.text


def test_work_the_engine_did_for_others_is_not_charged_to_ours(metered, mock_engine) -> None:
    """Requests sent to the engine directly (not through this gateway) show in its token
    counters: their share of the energy is left unattributed."""
    _, secret = metered.new_key("energy-neighbour")
    before = _rows(metered, "SELECT COALESCE(MAX(started_at), '') FROM energy_windows")[0][0]
    body = {"model": "mock-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}
    for _ in range(6):  # three times our work, straight to the engine
        assert httpx.post(mock_engine.url + "/v1/chat/completions", json=body, timeout=10).status_code == 200
    r = httpx.post(
        metered.base_url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {secret}"}
    )
    for _ in range(6):
        assert httpx.post(mock_engine.url + "/v1/chat/completions", json=body, timeout=10).status_code == 200
    rid = r.headers["x-request-id"]
    wait_until(
        lambda: _rows(metered, "SELECT 1 FROM energy_shares WHERE request_id = ?", rid), 10, 0.2, "share"
    )
    time.sleep(2.5)
    (others,) = _rows(
        metered, "SELECT COALESCE(SUM(unattributed_mj), 0) FROM energy_windows WHERE started_at > ?", before
    )[0]
    assert others > 0
