"""Anthropic Messages requests: validated and translated to an OpenAI chat completion body, which
the gateway sends upstream exactly as it does an OpenAI request (one code path to the engines).

What is translated: `system` (a string or text blocks), user and assistant turns with text,
`tool_use` and `tool_result` blocks, `tools` (`input_schema` as the function's parameters),
`tool_choice` (auto / any / tool / none), `max_tokens`, `stop_sequences`, `temperature`,
`top_p`, `stream`. Ignored: `metadata`, `top_k`, `thinking`, `service_tier`, cache_control
marks, and `anthropic-beta` flags. Images and documents are refused (no model here reads them).
"""

from __future__ import annotations

import fnmatch
from typing import Any

import orjson

from tokenport.api.openai_protocol import MAX_TOKENS_CAP, ParsedRequest, copy_sampling, parse_body
from tokenport.gateway.errors import bad_request


def resolve_model(name: str, aliases: dict[str, str]) -> str:
    """A configured alias (glob patterns allowed, e.g. `claude-*`) or the name itself."""
    if name in aliases:
        return aliases[name]
    for pattern, target in aliases.items():
        if fnmatch.fnmatchcase(name, pattern):
            return target
    return name


def _text(block: dict, where: str) -> str:
    text = block.get("text")
    if not isinstance(text, str):
        raise bad_request(f"{where}: a text block needs a string 'text'", param="messages")
    return text


def _content_text(content: Any, where: str) -> str:
    """A tool result's (or system prompt's) content: a string or text blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if not isinstance(block, dict) or block.get("type") != "text":
                raise bad_request(f"{where}: only text content is supported here", param="messages")
            parts.append(_text(block, where))
        return "\n".join(parts)
    if content is None:
        return ""
    raise bad_request(f"{where}: content must be a string or an array of blocks", param="messages")


def _turn(i: int, message: Any) -> list[dict]:
    """One Anthropic message as OpenAI messages (a user turn's tool results become tool messages)."""
    where = f"messages[{i}]"
    if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
        raise bad_request(f"{where}: role must be 'user' or 'assistant'", param="messages")
    role, content = message["role"], message.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise bad_request(f"{where}: content must be a string or an array of blocks", param="messages")
    texts: list[str] = []
    calls: list[dict] = []
    results: list[dict] = []
    for j, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        at = f"{where}.content[{j}]"
        if kind == "text":
            texts.append(_text(block, at))
        elif kind == "tool_use" and role == "assistant":
            if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
                raise bad_request(f"{at}: tool_use needs a string 'id' and 'name'", param="messages")
            arguments = orjson.dumps(block.get("input") or {}).decode()
            calls.append(
                {
                    "id": block["id"],
                    "type": "function",
                    "function": {"name": block["name"], "arguments": arguments},
                }
            )
        elif kind == "tool_result" and role == "user":
            if not isinstance(block.get("tool_use_id"), str):
                raise bad_request(f"{at}: tool_result needs a string 'tool_use_id'", param="messages")
            text = _content_text(block.get("content"), at)
            if block.get("is_error"):
                text = f"Error: {text}"
            results.append({"role": "tool", "tool_call_id": block["tool_use_id"], "content": text})
        elif kind in ("thinking", "redacted_thinking"):
            continue  # earlier reasoning is not replayed to the engine
        elif kind in ("image", "document"):
            raise bad_request(
                f"{at}: {kind} blocks are not supported by the models served here", param="messages"
            )
        else:
            raise bad_request(f"{at}: unsupported content block type {kind!r}", param="messages")
    out = list(results)
    if role == "assistant":
        turn: dict = {"role": "assistant", "content": "".join(texts) or None}
        if calls:
            turn["tool_calls"] = calls
        out.append(turn)
    elif texts or not results:
        out.append({"role": "user", "content": "\n".join(texts)})
    return out


def _tools(tools: Any) -> list[dict]:
    if not isinstance(tools, list):
        raise bad_request("'tools' must be an array", param="tools")
    out = []
    for i, t in enumerate(tools):
        if not isinstance(t, dict) or not isinstance(t.get("name"), str):
            raise bad_request(f"tools[{i}] needs a string 'name'", param="tools")
        if t.get("type") not in (None, "custom"):
            continue  # server tools (web search, ...) are not run here
        schema = t.get("input_schema") or {"type": "object"}
        if not isinstance(schema, dict):
            raise bad_request(f"tools[{i}].input_schema must be an object", param="tools")
        fn = {"name": t["name"], "parameters": schema}
        if isinstance(t.get("description"), str):
            fn["description"] = t["description"]
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(choice: Any) -> Any:
    if not isinstance(choice, dict):
        raise bad_request("'tool_choice' must be an object", param="tool_choice")
    kind = choice.get("type")
    if kind == "auto":
        return "auto"
    if kind == "any":
        return "required"
    if kind == "none":
        return "none"
    if kind == "tool" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise bad_request("'tool_choice.type' must be auto, any, tool (with a name) or none", param="tool_choice")


def translate(body: dict, aliases: dict[str, str]) -> tuple[str, dict]:
    """(the model asked for, the OpenAI chat body for the engine)."""
    model = body.get("model")
    if not isinstance(model, str) or not model or len(model) > 128:
        raise bad_request("'model' is required: a string of 1 to 128 characters", param="model")
    max_tokens = body.get("max_tokens")
    if (
        not isinstance(max_tokens, int)
        or isinstance(max_tokens, bool)
        or not 1 <= max_tokens <= MAX_TOKENS_CAP
    ):
        raise bad_request("'max_tokens' is required: an integer of at least 1", param="max_tokens")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty array", param="messages")
    chat: list[dict] = []
    system = body.get("system")
    if system is not None:
        chat.append({"role": "system", "content": _content_text(system, "system")})
    for i, m in enumerate(messages):
        chat += _turn(i, m)
    out: dict[str, Any] = {"model": resolve_model(model, aliases), "messages": chat, "max_tokens": max_tokens}
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad_request("'stream' must be a boolean", param="stream")
    out["stream"] = stream
    stops = body.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops) or len(stops) > 16:
            raise bad_request("'stop_sequences' must be an array of strings", param="stop_sequences")
        if stops:
            out["stop"] = stops
    copy_sampling(body, out, 1)
    if body.get("tools"):
        tools = _tools(body["tools"])
        if tools:
            out["tools"] = tools
    if body.get("tool_choice") is not None and "tools" in out:
        out["tool_choice"] = _tool_choice(body["tool_choice"])
    return model, out


def parse_messages(raw: bytes, aliases: dict[str, str]) -> tuple[str, ParsedRequest]:
    """(the model the client asked for, the request the lifecycle routes on: the engine's model
    and the translated body). The usage chunk is always asked for: the answer needs it."""
    asked, chat = translate(parse_body(raw), aliases)
    return asked, ParsedRequest("messages", chat["model"], chat["stream"], chat["stream"], chat)
