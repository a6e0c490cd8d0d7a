"""Tool calls through the gateway, as an OpenAI client sees them (the mock's `tool_calls` scenario).

The mock streams two tool calls, `get_weather` and `get_time`; each call's first delta carries the
id and the function name, the following deltas carry argument fragments, and every delta is one
completion token (TOOL_CALL_TOKENS in all).
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tokenport.testing.mock_engine import TOOL_CALL_TOKENS, TOOL_CALLS

MODEL = "mock-model"
MESSAGES = [{"role": "user", "content": "Weather in Paris, and the time in UTC?"}]
SCENARIO = {"mock_scenario": "tool_calls"}  # a body field: the gateway forwards bodies, not headers
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "Current time in a time zone",
            "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]},
        },
    },
]
EXPECTED_CALLS = [(name, json.loads("".join(frags))) for name, frags in TOOL_CALLS]
PROMPT_TOKENS = 10  # conftest starts the mock with --prompt-tokens 10


@pytest.fixture(scope="module")
def key(mock_server) -> str:
    return mock_server.new_key("tools-tenant")[1]


@pytest.fixture(scope="module")
def client(mock_server, key) -> openai.OpenAI:
    return openai.OpenAI(base_url=mock_server.base_url + "/v1", api_key=key, max_retries=0)


def sse_payloads(text: str) -> list[str]:
    """The data payloads of an SSE body, in order (comments and blank lines skipped)."""
    events = [e for e in text.split("\n\n") if e.strip()]
    out = []
    for event in events:
        data = [ln[5:].lstrip() for ln in event.split("\n") if ln.startswith("data:")]
        assert data, f"event without data: {event!r}"
        out.append("\n".join(data))
    return out


def test_streaming_tool_call_deltas(mock_server, client):
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=MESSAGES, tools=TOOLS, tool_choice="auto", stream=True, extra_body=SCENARIO
    )
    chunks = list(raw.parse())
    assert chunks, "no chunks"
    assert all(c.usage is None for c in chunks), "usage chunk leaked to a client that did not ask"

    deltas = []
    finish = []
    for c in chunks:
        assert len(c.choices) == 1
        choice = c.choices[0]
        assert choice.index == 0
        assert choice.delta.content in (None, ""), "a tool-call stream carried text"
        if choice.finish_reason:
            finish.append(choice.finish_reason)
        deltas += choice.delta.tool_calls or []
    assert finish == ["tool_calls"]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

    by_index: dict[int, list] = {}
    for d in deltas:
        assert d.index is not None
        by_index.setdefault(d.index, []).append(d)
    assert sorted(by_index) == list(range(len(EXPECTED_CALLS)))
    ids = set()
    for i, (name, args) in enumerate(EXPECTED_CALLS):
        first, *rest = by_index[i]
        assert first.id and first.function.name == name
        assert first.type == "function"
        ids.add(first.id)
        assert rest, "no argument fragments after the first delta"
        for d in rest:
            assert d.id is None and d.function.name is None, "id/name repeated after the first delta"
            assert d.function.arguments
        accumulated = "".join((d.function.arguments or "") for d in by_index[i])
        assert json.loads(accumulated) == args
    assert len(ids) == len(EXPECTED_CALLS), "tool call ids are not distinct"

    record = mock_server.record(raw.headers["x-request-id"])
    assert record["status"] == 200 and record["stream"] is True
    assert record["finish_reason"] == "tool_calls"
    assert record["completion_tokens"] == TOOL_CALL_TOKENS == len(deltas)
    assert record["prompt_tokens"] == PROMPT_TOKENS
    assert record["usage_source"] == "engine"
    assert record["error_code"] is None


def test_streaming_tool_calls_wire_format(mock_server, key):
    """The raw SSE bytes: every chunk's choice has `index`; tool-call deltas have `index`."""
    body = {"model": MODEL, "messages": MESSAGES, "tools": TOOLS, "stream": True, **SCENARIO}
    headers = {"authorization": f"Bearer {key}"}
    with httpx.Client(base_url=mock_server.base_url, timeout=30) as http:
        resp = http.post("/v1/chat/completions", json=body, headers=headers)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert resp.headers["x-request-id"]
    payloads = sse_payloads(resp.text)
    assert payloads[-1] == "[DONE]"
    objs = [json.loads(p) for p in payloads[:-1]]
    assert all(o["object"] == "chat.completion.chunk" for o in objs)
    assert all("usage" not in o for o in objs)
    tool_deltas = []
    for o in objs:
        for choice in o["choices"]:
            assert choice["index"] == 0
            for tc in choice["delta"].get("tool_calls") or []:
                assert isinstance(tc["index"], int)
                tool_deltas.append(tc)
    assert [o["choices"][0]["finish_reason"] for o in objs].count("tool_calls") == 1
    seen: set[int] = set()
    for tc in tool_deltas:
        if tc["index"] not in seen:
            seen.add(tc["index"])
            assert tc["id"] and tc["function"]["name"] and tc["type"] == "function"
        else:
            assert set(tc) == {"index", "function"} and set(tc["function"]) == {"arguments"}
    assert len(seen) == len(EXPECTED_CALLS)


def test_streaming_tool_calls_with_include_usage(mock_server, client):
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=MESSAGES,
        tools=TOOLS,
        stream=True,
        stream_options={"include_usage": True},
        extra_body=SCENARIO,
    )
    chunks = list(raw.parse())
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert all(c.usage is None for c in chunks[:-1])
    assert last.usage.completion_tokens == TOOL_CALL_TOKENS
    assert last.usage.prompt_tokens == PROMPT_TOKENS
    finish = [c.choices[0].finish_reason for c in chunks[:-1] if c.choices[0].finish_reason]
    assert finish == ["tool_calls"]
    record = mock_server.record(raw.headers["x-request-id"])
    assert record["completion_tokens"] == last.usage.completion_tokens
    assert record["prompt_tokens"] == last.usage.prompt_tokens
    assert record["finish_reason"] == "tool_calls"


def test_non_streaming_tool_calls(mock_server, client):
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=MESSAGES, tools=TOOLS, tool_choice="auto", extra_body=SCENARIO
    )
    reply = raw.parse()
    choice = reply.choices[0]
    assert choice.index == 0
    assert choice.finish_reason == "tool_calls"
    assert choice.message.role == "assistant"
    assert choice.message.content is None
    calls = choice.message.tool_calls
    assert calls is not None and len(calls) == len(EXPECTED_CALLS)
    assert len({c.id for c in calls}) == len(calls)
    for call, (name, args) in zip(calls, EXPECTED_CALLS, strict=True):
        assert call.type == "function" and call.id
        assert call.function.name == name
        assert json.loads(call.function.arguments) == args
    assert reply.usage.completion_tokens == TOOL_CALL_TOKENS
    record = mock_server.record(raw.headers["x-request-id"])
    assert record["status"] == 200 and record["stream"] is False
    assert record["finish_reason"] == "tool_calls"
    assert record["completion_tokens"] == reply.usage.completion_tokens
    assert record["prompt_tokens"] == reply.usage.prompt_tokens == PROMPT_TOKENS
    assert record["usage_source"] == "engine"


@pytest.mark.parametrize("stream", [False, True])
def test_tools_and_tool_choice_reach_the_engine(mock_engine, client, stream):
    tool_choice = {"type": "function", "function": {"name": "get_weather"}}
    mock_engine.reset()
    resp = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        tools=TOOLS,
        tool_choice=tool_choice,
        parallel_tool_calls=False,
        stream=stream,
        extra_body=SCENARIO,
    )
    if stream:
        list(resp)
    stats = mock_engine.stats()
    assert stats["requests"] == 1
    keys = set(stats["last_request_keys"])
    assert {"model", "messages", "tools", "tool_choice", "parallel_tool_calls"} <= keys


def test_tool_result_round_trip(client):
    """The follow-up turn (assistant tool_calls + tool messages) is accepted and answered."""
    messages = [
        *MESSAGES,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_0", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_0", "content": '{"temp_c": 21}'},
    ]
    reply = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS)
    assert reply.choices[0].finish_reason == "stop"
    assert reply.choices[0].message.content


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tools", "get_weather"),
        ("tools", [1, 2]),
        ("tools", [{"function": {"name": "x"}}]),  # no "type"
        ("tool_choice", 5),
        ("tool_choice", ["auto"]),
    ],
)
def test_malformed_tools_are_rejected(client, field, value):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, extra_body={field: value})
    err = info.value
    assert err.status_code == 400
    assert err.param == field
    assert err.request_id
