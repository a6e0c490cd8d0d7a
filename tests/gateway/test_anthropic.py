"""The Anthropic Messages API, with the official `anthropic` SDK against a live gateway over the
mock engine (exact counts) and the embedded model."""

from __future__ import annotations

import json

import anthropic
import httpx
import pytest

from tokenport.api.anthropic.protocol import resolve_model, translate
from tokenport.gateway.errors import ApiError

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def claude(mock_server):
    _, secret = mock_server.new_key("anthropic-user")
    client = anthropic.Anthropic(base_url=mock_server.base_url, api_key=secret, max_retries=0)
    return client, secret


def test_a_message(mock_server, claude) -> None:
    client, _ = claude
    raw = client.messages.with_raw_response.create(model="mock-model", max_tokens=5, messages=MESSAGES)
    msg = raw.parse()
    assert msg.type == "message" and msg.role == "assistant" and msg.model == "mock-model"
    assert [b.type for b in msg.content] == ["text"] and msg.content[0].text == "tok " * 5
    assert msg.stop_reason == "max_tokens"
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (10, 5)
    rid = raw.headers["request-id"]
    assert rid == raw.headers["x-request-id"] == raw.headers["x-tokenport-receipt-id"]
    record = mock_server.record(rid)
    assert record["endpoint"] == "messages" and (record["prompt_tokens"], record["completion_tokens"]) == (
        10,
        5,
    )


def test_a_streamed_message_has_the_full_event_sequence(mock_server, claude) -> None:
    client, secret = claude
    with client.messages.stream(model="mock-model", max_tokens=7, messages=MESSAGES) as stream:
        final = stream.get_final_message()  # the SDK checks the event order as it accumulates
    assert final.content[0].text == "tok " * 7 and final.stop_reason == "max_tokens"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (10, 7)
    with httpx.stream(
        "POST",
        mock_server.base_url + "/v1/messages?beta=true",
        json={"model": "mock-model", "max_tokens": 3, "messages": MESSAGES, "stream": True},
        headers={"x-api-key": secret, "anthropic-version": "2023-06-01", "anthropic-beta": "made-up-flag"},
    ) as r:
        events = [line[7:] for line in r.iter_lines() if line.startswith("event: ")]
        rid = r.headers["request-id"]
    assert events == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    record = mock_server.record(rid)
    assert (record["prompt_tokens"], record["completion_tokens"], record["stream"]) == (10, 3, True)


@pytest.mark.parametrize("stream", [False, True])
def test_tool_use_round_trip(mock_server, claude, stream: bool) -> None:
    client, _ = claude
    tools = [
        {"name": "get_weather", "description": "weather", "input_schema": {"type": "object"}},
        {"name": "get_time", "input_schema": {"type": "object"}},
    ]
    kwargs = {"model": "mock-tools", "max_tokens": 50, "messages": MESSAGES, "tools": tools}
    if stream:
        with client.messages.stream(**kwargs) as s:
            msg = s.get_final_message()
    else:
        msg = client.messages.create(**kwargs)
    assert msg.stop_reason == "tool_use"
    calls = [b for b in msg.content if b.type == "tool_use"]
    assert [(c.name, c.input) for c in calls] == [
        ("get_weather", {"city": "Paris"}),
        ("get_time", {"tz": "UTC"}),
    ]
    follow = client.messages.create(
        model="mock-model",
        max_tokens=4,
        tools=tools,
        messages=[
            *MESSAGES,
            {"role": "assistant", "content": [c.model_dump() for c in calls]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": calls[0].id, "content": "sunny"},
                    {
                        "type": "tool_result",
                        "tool_use_id": calls[1].id,
                        "content": [{"type": "text", "text": "noon"}],
                    },
                ],
            },
        ],
    )
    assert follow.stop_reason == "max_tokens" and follow.content[0].type == "text"


def test_count_tokens_equals_the_input_tokens_billed(mock_server, claude) -> None:
    client, _ = claude
    counted = client.messages.count_tokens(model="mock-model", messages=MESSAGES)
    with client.messages.stream(model="mock-model", max_tokens=2, messages=MESSAGES) as s:
        start = next(e for e in s if e.type == "message_start")
        s.until_done()
    assert counted.input_tokens == start.message.usage.input_tokens == 10
    with pytest.raises(anthropic.NotFoundError):
        client.messages.count_tokens(model="no-such-model", messages=MESSAGES)
    with pytest.raises(anthropic.BadRequestError):
        client.messages.count_tokens(model="mock-model", messages=[])


def test_insufficient_credit_is_not_retried(mock_server) -> None:
    _, secret = mock_server.new_key("anthropic-broke")
    client = anthropic.Anthropic(base_url=mock_server.base_url, api_key=secret, max_retries=2)
    with pytest.raises(anthropic.RateLimitError) as exc:
        client.messages.create(model="paid-model", max_tokens=5, messages=MESSAGES)
    assert exc.value.body["error"]["type"] == "billing_error"
    assert exc.value.response.headers["x-should-retry"] == "false"


def test_errors_have_the_anthropic_shape(mock_server, claude) -> None:
    client, secret = claude
    with pytest.raises(anthropic.BadRequestError) as bad:
        client.messages.create(model="mock-model", max_tokens=0, messages=MESSAGES)
    assert bad.value.body["type"] == "error" and bad.value.body["error"]["type"] == "invalid_request_error"
    assert bad.value.response.headers["request-id"]
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="no-such-model", max_tokens=5, messages=MESSAGES)
    assert missing.value.body["error"]["type"] == "not_found_error"
    stranger = anthropic.Anthropic(base_url=mock_server.base_url, api_key="tpk_wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as auth:
        stranger.messages.create(model="mock-model", max_tokens=5, messages=MESSAGES)
    assert auth.value.body["error"]["type"] == "authentication_error"
    r = httpx.post(mock_server.base_url + "/v1/messages", content=b"{nope", headers={"x-api-key": secret})
    assert r.status_code == 400 and r.json()["type"] == "error" and "request-id" in r.headers
    r = httpx.get(mock_server.base_url + "/v1/messages", headers={"x-api-key": secret})
    assert (r.status_code == 405 and r.json()["error"]["type"] == "api_error") or r.status_code == 405


def test_translation_of_a_conversation() -> None:
    model, body = translate(
        {
            "model": "claude-sonnet-4-6",
            "max_tokens": 100,
            "system": [{"type": "text", "text": "be brief"}],
            "stop_sequences": ["END"],
            "tool_choice": {"type": "tool", "name": "f"},
            "tools": [
                {"name": "f", "input_schema": {"type": "object", "properties": {"x": {"type": "string"}}}}
            ],
            "messages": [
                {"role": "user", "content": "go"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "text", "text": "ok"},
                        {"type": "tool_use", "id": "t1", "name": "f", "input": {"x": "1"}},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "t1", "content": "done", "is_error": True},
                        {"type": "text", "text": "next"},
                    ],
                },
            ],
        },
        {"claude-*": "smollm2-135m-instruct"},
    )
    assert model == "claude-sonnet-4-6" and body["model"] == "smollm2-135m-instruct"
    assert body["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "go"},
        {
            "role": "assistant",
            "content": "ok",
            "tool_calls": [
                {
                    "id": "t1",
                    "type": "function",
                    "function": {"name": "f", "arguments": json.dumps({"x": "1"}, separators=(",", ":"))},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "t1", "content": "Error: done"},
        {"role": "user", "content": "next"},
    ]
    assert body["stop"] == ["END"] and body["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert body["tools"][0]["function"]["parameters"]["properties"] == {"x": {"type": "string"}}
    assert resolve_model("other", {"claude-*": "m"}) == "other"
    for broken in (
        {"model": "m", "messages": MESSAGES},  # no max_tokens
        {"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]},
        {
            "model": "m",
            "max_tokens": 5,
            "messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}],
        },
        {"model": "m", "max_tokens": 5, "messages": MESSAGES, "temperature": 3},
    ):
        with pytest.raises(ApiError):
            translate(broken, {})


def test_the_embedded_model_through_the_messages_api(engine_server) -> None:
    """A Claude model name reaches the embedded model (the default `claude-*` alias); the token
    count is the engine's own, and is what the answer bills as input."""
    _, secret = engine_server.new_key("claude-code-user")
    client = anthropic.Anthropic(base_url=engine_server.base_url, api_key=secret, max_retries=0)
    kwargs = {
        "model": "claude-sonnet-4-6",
        "system": "You are terse.",
        "messages": [{"role": "user", "content": "Name a colour."}],
    }
    counted = client.messages.count_tokens(**kwargs).input_tokens
    msg = client.messages.create(max_tokens=8, **kwargs)
    assert msg.model == "claude-sonnet-4-6" and msg.content[0].type == "text"
    assert msg.usage.input_tokens + msg.usage.cache_read_input_tokens == counted > 0
    with client.messages.stream(max_tokens=8, **kwargs) as s:
        start = next(e for e in s if e.type == "message_start")
        final = s.get_final_message()
    usage = start.message.usage
    assert usage.input_tokens + usage.cache_read_input_tokens == counted
    assert 0 < final.usage.output_tokens <= 8 and final.stop_reason in ("end_turn", "max_tokens")
    record = engine_server.record(engine_server.usage("claude-code-user")["data"][-1]["request_id"])
    assert record["model"] == "smollm2-135m-instruct" and record["prompt_tokens"] == counted
    assert record["completion_tokens"] == final.usage.output_tokens


def test_an_engine_failing_mid_stream_ends_with_an_error_event(mock_server, claude) -> None:
    client, secret = claude
    with httpx.stream(
        "POST",
        mock_server.base_url + "/v1/messages",
        json={"model": "mock-midfail", "max_tokens": 10, "messages": MESSAGES, "stream": True},
        headers={"x-api-key": secret},
    ) as r:
        lines = list(r.iter_lines())
        rid = r.headers["request-id"]
    events = [line[7:] for line in lines if line.startswith("event: ")]
    assert events[0] == "message_start" and events[-1] == "error" and "message_stop" not in events
    error = json.loads(next(line[6:] for line in reversed(lines) if line.startswith("data: ")))
    assert error["type"] == "error" and error["error"]["type"] == "api_error"
    with (
        pytest.raises(anthropic.APIStatusError),  # the SDK raises on the error event
        client.messages.stream(model="mock-midfail", max_tokens=10, messages=MESSAGES) as s,
    ):
        s.until_done()
    record = mock_server.record(rid)
    assert record["completion_tokens"] == 3 and record["error_code"]  # billed what was produced


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/v1/messages/count_tokens", 405),
        ("DELETE", "/v1/messages", 405),
        ("GET", "/v1/messages/batches", 404),
        ("POST", "/v1/messages/nope", 404),
    ],
)
def test_unknown_routes_and_methods_under_messages_answer_in_anthropics_shape(
    mock_server, claude, method: str, path: str, status: int
) -> None:
    _, secret = claude
    r = httpx.request(method, mock_server.base_url + path, headers={"x-api-key": secret})
    assert r.status_code == status, r.text
    body = r.json()
    kind = "not_found_error" if status == 404 else "invalid_request_error"
    assert body["type"] == "error" and body["error"]["type"] == kind and body["error"]["message"]
    assert r.headers["request-id"] == r.headers["x-request-id"]
    other = httpx.request(method, mock_server.base_url + path.replace("messages", "chat"))
    assert "error" in other.json() and "type" not in other.json()  # elsewhere, OpenAI's shape
