"""Context limits handled as the real APIs handle them, through a live gateway: an output limit
above what the context leaves is lowered to it (said in `usage`, and the hold is taken on the
lowered one); a prompt that does not fit is refused before the engine, in each protocol's own
words. The mock engine counts every prompt as 900 tokens; one backend's context is 1000 tokens
(room for 100 out), one's 800 (no room), one's the default (131072)."""

from __future__ import annotations

import json

import anthropic
import httpx
import openai
import pytest
from support.live import DEFAULT_PRICES, LiveServer, mock_config, start_mock, start_server, wait_until

from tokenport.gateway.window import ContextExceeded, engine_context_error

PROMPT = 900
PRICE = ["--input", "1", "--cached", "1", "--output", "10"]  # USD per million tokens
LONG = "word " * 250  # 1250 bytes: too long to be sure of the fit without counting


@pytest.fixture(scope="module")
def mock():
    engine = start_mock("--prompt-tokens", str(PROMPT), "--completion-tokens", "20")
    yield engine
    engine.stop()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, mock) -> LiveServer:
    cfg = mock_config(mock.url)
    cfg["backends"] = [
        {"name": "small", "url": mock.url, "kind": "llamacpp", "models": ["ctx-model"], "context": 1000},
        {"name": "tiny", "url": mock.url, "kind": "llamacpp", "models": ["tight-model"], "context": 800},
        {"name": "roomy", "url": mock.url, "kind": "llamacpp", "models": ["roomy-model"]},
    ]
    prices = {**DEFAULT_PRICES, "ctx-model": PRICE, "tight-model": PRICE, "roomy-model": PRICE}
    server = start_server(tmp_path_factory.mktemp("context-home"), cfg, prices=prices)
    yield server
    server.stop()
    server.verify_ledger()


def funded_key(gateway: LiveServer, tenant: str, usd: str) -> str:
    _, secret = gateway.new_key(tenant)
    gateway.cli("credits", "grant", tenant, usd)
    nano = int(float(usd) * 1e9)
    wait_until(lambda: gateway.cli_json("balance", tenant)["available_nano_usd"] == nano, 5, 0.05, "grant")
    return secret


def records(gateway: LiveServer, tenant: str, n: int) -> list[dict]:
    return wait_until(
        lambda: (data := gateway.usage(tenant)["data"]) and len(data) >= n and data, 10, 0.1, f"{n} records"
    )


def test_an_output_limit_above_the_room_left_is_clamped_and_held_on_the_clamp(gateway, mock) -> None:
    # $0.002 covers 900 in + 100 out ($0.0019) but not 900 in + 500 out ($0.0059).
    key = funded_key(gateway, "clamp-tenant", "0.002")
    client = openai.OpenAI(base_url=gateway.base_url + "/v1", api_key=key, max_retries=0)
    messages = [{"role": "user", "content": LONG}]
    raw = client.chat.completions.with_raw_response.create(
        model="ctx-model", messages=messages, max_tokens=500
    )
    reply = raw.parse()
    assert mock.stats()["last_body"]["max_tokens"] == 100  # what the context leaves
    assert reply.usage.model_extra["clamped_max_tokens"] == 100
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (PROMPT, 20)
    # Billed what it used: 900 in + 20 out = $0.0011.
    rid = raw.headers["x-request-id"]
    assert gateway.record(rid)["cost_nano_usd"] == 1_100_000
    wait_until(
        lambda: gateway.cli_json("balance", "clamp-tenant")["available_nano_usd"] == 900_000,
        5,
        0.05,
        "settle",
    )
    # The same request where the context leaves room is held on its own 500: refused for credit.
    with pytest.raises(openai.RateLimitError) as exc:
        client.chat.completions.create(model="roomy-model", messages=messages, max_tokens=500)
    assert exc.value.code == "insufficient_quota"


def test_a_clamped_stream_says_so_in_its_usage(gateway, mock) -> None:
    _, key = gateway.new_key("clamp-stream")
    gateway.cli("credits", "grant", "clamp-stream", "1")
    wait_until(
        lambda: gateway.cli_json("balance", "clamp-stream")["available_nano_usd"] > 0, 5, 0.05, "grant"
    )
    body = {
        "model": "ctx-model",
        "messages": [{"role": "user", "content": LONG}],
        "max_completion_tokens": 4000,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream(
        "POST",
        gateway.base_url + "/v1/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {key}"},
    ) as r:
        chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    usage = chunks[-1]["usage"]
    assert usage["clamped_max_tokens"] == 100 and usage["completion_tokens"] == 20
    assert mock.stats()["last_body"]["max_tokens"] == 100


def test_a_prompt_too_long_is_refused_before_the_engine_in_each_protocol(gateway, mock) -> None:
    key = funded_key(gateway, "long-prompts", "1")
    before = mock.stats()["requests"]
    messages = [{"role": "user", "content": LONG}]

    oa = openai.OpenAI(base_url=gateway.base_url + "/v1", api_key=key, max_retries=0)
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as exc:
            oa.chat.completions.create(model="tight-model", messages=messages, stream=stream)
        err = exc.value.body
        assert err["code"] == "context_length_exceeded" and err["type"] == "invalid_request_error"
        assert "maximum context length is 800 tokens" in err["message"] and "900" in err["message"]
        assert "exceeds the available context size" not in err["message"]  # never the engine's text

    claude = anthropic.Anthropic(base_url=gateway.base_url, api_key=key, max_retries=0)
    for stream in (False, True):
        with pytest.raises(anthropic.BadRequestError) as aexc:
            kwargs = dict(model="tight-model", max_tokens=16000, messages=messages)
            if stream:
                with claude.messages.stream(**kwargs) as s:
                    s.get_final_message()
            else:
                claude.messages.create(**kwargs)
        assert aexc.value.body == {
            "type": "error",
            "error": {
                "type": "invalid_request_error",
                "message": "prompt is too long: 900 tokens > 799 maximum",
            },
        }

    with pytest.raises(openai.BadRequestError) as rexc:
        oa.responses.create(model="tight-model", input=LONG)
    assert rexc.value.body["code"] == "context_length_exceeded"
    with httpx.stream(
        "POST",
        gateway.base_url + "/v1/responses",
        json={"model": "tight-model", "input": LONG, "stream": True},
        headers={"authorization": f"Bearer {key}"},
    ) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["error"]["code"] == "context_length_exceeded"

    assert mock.stats()["requests"] == before  # the engine never saw one of them
    refused = records(gateway, "long-prompts", 6)  # two for each protocol
    assert len(refused) == 6 and {(r["status"], r["error_code"]) for r in refused} == {
        (400, "context_length_exceeded")
    }
    assert {r["endpoint"] for r in refused} == {"chat", "messages", "responses"}
    assert all(r["completion_tokens"] == 0 and not r["cost_nano_usd"] for r in refused)
    assert gateway.cli_json("balance", "long-prompts")["available_nano_usd"] == 1_000_000_000


@pytest.mark.parametrize(
    ("message", "error", "counts"),
    [
        (
            "request (8243 tokens) exceeds the available context size (8192 tokens), try increasing it",
            {},
            (8243, 8192),
        ),
        (
            "the request exceeds the available context size",
            {"n_prompt_tokens": 9000, "n_ctx": 8192},
            (9000, 8192),
        ),
        (
            "This model's maximum context length is 4096 tokens. However, you requested 5000 tokens",
            {},
            (5000, 4096),
        ),
        (
            "The input (7000 tokens) is longer than the model's context length (4096 tokens).",
            {},
            (7000, 4096),
        ),
        ("context window exceeded", {"type": "exceed_context_size_error"}, (None, None)),
    ],
)
def test_engines_refusals_in_our_terms(message: str, error: dict, counts) -> None:
    found = engine_context_error(message, error)
    assert isinstance(found, ContextExceeded) and (found.prompt, found.context) == counts
    assert found.code == "context_length_exceeded" and message not in found.message
    assert found.anthropic_message.startswith("prompt is too long")


def test_other_engine_errors_are_not_context_errors() -> None:
    assert engine_context_error("invalid 'temperature': must be at most 2", {}) is None
