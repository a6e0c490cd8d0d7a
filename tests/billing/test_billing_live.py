"""Billing through the live gateway: prepaid credit, holds, exact charges, insufficient_quota."""

from __future__ import annotations

import subprocess
import threading

import openai
import pytest
from support.live import TOKENPORT, mock_config, start_server, wait_until

MESSAGES = [{"role": "user", "content": "hi"}]
# The mock answers 10 prompt and 20 completion tokens: 10 x $0.30/M + 20 x $1.20/M = $0.000027.
COST_NANO = 27_000


def balance(server, tenant: str) -> int:
    return server.cli_json("balance", tenant)["available_nano_usd"]


def test_no_credit_is_insufficient_quota_with_one_attempt_and_no_upstream_call(mock_server, mock_engine):
    _, secret = mock_server.new_key("broke-tenant")
    client = openai.OpenAI(base_url=mock_server.base_url + "/v1", api_key=secret)  # default retries on
    before = mock_engine.stats()["requests"]
    with pytest.raises(openai.RateLimitError) as exc:
        client.chat.completions.create(model="paid-model", messages=MESSAGES, max_tokens=20)
    assert exc.value.code == "insufficient_quota"
    assert exc.value.type == "insufficient_quota"
    assert exc.value.response.headers["x-should-retry"] == "false"
    assert mock_engine.stats()["requests"] == before, "no upstream call for a refused request"
    usage = wait_until(lambda: (u := mock_server.usage("broke-tenant"))["data"] and u, 5, 0.1, "record")
    assert [(r["status"], r["error_code"], r["cost_nano_usd"]) for r in usage["data"]] == [
        (429, "insufficient_quota", None)
    ], "the SDK made exactly one attempt"


def test_unpriced_model_is_refused_before_the_engine(tmp_path, mock_engine):
    server = start_server(tmp_path / "home", mock_config(mock_engine.url), prices={})  # no prices
    try:
        _, secret = server.new_key("unpriced-tenant")
        client = openai.OpenAI(base_url=server.base_url + "/v1", api_key=secret, max_retries=0)
        before = mock_engine.stats()["requests"]
        with pytest.raises(openai.PermissionDeniedError) as exc:
            client.chat.completions.create(model="mock-model", messages=MESSAGES)
        assert (exc.value.code, exc.value.param) == ("model_not_priced", "model")
        assert mock_engine.stats()["requests"] == before
        server.cli("prices", "set", "mock-model", "--free")  # priced while running: served at once
        reply = wait_until(lambda: _try(client), 1.0, 0.05, "the price to reach the running server")
        assert reply.usage.completion_tokens == 20
        assert "cost" not in reply.model_dump()["usage"], "a free model carries no cost"
    finally:
        server.stop()


def _try(client):
    try:
        return client.chat.completions.create(model="mock-model", messages=MESSAGES)
    except openai.PermissionDeniedError:
        return None


def test_credit_granted_while_running_is_spent_exactly(mock_server):
    _, secret = mock_server.new_key("paying-tenant")
    mock_server.cli("credits", "grant", "paying-tenant", "0.01")
    client = openai.OpenAI(base_url=mock_server.base_url + "/v1", api_key=secret, max_retries=0)

    def admitted():
        try:
            return client.chat.completions.with_raw_response.create(
                model="paid-model", messages=MESSAGES, max_tokens=20
            )
        except openai.RateLimitError:
            return None

    raw = wait_until(admitted, 1.0, 0.05, "the grant to reach the running server")
    reply = raw.parse()
    usage = reply.model_dump()["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (10, 20)
    assert (usage["cost"], usage["cost_nano_usd"]) == ("0.000027000", COST_NANO)

    stream = client.chat.completions.with_raw_response.create(
        model="paid-model",
        messages=MESSAGES,
        max_tokens=20,
        stream=True,
        stream_options={"include_usage": True},
    )
    last = list(stream.parse())[-1].model_dump()["usage"]
    assert (last["cost"], last["cost_nano_usd"]) == ("0.000027000", COST_NANO)

    for rid in (raw.headers["x-request-id"], stream.headers["x-request-id"]):
        assert mock_server.record(rid)["cost_nano_usd"] == COST_NANO
    assert balance(mock_server, "paying-tenant") == 10_000_000 - 2 * COST_NANO
    assert subprocess.run([TOKENPORT, "ledger", "verify"], env=mock_server.env).returncode == 0


def test_concurrent_streams_never_overdraw_a_small_balance(mock_server, mock_engine):
    """50 streams at once on a balance that holds about 10 of them."""
    _, secret = mock_server.new_key("small-balance")
    # Each request holds at most (body bytes x input price + 20 x output price), ~60 micro-USD.
    mock_server.cli("credits", "grant", "small-balance", "0.0006")
    wait_until(lambda: balance(mock_server, "small-balance") == 600_000, 2, 0.05, "grant")
    wait_until(lambda: mock_server.key_status(secret) == 200, 2, 0.05, "key")
    client = openai.OpenAI(base_url=mock_server.base_url + "/v1", api_key=secret)  # default retries on
    before = mock_engine.stats()["requests"]
    results: list[str] = []
    lock = threading.Lock()
    go = threading.Barrier(50)

    def one() -> None:
        go.wait()
        try:
            stream = client.chat.completions.create(
                model="paid-model",
                messages=MESSAGES,
                max_tokens=20,
                stream=True,
                extra_body={"mock_chunk_delay_ms": 20},
            )
            chunks = list(stream)
            outcome = "ok" if chunks else "empty"
        except openai.RateLimitError as exc:
            outcome = exc.code or "429"
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=one) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    ok = results.count("ok")
    assert len(results) == 50
    assert results.count("insufficient_quota") == 50 - ok
    assert 1 <= ok < 50
    assert mock_engine.stats()["requests"] - before == ok, "refused requests never reached the engine"
    wait_until(lambda: mock_server.usage("small-balance")["totals"]["requests"] == 50, 5, 0.1, "records")
    usage = mock_server.usage("small-balance")
    assert usage["totals"]["requests"] == 50, "exactly one attempt per refused request"
    charged = sum(r["cost_nano_usd"] or 0 for r in usage["data"])
    assert charged == ok * COST_NANO
    remaining = balance(mock_server, "small-balance")
    assert remaining == 600_000 - charged >= 0
    assert subprocess.run([TOKENPORT, "ledger", "verify"], env=mock_server.env).returncode == 0
