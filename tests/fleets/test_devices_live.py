"""Devices against a live gateway over the mock engine (10 prompt + 20 completion tokens per
answer): a toy activates by challenge and response and calls with its token through the official
`openai` SDK; a maker's server calls with a fleet key and the device header; the device's state,
quotas and the maker's money are enforced, each refusal without an upstream call."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import openai
import pytest
from support.fleets import TZ, Maker
from support.live import LiveServer, MockProcess, mock_config, start_server, wait_until

from tokenport.fleets.identity import activation_mac

MODEL = "mock-model"  # free: the maker's money is not what these tests are about ...
PAID = "paid-model"  # ... except where it is


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, mock_engine: MockProcess) -> Iterator[LiveServer]:
    server = start_server(tmp_path_factory.mktemp("fleet-home"), mock_config(mock_engine.url))
    yield server
    server.stop()
    server.verify_ledger()


def chat(base_url: str, token: str, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{base_url}/v1/chat/completions",
        headers={"authorization": f"Bearer {token}", **headers},
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "mock_chunk_delay_ms": 0},
        timeout=30,
    )


def test_a_toy_activates_and_talks_with_its_own_token(gateway: LiveServer, mock_engine: MockProcess):
    maker = Maker(gateway, "bears", models=(MODEL, PAID))
    serial = maker.serials[0]
    http = httpx.Client(base_url=gateway.base_url, timeout=10)

    nonce = http.post("/v1/devices/challenge", json={"serial": serial}).json()["nonce"]
    wrong = http.post("/v1/devices/activate", json={"serial": serial, "nonce": nonce, "mac": "00" * 32})
    assert (wrong.status_code, wrong.json()["error"]["code"]) == (401, "invalid_device_credentials")
    assert wrong.headers["x-request-id"]
    nonce = http.post("/v1/devices/challenge", json={"serial": serial}).json()["nonce"]
    mac = activation_mac(maker.secrets[serial], serial, nonce)
    first = http.post("/v1/devices/activate", json={"serial": serial, "nonce": nonce, "mac": mac})
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["device_token"].startswith("tpd_")
    assert body["entitlement"] == {
        "product": "BEAR",
        "ends_at": body["entitlement"]["ends_at"],
        "days_left": 365,
        "tokens_left_today": 100_000,
        "tokens_left_this_month": 1_000_000,
    }
    replay = http.post("/v1/devices/activate", json={"serial": serial, "nonce": nonce, "mac": mac})
    assert (replay.status_code, replay.json()["error"]["code"]) == (409, "challenge_used")
    unknown_nonce = http.post("/v1/devices/challenge", json={"serial": "NOBODY-1"}).json()["nonce"]
    unknown = http.post(
        "/v1/devices/activate", json={"serial": "NOBODY-1", "nonce": unknown_nonce, "mac": mac}
    )
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (401, "invalid_device_credentials")

    # the toy, through the official SDK, with its token
    client = openai.OpenAI(base_url=gateway.base_url + "/v1", api_key=body["device_token"], max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], extra_body={"mock_chunk_delay_ms": 0}
    )
    assert raw.http_response.status_code == 200
    remaining = int(raw.headers["x-tokenport-device-remaining-tokens"])
    assert 0 < remaining < 100_000
    assert mock_engine.stats()["last_body"]["max_tokens"] == 50  # the product's output cap
    record = gateway.record(raw.headers["x-request-id"])
    assert record["device_serial"] == serial and record["device_units"] == 30
    assert record["product_id"].startswith("prd_") and record["key_id"].startswith("flt_")
    receipt = httpx.get(  # the signed receipt names the device (read with a key of the maker's)
        f"{gateway.base_url}/v1/receipts/{raw.headers['x-request-id']}",
        headers={"authorization": f"Bearer {gateway.new_key('bears')[1]}"},
        timeout=10,
    ).json()
    assert receipt["record"]["device_serial"] == serial and receipt["record"]["device_units"] == 30

    # activating again: a new token, the entitlement unchanged, the package fee posted once
    again = maker.activate(serial)
    assert again["entitlement"]["ends_at"] == body["entitlement"]["ends_at"]
    assert again["entitlement"]["tokens_left_today"] == 100_000 - 30


def test_a_maker_server_calls_with_a_fleet_key_and_the_device_header(gateway: LiveServer):
    maker, other = Maker(gateway, "owls", models=(MODEL, PAID)), Maker(gateway, "cats", models=(MODEL, PAID))
    serial = maker.serials[0]
    maker.activate(serial)
    other.activate(other.serials[0])
    key = gateway.cli_json("keys", "create", "--tenant", "owls", "--fleet", maker.fleet)["key"]
    assert key.startswith("tpf_")
    gateway.wait_key_accepted(key)
    ok = chat(gateway.base_url, key, **{"x-tokenport-device": serial})
    assert ok.status_code == 200, ok.text
    record = gateway.record(ok.headers["x-request-id"])
    assert record["device_serial"] == serial and record["key_id"] != maker.fleet

    foreign = chat(gateway.base_url, key, **{"x-tokenport-device": other.serials[0]})
    assert (foreign.status_code, foreign.json()["error"]["code"]) == (404, "device_not_found")
    _, plain = gateway.new_key("owls")
    refused = chat(gateway.base_url, plain, **{"x-tokenport-device": serial})
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "device_header_not_allowed")
    token = maker.activate(maker.serials[1])["device_token"]
    posing = chat(gateway.base_url, token, **{"x-tokenport-device": serial})
    assert (posing.status_code, posing.json()["error"]["code"]) == (403, "device_header_not_allowed")
    not_active = chat(gateway.base_url, key, **{"x-tokenport-device": maker.serials[3]})
    assert (not_active.status_code, not_active.json()["error"]["code"]) == (403, "device_not_activated")


def test_a_revoked_device_is_refused_within_a_second_although_its_token_is_valid(gateway: LiveServer):
    maker = Maker(gateway, "frogs", models=(MODEL, PAID))
    token = maker.activate(maker.serials[0])["device_token"]
    assert chat(gateway.base_url, token).status_code == 200
    gateway.cli("devices", "revoke", maker.serials[0], "--reason", "returned to the shop")
    t0 = time.monotonic()
    wait_until(lambda: chat(gateway.base_url, token).status_code == 403, 1.0, 0.02, "revoked device refused")
    assert time.monotonic() - t0 < 1.0
    r = chat(gateway.base_url, token)
    assert r.json()["error"]["code"] == "device_revoked"
    gone = httpx.post(
        gateway.base_url + "/v1/devices/challenge", json={"serial": maker.serials[0]}, timeout=10
    ).json()["nonce"]
    mac = activation_mac(maker.secrets[maker.serials[0]], maker.serials[0], gone)
    again = httpx.post(
        gateway.base_url + "/v1/devices/activate",
        json={"serial": maker.serials[0], "nonce": gone, "mac": mac},
        timeout=10,
    )
    assert (again.status_code, again.json()["error"]["code"]) == (403, "device_revoked")


def test_the_device_quota_runs_out_before_the_makers_money(gateway: LiveServer, mock_engine: MockProcess):
    maker = Maker(gateway, "ducks", models=(MODEL, PAID), daily=400)
    token = maker.activate(maker.serials[0])["device_token"]
    served = []
    for _ in range(20):
        r = chat(gateway.base_url, token)
        if r.status_code != 200:
            break
        served.append(r)
    assert served and r.status_code == 429, r.text
    err = r.json()["error"]
    assert err["code"] == "device_quota_exceeded" and err["type"] == "insufficient_quota"
    assert r.headers["x-should-retry"] == "false"
    left = int(r.headers["x-tokenport-device-remaining-tokens"])
    assert left == 400 - 30 * len(served)  # settled on what was used: 30 tokens each
    now = datetime.now(UTC)
    local = now.astimezone(ZoneInfo(TZ))
    midnight = datetime(local.year, local.month, local.day, tzinfo=ZoneInfo(TZ)) + timedelta(days=1)
    assert abs(int(r.headers["retry-after"]) - (midnight - now).total_seconds()) <= 5
    before = mock_engine.stats()["requests"]
    assert chat(gateway.base_url, token).status_code == 429
    assert mock_engine.stats()["requests"] == before  # refused before the engine


def test_the_makers_pool_runs_out_while_the_device_has_quota(gateway: LiveServer, mock_engine: MockProcess):
    maker = Maker(gateway, "geese", models=(MODEL, PAID), credit=None)
    token = maker.activate(maker.serials[0])["device_token"]
    before = mock_engine.stats()["requests"]
    r = httpx.post(
        gateway.base_url + "/v1/chat/completions",
        headers={"authorization": f"Bearer {token}"},
        json={"model": PAID, "messages": [{"role": "user", "content": "hi"}]},
        timeout=30,
    )
    assert r.status_code == 429, r.text
    assert r.json()["error"]["code"] == "insufficient_quota" and r.headers["x-should-retry"] == "false"
    assert mock_engine.stats()["requests"] == before
    assert chat(gateway.base_url, token).status_code == 200  # the free model still answers


def test_the_package_fee_is_in_the_ledger_once(gateway: LiveServer, tmp_path: Path):
    maker = Maker(gateway, "hens", models=(MODEL, PAID))
    for _ in range(3):
        maker.activate(maker.serials[0])
    maker.activate(maker.serials[1])
    res = gateway.cli("ledger", "verify", check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    db = sqlite3.connect(gateway.home / "tokenport.db")
    kinds = db.execute(
        "SELECT COUNT(*), SUM(e.amount) FROM ledger_transactions t JOIN ledger_entries e ON e.tx_id = t.id "
        "JOIN tenants n ON n.id = t.tenant_id WHERE t.kind = 'package' AND n.name = 'hens' "
        "AND e.account = 'revenue:packages'"
    ).fetchone()
    assert kinds == (2, 2 * 1_500_000_000)  # two devices, 1.50 USD each, in nano-USD


def test_usage_grouped_by_device_and_product(gateway: LiveServer):
    maker = Maker(gateway, "lambs", models=(MODEL, PAID))
    tokens = [maker.activate(s)["device_token"] for s in maker.serials[:2]]
    for token, n in zip(tokens, (2, 3), strict=True):
        for _ in range(n):
            assert chat(gateway.base_url, token).status_code == 200
    _, key = gateway.new_key("lambs")
    assert chat(gateway.base_url, key).status_code == 200  # the maker's own request: no device

    def grouped(by: str) -> dict:
        r = httpx.get(
            f"{gateway.base_url}/v1/account/usage",
            params={"group_by": by},
            headers={"authorization": f"Bearer {key}"},
            timeout=10,
        )
        assert r.status_code == 200, r.text
        return {g[by]: g for g in r.json()["data"]}

    def all_recorded() -> dict | None:
        groups = grouped("device")
        return groups if sum(g["requests"] for g in groups.values()) == 6 else None

    by_device = wait_until(all_recorded, 5, 0.1, "usage by device")
    assert {s: g["requests"] for s, g in by_device.items()} == {
        maker.serials[0]: 2,
        maker.serials[1]: 3,
        None: 1,
    }
    assert by_device[maker.serials[0]]["completion_tokens"] == 40
    by_product = grouped("product")
    assert sorted(g["requests"] for g in by_product.values()) == [1, 5]
    assert next(p for p in by_product if p is not None).startswith("prd_")


def test_the_invoice_has_a_line_per_product(gateway: LiveServer):
    maker = Maker(gateway, "pigs", models=(MODEL, PAID))
    token = maker.activate(maker.serials[0])["device_token"]
    maker.activate(maker.serials[1])
    maker.activate(maker.serials[0])  # again: no second fee
    for _ in range(2):
        assert chat(gateway.base_url, token).status_code == 200
    paid = httpx.post(
        gateway.base_url + "/v1/chat/completions",
        headers={"authorization": f"Bearer {token}"},
        json={"model": PAID, "messages": [{"role": "user", "content": "hi"}], "mock_chunk_delay_ms": 0},
        timeout=30,
    )
    assert paid.status_code == 200, paid.text
    gateway.record(paid.headers["x-request-id"])

    doc = gateway.cli_json("invoices", "preview", "--tenant", "pigs")
    (product,) = doc["products"]
    assert product["sku"] == "BEAR" and product["devices_activated"] == 2
    assert (product["package_fees_nano_usd"], product["package_fees_usd"]) == (3_000_000_000, "3.000000000")
    assert product["by_model"] == {
        MODEL: {"requests": 2, "input_tokens": 20, "output_tokens": 40},
        PAID: {"requests": 1, "input_tokens": 10, "output_tokens": 20},
    }
    usage_total = sum(line["amount_nano_usd"] for line in doc["lines"])
    assert usage_total > 0  # the paid model's request
    assert doc["total_nano_usd"] == usage_total + 3_000_000_000
    assert doc["payments"]["amount_due"]["nano_usd"] == 3_000_000_000  # usage came from credit
    csv_text = gateway.cli("invoices", "preview", "--tenant", "pigs", "--format", "csv").stdout
    assert "packages: BEAR (2 activated)" in csv_text and "3.000000000" in csv_text


def test_the_fleet_report_agrees_with_the_usage_records_and_the_ledger(gateway: LiveServer):
    maker = Maker(gateway, "cows", models=(MODEL, PAID), daily=2000)
    tokens = [maker.activate(s)["device_token"] for s in maker.serials[:3]]
    for token, n in zip(tokens, (1, 2, 3), strict=True):
        for _ in range(n):
            r = httpx.post(
                gateway.base_url + "/v1/chat/completions",
                headers={"authorization": f"Bearer {token}"},
                json={
                    "model": PAID,
                    "messages": [{"role": "user", "content": "hi"}],
                    "mock_chunk_delay_ms": 0,
                },
                timeout=30,
            )
            assert r.status_code == 200, r.text
    for _ in range(100):  # the third device runs into its cap
        if chat(gateway.base_url, tokens[2]).status_code != 200:
            break
    refused = chat(gateway.base_url, tokens[2])
    assert refused.json()["error"]["code"] == "device_quota_exceeded"
    assert "daily quota of 2000 tokens" in refused.json()["error"]["message"]

    def recorded() -> list[dict] | None:
        data = gateway.usage("cows")["data"]
        return data if sum(r["error_code"] == "device_quota_exceeded" for r in data) >= 2 else None

    records = wait_until(recorded, 5, 0.1, "usage records")
    served = [r for r in records if r["status"] == 200]
    period = datetime.now(UTC).strftime("%Y-%m")
    doc = gateway.cli_json("fleets", "report", maker.fleet, "--period", period)
    (product,) = doc["products"]
    assert (product["imported"], product["activated"], product["active_7d"]) == (4, 3, 3)
    assert product["at_cap_today"] == 1
    assert product["requests"] == len(served) + sum(r["status"] != 200 for r in records)
    assert product["tokens"] == sum(r["prompt_tokens"] + r["completion_tokens"] for r in records)
    cost = sum(r["cost_nano_usd"] or 0 for r in records)
    assert product["cost_usd"] == f"{cost / 1e9:.9f}" and cost > 0
    assert product["cost_per_active_device_usd"] == f"{cost // 3 / 1e9:.9f}"
    per_device = {}
    for r in records:
        per_device[r["device_serial"]] = (
            per_device.get(r["device_serial"], 0) + r["prompt_tokens"] + r["completion_tokens"]
        )
    assert [d["serial"] for d in doc["top_devices"]] == sorted(per_device, key=lambda s: -per_device[s])
    assert {d["serial"]: d["tokens"] for d in doc["top_devices"]} == per_device
    days = doc["tokens_per_device_day"]
    assert days["device_days"] == 3 and days["p50"] == sorted(per_device.values())[1]
    assert days["p99"] == max(per_device.values())
    balance = gateway.cli_json("balance", "cows")
    pool = doc["pool"]
    assert pool["available_usd"] == balance["available_usd"]
    spent = cost + 3 * 1_500_000_000  # the requests and three package fees, all in the last 7 days
    assert pool["burn_usd_per_day"] == f"{spent // 7 / 1e9:.9f}"
    assert pool["runway_days"] == int(balance["available_usd"].replace(".", "")) // (spent // 7)
    _, key = gateway.new_key("cows")
    api = httpx.get(
        f"{gateway.base_url}/v1/account/fleets/{maker.fleet}/report",
        params={"period": period},
        headers={"authorization": f"Bearer {key}"},
        timeout=10,
    ).json()
    assert api["products"] == doc["products"] and api["top_devices"] == doc["top_devices"]
    _, stranger = gateway.new_key("strangers")
    other = httpx.get(
        f"{gateway.base_url}/v1/account/fleets/{maker.fleet}/report",
        headers={"authorization": f"Bearer {stranger}"},
        timeout=10,
    )
    assert other.status_code == 404
    html = gateway.cli("fleets", "report", maker.fleet, "--period", period, "--format", "html").stdout
    assert "<h1>Fleet cows-fleet" in html and maker.serials[2] in html


def test_activation_is_throttled_per_address(tmp_path: Path, mock_engine: MockProcess):
    cfg = mock_config(mock_engine.url)
    cfg["limits"] = {"device_challenges_per_minute": 4, "auth_failures_per_minute": 2, "default_rpm": 1}
    server = start_server(tmp_path / "home", cfg)
    try:
        maker = Maker(server, "rams", models=(MODEL,))
        token = maker.activate(maker.serials[0])["device_token"]  # one challenge of the four
        # the default per-key rate is a key's: a device token has its product's (none here)
        assert [chat(server.base_url, token).status_code for _ in range(3)] == [200, 200, 200]
        http = httpx.Client(base_url=server.base_url, timeout=10)
        nonces = [http.post("/v1/devices/challenge", json={"serial": f"T-{i}"}) for i in range(4)]
        assert [r.status_code for r in nonces] == [200, 200, 200, 429]
        assert nonces[3].json()["error"]["code"] == "too_many_auth_failures"
        assert int(nonces[3].headers["retry-after"]) >= 1
        wrong = [
            http.post(
                "/v1/devices/activate",
                json={"serial": f"T-{i}", "nonce": nonces[i].json()["nonce"], "mac": "0"},
            )
            for i in range(3)
        ]
        assert [r.status_code for r in wrong] == [401, 401, 429]
    finally:
        server.stop()


def test_a_device_seen_from_too_many_addresses_is_flagged_and_quarantined(gateway: LiveServer):
    maker = Maker(gateway, "moles", models=(MODEL,), fleet_args=("--max-addresses", "1", "--auto-quarantine"))
    token = maker.activate(maker.serials[0])["device_token"]
    assert chat(gateway.base_url, token).status_code == 200  # from 127.0.0.1
    elsewhere = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"), timeout=30)
    second = elsewhere.post(
        gateway.base_url + "/v1/chat/completions",
        headers={"authorization": f"Bearer {token}"},
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "mock_chunk_delay_ms": 0},
    )
    assert second.status_code == 200  # flagged, not refused: the quarantine follows
    wait_until(lambda: chat(gateway.base_url, token).status_code == 403, 2.0, 0.05, "quarantined")
    assert chat(gateway.base_url, token).json()["error"]["code"] == "device_quarantined"
    (flag,) = gateway.cli_json("devices", "flagged", maker.fleet)
    assert flag["serial"] == maker.serials[0] and flag["kind"] == "addresses"
    assert "2 client addresses within an hour (at most 1)" in flag["detail"]
    assert gateway.cli_json("devices", "show", maker.serials[0])["state"] == "quarantined"
    metrics = httpx.get(gateway.base_url + "/metrics", timeout=10).text
    assert 'tokenport_device_flags_total{kind="addresses"} 1.0' in metrics
    gateway.cli("devices", "release", maker.serials[0])  # the maker looked: back to active
    wait_until(lambda: chat(gateway.base_url, token).status_code == 200, 2.0, 0.05, "released")


def test_bad_device_input_is_a_client_error(gateway: LiveServer, mock_engine: MockProcess):
    maker = Maker(gateway, "bats", models=(MODEL,))
    token = maker.activate(maker.serials[0])["device_token"]
    http = httpx.Client(base_url=gateway.base_url, timeout=10)
    for body in (
        {"serial": "A\u0000", "nonce": "0" * 32, "mac": "00"},
        {"serial": maker.serials[0], "nonce": "not-a-nonce\u0000", "mac": "00"},
    ):
        r = http.post(
            "/v1/devices/activate", content=json.dumps(body), headers={"content-type": "application/json"}
        )
        assert (r.status_code, r.json()["error"]["code"]) == (401, "invalid_device_credentials"), r.text
    r = http.post("/v1/devices/challenge", content=b"{" + b" " * 10_000 + b"}")
    assert (r.status_code, r.json()["error"]["code"]) == (413, "body_too_large")
    assert http.post("/v1/devices/challenge", json={"serial": "A\u0000"}).status_code == 400
    _, key = gateway.new_key("bats")
    r = http.get("/v1/account/fleets/%00/report", headers={"authorization": f"Bearer {key}"})
    assert r.status_code == 404

    # both output limits given: each is capped (an engine may honour either), and held for
    r = httpx.post(
        gateway.base_url + "/v1/chat/completions",
        headers={"authorization": f"Bearer {token}"},
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1,
              "max_completion_tokens": 100_000, "mock_chunk_delay_ms": 0},
        timeout=30,
    )  # fmt: skip
    assert r.status_code == 200, r.text
    sent = mock_engine.stats()["last_body"]
    assert (sent["max_tokens"], sent["max_completion_tokens"]) == (1, 50)


def test_a_maker_server_calling_from_several_addresses_is_not_a_clone(gateway: LiveServer):
    maker = Maker(gateway, "voles", models=(MODEL,), fleet_args=("--max-addresses", "1", "--auto-quarantine"))
    serial = maker.serials[0]
    maker.activate(serial)
    key = gateway.cli_json("keys", "create", "--tenant", "voles", "--fleet", maker.fleet)["key"]
    gateway.wait_key_accepted(key)
    for address in ("127.0.0.1", "127.0.0.2", "127.0.0.3"):  # the maker's server instances
        client = httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=30)
        r = client.post(
            gateway.base_url + "/v1/chat/completions",
            headers={"authorization": f"Bearer {key}", "x-tokenport-device": serial},
            json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "mock_chunk_delay_ms": 0},
        )
        assert r.status_code == 200, r.text
    assert gateway.cli_json("devices", "flagged", maker.fleet) == []
