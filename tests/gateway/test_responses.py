"""The OpenAI Responses API (what Codex CLI speaks), with the official `openai` SDK against a
live gateway over the mock engine (exact counts) and the embedded model."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tokenport.api.responses.protocol import translate
from tokenport.gateway.errors import ApiError

TOOLS = [
    {"type": "function", "name": "get_weather", "parameters": {"type": "object"}},
    {"type": "function", "name": "get_time", "description": "time", "parameters": {"type": "object"}},
]


@pytest.fixture(scope="module")
def client(mock_server) -> openai.OpenAI:
    _, secret = mock_server.new_key("codex-user")
    return openai.OpenAI(base_url=mock_server.base_url + "/v1", api_key=secret, max_retries=0)


def test_a_response(mock_server, client) -> None:
    raw = client.responses.with_raw_response.create(model="mock-model", input="hi", max_output_tokens=30)
    r = raw.parse()
    assert r.status == "completed" and r.output_text == "tok " * 20 and r.model == "mock-model"
    u = r.usage
    assert (u.input_tokens, u.output_tokens, u.total_tokens) == (10, 20, 30)
    assert u.input_tokens_details.cached_tokens == 0 and u.output_tokens_details.reasoning_tokens == 0
    record = mock_server.record(raw.headers["x-request-id"])
    assert record["endpoint"] == "responses" and (record["prompt_tokens"], record["completion_tokens"]) == (
        10,
        20,
    )
    cut = client.responses.create(model="mock-model", input="hi", max_output_tokens=5)
    assert cut.status == "incomplete" and cut.incomplete_details.reason == "max_output_tokens"


def test_a_streamed_response_ends_with_its_usage(mock_server, client) -> None:
    with client.responses.stream(model="mock-model", input="hi", instructions="be brief") as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_response()
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[2:4] == ["response.output_item.added", "response.content_part.added"]
    assert kinds.count("response.output_text.delta") == 20
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert final.output_text == "tok " * 20 and final.usage.total_tokens == 30
    usage = mock_server.usage("codex-user")["data"][-1]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (
        final.usage.input_tokens,
        final.usage.output_tokens,
    )


@pytest.mark.parametrize("stream", [False, True])
def test_function_calls_round_trip(client, stream: bool) -> None:
    if stream:
        with client.responses.stream(model="mock-tools", input="weather?", tools=TOOLS) as s:
            r = s.get_final_response()
    else:
        r = client.responses.create(model="mock-tools", input="weather?", tools=TOOLS)
    calls = [o for o in r.output if o.type == "function_call"]
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris"}),
        ("get_time", {"tz": "UTC"}),
    ]
    follow = client.responses.create(
        model="mock-model",
        max_output_tokens=3,
        tools=TOOLS,
        input=[
            {"role": "user", "content": "weather?"},
            *[
                {"type": "function_call", "call_id": c.call_id, "name": c.name, "arguments": c.arguments}
                for c in calls
            ],
            *[{"type": "function_call_output", "call_id": c.call_id, "output": "ok"} for c in calls],
        ],
    )
    assert follow.output_text == "tok " * 3


def test_failures(mock_server, client) -> None:
    _, broke = mock_server.new_key("codex-broke")
    poor = openai.OpenAI(base_url=mock_server.base_url + "/v1", api_key=broke, max_retries=0)
    with pytest.raises(openai.RateLimitError) as exc:
        poor.responses.create(model="paid-model", input="hi")
    assert exc.value.code == "insufficient_quota"
    with poor.responses.stream(model="paid-model", input="hi") as s:
        events = list(s)
    assert events[-1].type == "response.failed"
    assert events[-1].response.error.code == "insufficient_quota"
    with pytest.raises(openai.BadRequestError) as bad:
        client.responses.create(model="mock-model", input="hi", previous_response_id="resp_1")
    assert bad.value.param == "previous_response_id"
    r = httpx.post(
        mock_server.base_url + "/v1/responses", content=b"[]", headers={"Authorization": f"Bearer {broke}"}
    )
    assert (
        r.status_code == 400 and r.json()["error"]["code"] == "invalid_json" and "x-request-id" in r.headers
    )


def test_translation() -> None:
    body, _ = translate(
        {
            "model": "m",
            "instructions": "sys",
            "input": [
                {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "dev"}]},
                {"role": "user", "content": "q"},
                {"type": "reasoning", "summary": []},
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "1"},
            ],
            "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
            "tool_choice": {"type": "function", "name": "f"},
            "text": {"format": {"type": "json_schema", "name": "s", "schema": {"type": "object"}}},
            "max_output_tokens": 9,
        }
    )
    assert body["messages"] == [
        {"role": "system", "content": "sys"},
        {"role": "system", "content": "dev"},
        {"role": "user", "content": "q"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "1"},
    ]
    assert body["max_tokens"] == 9 and body["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "s", "schema": {"type": "object"}},
    }
    for broken in (
        {"model": "m"},
        {"model": "m", "input": [{"type": "input_image"}]},
        {
            "model": "m",
            "input": "x",
            "tools": [{"type": "web_search"}],
            "tool_choice": {"type": "web_search"},
        },
        {"model": "m", "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
    ):
        with pytest.raises(ApiError):
            translate(broken)
    hosted_only, _ = translate({"model": "m", "input": "x", "tools": [{"type": "web_search"}]})
    assert "tools" not in hosted_only  # a hosted tool is left out, not refused


def test_the_embedded_model_through_the_responses_api(engine_server) -> None:
    _, secret = engine_server.new_key("codex-local")
    client = openai.OpenAI(base_url=engine_server.base_url + "/v1", api_key=secret, max_retries=0)
    with client.responses.stream(model="smollm2-135m-instruct", input="Say hi.", max_output_tokens=8) as s:
        last = list(s)[-1]  # completed, or incomplete when the 8 tokens ran out (as OpenAI does)
    assert last.type in ("response.completed", "response.incomplete")
    final = last.response
    assert final.status == last.type.removeprefix("response.") and final.output_text
    record = engine_server.usage("codex-local")["data"][-1]
    assert (record["prompt_tokens"], record["completion_tokens"]) == (
        final.usage.input_tokens,
        final.usage.output_tokens,
    )


def test_an_engine_failing_mid_stream_is_a_failed_response(mock_server, client) -> None:
    with client.responses.stream(model="mock-midfail", input="hi") as s:
        events = list(s)
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.failed"
    assert "response.completed" not in kinds and kinds.count("response.output_text.delta") == 3
    assert events[-1].response.status == "failed" and events[-1].response.error.message
