"""Every wait on an engine has a configured bound (issue 17): an engine that takes a request and
never answers, or stalls mid-stream, ends the request with `upstream_timeout` in the protocol's
own shape within its bound, billed for what was delivered, the hold released. The gateway is
real; the mock engine hangs or stalls on request."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from support.live import DEFAULT_PRICES, PAID_MODEL_PRICE, LiveServer, mock_config, start_server, wait_until

WAITS = {"headers_timeout_s": 1, "first_token_timeout_s": 1, "idle_timeout_s": 1, "total_timeout_s": 4}
TENANT = "slow-engines"


@pytest.fixture(scope="module")
def server(tmp_path_factory, mock_engine) -> LiveServer:
    cfg = {**mock_config(mock_engine.url), "upstream": WAITS}
    hang = {"name": "hangs", "url": mock_engine.url, "kind": "llamacpp", "models": ["mock-hang"]}
    cfg["backends"] = [*cfg["backends"], hang]  # a model the mock never answers, whatever the protocol
    prices = {**DEFAULT_PRICES, "mock-hang": PAID_MODEL_PRICE}
    live = start_server(tmp_path_factory.mktemp("waits-home"), cfg, prices=prices)
    live.new_key(TENANT)
    live.cli("credits", "grant", TENANT, "1")
    wait_until(lambda: balance(live) == 10**9, 5, 0.05, "the grant")
    yield live
    live.stop()
    live.verify_ledger()


@pytest.fixture(scope="module")
def key(server: LiveServer) -> str:
    return server.new_key(TENANT)[1]


def balance(server: LiveServer) -> int:
    return server.cli_json("balance", TENANT)["available_nano_usd"]


def chat(**extra) -> dict:
    return {"model": "paid-model", "messages": [{"role": "user", "content": "hi"}], **extra}


def streamed(server: LiveServer, key: str, path: str, body: dict, headers: dict | None = None):
    """(seconds taken, the SSE data objects, request id)."""
    t0 = time.monotonic()
    with httpx.stream(
        "POST",
        server.base_url + path,
        json=body,
        headers={"authorization": f"Bearer {key}", **(headers or {})},
        timeout=30,
    ) as r:
        assert r.status_code == 200
        data = [json.loads(ln[6:]) for ln in r.iter_lines() if ln.startswith("data: {")]
        rid = r.headers["x-request-id"]
    return time.monotonic() - t0, data, rid


def settled(server: LiveServer, rid: str, before: int) -> dict:
    record = server.record(rid)
    cost = record["cost_nano_usd"] or 0
    wait_until(lambda: balance(server) == before - cost, 5, 0.05, "the hold released")
    return record


def test_an_engine_that_never_starts_answering_a_stream(server, key) -> None:
    before = balance(server)
    took, data, rid = streamed(server, key, "/v1/chat/completions", chat(stream=True, mock_scenario="hang"))
    assert took < 3  # the first-token bound (1 s), not the engine's 30 s
    assert data[-1]["error"]["code"] == "upstream_timeout" and "1 s" in data[-1]["error"]["message"]
    record = settled(server, rid, before)
    assert (record["error_code"], record["completion_tokens"]) == ("upstream_timeout", 0)
    assert not record["cost_nano_usd"]  # nothing delivered, nothing charged


def test_an_engine_that_never_answers_a_whole_request(server, key) -> None:
    before = balance(server)
    t0 = time.monotonic()
    r = httpx.post(
        server.base_url + "/v1/chat/completions",
        json=chat(mock_scenario="hang"),
        headers={"authorization": f"Bearer {key}"},
        timeout=30,
    )
    took = time.monotonic() - t0
    assert r.status_code == 504 and r.json()["error"]["code"] == "upstream_timeout"
    assert 3.5 < took < 8  # a whole answer's headers come with it: the total bound (4 s)
    record = settled(server, r.headers["x-request-id"], before)
    assert record["status"] == 504 and not record["cost_nano_usd"]


def test_an_engine_that_stalls_mid_stream_is_billed_for_what_it_delivered(server, key) -> None:
    before = balance(server)
    body = chat(stream=True, max_tokens=5, mock_chunk_delay_ms=2500)  # 2.5 s between tokens
    took, data, rid = streamed(server, key, "/v1/chat/completions", body)
    assert took < 4
    assert data[-1]["error"]["code"] == "upstream_timeout"
    delivered = sum(1 for d in data if d.get("choices") and d["choices"][0]["delta"].get("content"))
    record = settled(server, rid, before)
    assert record["completion_tokens"] == delivered == 1 and record["cost_nano_usd"] > 0


def test_the_other_protocols_say_so_in_their_own_shape(server, key) -> None:
    anthropic_headers = {"anthropic-version": "2023-06-01"}
    took, data, _ = streamed(
        server,
        key,
        "/v1/messages",
        {
            "model": "mock-hang",
            "max_tokens": 5,
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
        },
        anthropic_headers,
    )
    assert took < 3 and data[-1]["type"] == "error" and "1 s" in data[-1]["error"]["message"]
    took, data, _ = streamed(
        server, key, "/v1/responses", {"model": "mock-hang", "input": "hi", "stream": True}
    )
    assert took < 3 and data[-1]["type"] == "response.failed"
    assert data[-1]["response"]["error"]["code"] == "upstream_timeout"


def test_a_registered_backend_has_its_own_bounds(tmp_path, mock_engine) -> None:
    """`tokenport backends add --total-timeout 2 --first-token-timeout 1`: that backend's bounds,
    while [upstream] keeps its own (long) defaults for the others."""
    prices = {**DEFAULT_PRICES, "mock-hang": PAID_MODEL_PRICE}
    live = start_server(tmp_path / "home", mock_config(mock_engine.url), prices=prices)
    _, secret = live.new_key(TENANT)
    live.cli("credits", "grant", TENANT, "1")
    flags = ["--first-token-timeout", "1", "--total-timeout", "2", "--kind", "llamacpp"]
    live.cli("backends", "add", "late-hang", "--url", mock_engine.url, "--models", "mock-hang", *flags)
    bad = live.cli(
        "backends",
        "add",
        "bad",
        "--url",
        mock_engine.url,
        "--models",
        "x",
        "--idle-timeout",
        "0",
        check=False,
    )
    assert bad.returncode != 0 and "--idle-timeout must be a positive number of seconds" in bad.stderr
    listed = {b["name"]: b for b in live.cli_json("backends", "list", "--no-probe")}
    assert listed["late-hang"]["timeouts_s"] == {
        "connect": 5.0,
        "headers": 60.0,
        "first_token": 1.0,
        "idle": 120.0,
        "total": 2.0,
    }
    assert listed["mock"]["timeouts_s"]["headers"] == 60.0  # [upstream]'s default
    body = {"model": "mock-hang", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    headers = {"authorization": f"Bearer {secret}"}
    url = live.base_url + "/v1/chat/completions"
    wait_until(lambda: httpx.post(url, json=body, headers=headers, timeout=30).status_code == 504, 10, 0.2)
    t0 = time.monotonic()
    r = httpx.post(url, json=body, headers=headers, timeout=30)
    waited = time.monotonic() - t0
    assert r.status_code == 504 and r.json()["error"]["code"] == "upstream_timeout"
    assert "late-hang" in r.json()["error"]["message"] and 1.5 < waited < 4
    took, data, _ = streamed(live, secret, "/v1/chat/completions", {**body, "stream": True})
    assert data[-1]["error"]["code"] == "upstream_timeout" and took < 3  # its first-token bound, 1 s
    live.stop()
    live.verify_ledger()
