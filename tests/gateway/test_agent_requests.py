"""What coding agents send today, replayed against a live gateway over the mock engine: requests
captured from Claude Code 2.1.332 and Codex 0.171.0 on their default settings
(tests/fixtures/clients/), and the same features through the official SDKs. Each test checks
the answer the client gets and what the engine was sent (the mock keeps the last body)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from tokenport.api.responses.protocol import translate
from tokenport.api.responses.serving import call_item
from tokenport.api.responses.tools import tool_map

FIXTURES = Path(__file__).parents[1] / "fixtures" / "clients"
HOSTED = {"web_search", "file_search", "code_interpreter", "image_generation", "local_shell"}


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def sse_events(r: httpx.Response) -> list[tuple[str, dict]]:
    """(event name, data) of every event of an SSE answer."""
    out, name = [], None
    for line in r.iter_lines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: ") and line != "data: [DONE]":
            out.append((name, json.loads(line[6:])))
    return out


@pytest.fixture(scope="module")
def key(mock_server) -> str:
    return mock_server.new_key("agent-requests")[1]


def engine_body(mock_engine) -> dict:
    return mock_engine.stats()["last_body"]


# --- Anthropic Messages, as Claude Code sends it ---


def test_claude_codes_request_streams_through(mock_server, mock_engine, key) -> None:
    body = {**fixture("claude_code_messages_request"), "model": "mock-model"}
    headers = {
        "x-api-key": key,
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "mid-conversation-system",
    }
    with httpx.stream(
        "POST", mock_server.base_url + "/v1/messages?beta=true", json=body, headers=headers
    ) as r:
        assert r.status_code == 200, r.read()
        events = sse_events(r)
    names = [n for n, _ in events]
    assert names[0] == "message_start" and names[-1] == "message_stop" and "error" not in names
    assert events[-2][1]["usage"]["output_tokens"] == 20
    sent = engine_body(mock_engine)
    # The system prompt first, the conversation's own system message where Claude Code put it.
    assert [m["role"] for m in sent["messages"]] == ["system", "user", "system"]
    mid = body["messages"][1]["content"]  # text blocks, joined for the engine
    assert sent["messages"][2]["content"] == "\n".join(b["text"] for b in mid)
    # `thinking: adaptive` and `output_config.effort` as llama.cpp's template kwargs; nothing else
    # of Anthropic's (context_management, metadata, cache_control) reaches the engine.
    assert sent["chat_template_kwargs"] == {"enable_thinking": True, "reasoning_effort": "medium"}
    assert not {"thinking", "context_management", "metadata", "output_config"} & set(sent)
    assert "cache_control" not in json.dumps(sent["messages"])
    assert [t["function"]["name"] for t in sent["tools"]] == [t["name"] for t in body["tools"]]


SYSTEM_MID = {"role": "system", "content": "The user switched to plan mode."}
EXTRAS = {
    "thinking": {"type": "adaptive"},
    "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
    "output_config": {"effort": "high"},
    "metadata": {"user_id": "someone"},
    "service_tier": "auto",
    "container": "container_1",
    "mcp_servers": [{"type": "url", "url": "https://example.invalid/mcp", "name": "x"}],
}


@pytest.mark.parametrize("stream", [False, True])
def test_mid_conversation_system_and_thinking_through_the_sdk(mock_server, mock_engine, key, stream) -> None:
    client = anthropic.Anthropic(base_url=mock_server.base_url, api_key=key, max_retries=0)
    kwargs = dict(
        model="mock-think",
        max_tokens=64000 if stream else 16000,  # the SDK streams above ~21k
        system=[{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}],
        messages=[
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            SYSTEM_MID,
            {
                "role": "user",
                "content": [{"type": "text", "text": "go", "cache_control": {"type": "ephemeral"}}],
            },
        ],
        betas=["mid-conversation-system-2026-01-01", "context-management-2025-06-27"],
        extra_body={"unknown_future_field": {"a": 1}},
        **EXTRAS,
    )
    if stream:
        with client.beta.messages.stream(**kwargs) as s:
            msg = s.get_final_message()
    else:
        msg = client.beta.messages.create(**kwargs)
    # The engine reasoned for its first 10 tokens: a thinking block, signed, then the text.
    assert [b.type for b in msg.content] == ["thinking", "text"]
    assert msg.content[0].thinking == "tok " * 10 and msg.content[0].signature
    assert msg.content[1].text == "tok " * 10
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (10, 20)
    sent = engine_body(mock_engine)
    assert [m["role"] for m in sent["messages"]] == ["system", "user", "assistant", "system", "user"]
    assert sent["messages"][3]["content"] == SYSTEM_MID["content"]
    assert sent["chat_template_kwargs"] == {"enable_thinking": True, "reasoning_effort": "high"}
    assert "unknown_future_field" not in sent and "mcp_servers" not in sent


def test_thinking_display_omitted_returns_signed_blocks_without_text(mock_server, key) -> None:
    """Claude Code asks `display: omitted`: the thinking blocks come back signed, with no text."""
    client = anthropic.Anthropic(base_url=mock_server.base_url, api_key=key, max_retries=0)
    thinking = {"type": "adaptive", "display": "omitted"}
    body = {"model": "mock-think", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
    msg = client.messages.create(**body, extra_body={"thinking": thinking})
    assert [b.type for b in msg.content] == ["thinking", "text"] and msg.content[1].text == "tok " * 10
    assert msg.content[0].thinking == "" and msg.content[0].signature
    with httpx.stream(
        "POST",
        mock_server.base_url + "/v1/messages",
        json={**body, "thinking": thinking, "stream": True},
        headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
    ) as r:
        deltas = [d["delta"]["type"] for n, d in sse_events(r) if n == "content_block_delta"]
    assert deltas == ["signature_delta"] + ["text_delta"] * 10


def test_thinking_off_asks_the_engine_not_to_think_and_returns_no_thinking(
    mock_server, mock_engine, key
) -> None:
    client = anthropic.Anthropic(base_url=mock_server.base_url, api_key=key, max_retries=0)
    msg = client.messages.create(
        model="mock-think",
        max_tokens=100,
        messages=[{"role": "user", "content": "hi"}],
        thinking={"type": "disabled"},
    )
    assert [b.type for b in msg.content] == ["text"]
    assert engine_body(mock_engine)["chat_template_kwargs"] == {"enable_thinking": False}
    budget = client.messages.create(
        model="mock-model",
        max_tokens=9000,
        messages=[{"role": "user", "content": "hi"}],
        thinking={"type": "enabled", "budget_tokens": 5000},
    )
    assert budget.content[0].type == "text"
    assert engine_body(mock_engine)["chat_template_kwargs"] == {
        "enable_thinking": True,
        "reasoning_effort": "medium",
    }


def test_a_forced_server_tool_is_a_400(mock_server, key) -> None:
    client = anthropic.Anthropic(base_url=mock_server.base_url, api_key=key, max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as exc:
        client.messages.create(
            model="mock-model",
            max_tokens=10,
            messages=[{"role": "user", "content": "hi"}],
            tools=[{"type": "web_search_20250305", "name": "web_search"}],
            tool_choice={"type": "tool", "name": "web_search"},
        )
    assert exc.value.body["error"]["type"] == "invalid_request_error"
    assert "web_search" in exc.value.body["error"]["message"]


# --- Responses, as Codex sends it ---


def test_codexs_request_with_namespace_and_hosted_tools_streams_through(
    mock_server, mock_engine, key
) -> None:
    body = {**fixture("codex_responses_request"), "model": "mock-model"}
    declared = body["tools"]
    assert {t["type"] for t in declared} >= {"function", "namespace", "web_search"}  # the captured list
    with httpx.stream(
        "POST", mock_server.base_url + "/v1/responses", json=body, headers={"authorization": f"Bearer {key}"}
    ) as r:
        assert r.status_code == 200, r.read()
        events = sse_events(r)
    assert events[-1][0] == "response.completed", events[-3:]
    assert events[-1][1]["response"]["usage"]["output_tokens"] == 20
    names = [t["function"]["name"] for t in engine_body(mock_engine)["tools"]]
    expected = []
    for t in declared:
        if t["type"] == "function":
            expected.append(t["name"])
        elif t["type"] == "namespace":
            expected += [f"{t['name']}__{inner['name']}" for inner in t["tools"]]
    assert names == expected  # namespaces flattened, web_search left out


def test_codexs_default_model_request_with_additional_tools(mock_server, mock_engine, key) -> None:
    body = {**fixture("codex_default_model_request"), "model": "mock-model"}
    with httpx.stream(
        "POST", mock_server.base_url + "/v1/responses", json=body, headers={"authorization": f"Bearer {key}"}
    ) as r:
        assert r.status_code == 200, r.read()
        events = sse_events(r)
    assert events[-1][0] == "response.completed"
    sent = engine_body(mock_engine)
    (extra,) = [i for i in body["input"] if i.get("type") == "additional_tools"]
    expected = [f"{ns['name']}__{t['name']}" for ns in extra["tools"] for t in ns["tools"]]
    assert [t["function"]["name"] for t in sent["tools"]] == expected
    assert sent["chat_template_kwargs"]["enable_thinking"] is True  # reasoning.effort: low
    assert sent["chat_template_kwargs"]["reasoning_effort"] == "low"


@pytest.mark.parametrize("hosted", sorted(HOSTED))
def test_a_forced_hosted_tool_is_a_400(mock_server, key, hosted: str) -> None:
    client = openai.OpenAI(base_url=mock_server.base_url + "/v1", api_key=key, max_retries=0)
    tools = [{"type": hosted}, {"type": "function", "name": "f", "parameters": {"type": "object"}}]
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as exc:
            client.responses.create(
                model="mock-model", input="hi", tools=tools, tool_choice={"type": hosted}, stream=stream
            )
        err = exc.value.body
        assert err["type"] == "invalid_request_error" and err["param"] == "tool_choice", err
        assert hosted in err["message"]


def test_a_namespaced_call_goes_back_with_its_namespace() -> None:
    body = fixture("codex_responses_request")
    tools = tool_map(body)
    item = call_item(tools, "fc_1", "call_1", "multi_agent_v1__spawn_agent", '{"task": "x"}')
    assert (item["type"], item["name"], item["namespace"]) == (
        "function_call",
        "spawn_agent",
        "multi_agent_v1",
    )
    # ... and comes back in the next request's history under the engine's name.
    history = {
        **body,
        "input": [
            *body["input"],
            {
                "type": "function_call",
                "call_id": "call_1",
                "name": "spawn_agent",
                "namespace": "multi_agent_v1",
                "arguments": '{"task": "x"}',
            },
            {"type": "function_call_output", "call_id": "call_1", "output": "spawned"},
        ],
    }
    chat, _ = translate(history)
    calls = [m for m in chat["messages"] if m.get("tool_calls")]
    assert calls[-1]["tool_calls"][0]["function"]["name"] == "multi_agent_v1__spawn_agent"
    assert chat["messages"][-1] == {"role": "tool", "tool_call_id": "call_1", "content": "spawned"}
    assert "web_search" not in json.dumps(chat["tools"])


def test_a_custom_tool_with_a_grammar_is_a_function_taking_its_input() -> None:
    grammar = 'start: "a"+'
    tools = tool_map(
        {
            "tools": [
                {
                    "type": "custom",
                    "name": "apply_patch",
                    "format": {"type": "grammar", "syntax": "lark", "definition": grammar},
                }
            ]
        }
    )
    (fn,) = tools.functions
    assert fn["function"]["name"] == "apply_patch" and grammar in fn["function"]["description"]
    assert fn["function"]["parameters"]["required"] == ["input"]
    item = call_item(tools, "fc_2", "call_2", "apply_patch", '{"input": "aaa"}')
    assert (item["type"], item["input"]) == ("custom_tool_call", "aaa")


# --- the same on the embedded model (the real llama.cpp server and chat template) ---


def test_claude_codes_default_model_with_a_mid_conversation_system_on_the_embedded_model(
    engine_server,
) -> None:
    _, key = engine_server.new_key("claude-embedded")
    client = anthropic.Anthropic(base_url=engine_server.base_url, api_key=key, max_retries=0)
    msg = client.beta.messages.create(
        model=fixture("claude_code_messages_request")["model"],  # its default name, the claude-* alias
        max_tokens=8,
        system="You are terse.",
        messages=[
            {"role": "user", "content": "Name a colour."},
            {"role": "assistant", "content": "Blue."},
            SYSTEM_MID,
            {"role": "user", "content": "Another one."},
        ],
        **EXTRAS,
    )
    assert msg.content[-1].type == "text" and 0 < msg.usage.output_tokens <= 8
    record = engine_server.record(engine_server.usage("claude-embedded")["data"][-1]["request_id"])
    assert (record["model"], record["status"]) == ("smollm2-135m-instruct", 200)


def test_claude_codes_request_over_the_embedded_context_is_prompt_too_long(engine_server) -> None:
    """What Claude Code reads to compact the conversation: Anthropic's words and the engine's
    own count, streaming or not."""
    _, key = engine_server.new_key("claude-too-long")
    body = fixture("claude_code_messages_request")  # its texts were replaced by short stand-ins:
    body["messages"][0]["content"].append({"type": "text", "text": "A long file. " * 800})  # now it is long
    client = anthropic.Anthropic(base_url=engine_server.base_url, api_key=key, max_retries=0)
    counted = client.messages.count_tokens(
        model=body["model"], system=body["system"], messages=body["messages"], tools=body["tools"]
    ).input_tokens
    for stream in (False, True):
        r = httpx.post(
            engine_server.base_url + "/v1/messages",
            json={**body, "stream": stream},
            headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
            timeout=60,
        )
        assert r.status_code == 400 and r.headers["request-id"], r.text
        err = r.json()["error"]
        assert err["type"] == "invalid_request_error"
        said, maximum = (
            int(n)
            for n in re.fullmatch(
                r"prompt is too long: (\d+) tokens > (\d+) maximum", err["message"]
            ).groups()
        )
        assert said == counted > maximum
