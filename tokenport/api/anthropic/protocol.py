"""Anthropic Messages requests: validated and translated to an OpenAI chat completion body, which
the gateway sends upstream exactly as it does an OpenAI request (one code path to the engines).

Translated: `system` (a string or text blocks); user and assistant turns with text, `tool_use`
and `tool_result` blocks; `role: "system"` turns anywhere in `messages` (Claude Code's
mid-conversation system messages), as system messages at that position; `tools`
(`input_schema` as the function's parameters), `tool_choice` (auto / any / tool / none,
`disable_parallel_tool_use`), `max_tokens`, `stop_sequences`, `temperature`, `top_p`, `stream`;
`thinking` (enabled with a budget, adaptive, disabled) and `output_config.effort` as the engine's
reasoning parameters (engines/dialects.py); `output_config.format` (a JSON schema) as
`response_format`. Dropped: earlier thinking blocks, blocks of server tools that no engine here
ran, server tools themselves (a `tool_choice` forcing one is a 400). Ignored: `metadata`,
`top_k`, `context_management`, `service_tier`, `container`, `mcp_servers`, `cache_control`
marks, `anthropic-beta` flags and any other field. Images and documents a user sends are refused
(no model here reads them); in a tool's result they become a line saying so.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from tokenport.api.openai.protocol import (
    MAX_TOKENS_CAP,
    ParsedRequest,
    check_model,
    check_stream,
    copy_sampling,
    parse_body,
)
from tokenport.engines.dialects import EFFORTS, Reasoning
from tokenport.gateway.errors import bad_request

# Blocks of Anthropic's server tools (run by Anthropic, never by an engine here): dropped from the
# history, as earlier thinking is.
SERVER_BLOCKS = frozenset(
    {
        "thinking",
        "redacted_thinking",
        "server_tool_use",
        "web_search_tool_result",
        "web_fetch_tool_result",
        "code_execution_tool_result",
        "bash_code_execution_tool_result",
        "text_editor_code_execution_tool_result",
        "tool_search_tool_result",
        "mcp_tool_use",
        "mcp_tool_result",
        "container_upload",
    }
)
UNREADABLE = ("image", "document")  # what the models served here cannot read


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


def _content_text(content: Any, where: str, in_tool_result: bool = False) -> str:
    """A system prompt's or tool result's content: a string or blocks (text, search results;
    in a tool result, an image or document becomes a line saying it was left out)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for j, block in enumerate(content):
            kind = _block_type(block, f"{where}[{j}]")
            if kind == "text":
                parts.append(_text(block, where))
            elif kind == "search_result":
                parts.append(_content_text(block.get("content"), where))
            elif kind in UNREADABLE and in_tool_result:
                parts.append(f"[{kind} left out: the model cannot read it]")
            elif kind == "tool_reference":
                continue
            else:
                raise bad_request(f"{where}: only text content is supported here", param="messages")
        return "\n".join(parts)
    if content is None:
        return ""
    raise bad_request(f"{where}: content must be a string or an array of blocks", param="messages")


@dataclass
class _Blocks:
    """A turn's content blocks, sorted by where they go in the OpenAI conversation."""

    texts: list[str] = field(default_factory=list)
    calls: list[dict] = field(default_factory=list)  # the assistant's tool calls
    results: list[dict] = field(default_factory=list)  # the user's tool results: tool messages


def _text_block(block: dict, at: str, into: _Blocks) -> None:
    into.texts.append(_text(block, at))


def _search_result(block: dict, at: str, into: _Blocks) -> None:
    into.texts.append(_content_text(block.get("content"), at))


def _tool_use(block: dict, at: str, into: _Blocks) -> None:
    if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
        raise bad_request(f"{at}: tool_use needs a string 'id' and 'name'", param="messages")
    arguments = orjson.dumps(block.get("input") or {}).decode()
    into.calls.append(
        {"id": block["id"], "type": "function", "function": {"name": block["name"], "arguments": arguments}}
    )


def _tool_result(block: dict, at: str, into: _Blocks) -> None:
    if not isinstance(block.get("tool_use_id"), str):
        raise bad_request(f"{at}: tool_result needs a string 'tool_use_id'", param="messages")
    text = _content_text(block.get("content"), at, in_tool_result=True)
    if block.get("is_error"):
        text = f"Error: {text}"
    into.results.append({"role": "tool", "tool_call_id": block["tool_use_id"], "content": text})


# The blocks each role may send, by type; any other is skipped (SERVER_BLOCKS) or refused.
_BLOCKS: dict[str, dict[Any, Callable[[dict, str, _Blocks], None]]] = {
    "user": {"text": _text_block, "search_result": _search_result, "tool_result": _tool_result},
    "assistant": {"text": _text_block, "search_result": _search_result, "tool_use": _tool_use},
}


def _block_type(block: Any, where: str) -> str | None:
    """A block's `type` (None for what is not an object); one that is not a string is refused."""
    kind = block.get("type") if isinstance(block, dict) else None
    if kind is not None and not isinstance(kind, str):
        raise bad_request(f"{where}: 'type' must be a string", param="messages")
    return kind


def _blocks(role: str, content: list, where: str) -> _Blocks:
    """A user or assistant turn's blocks, each by its role's handler."""
    into, handlers = _Blocks(), _BLOCKS[role]
    for j, block in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = _block_type(block, at)
        if (handler := handlers.get(kind)) is not None:
            handler(block, at, into)
        elif kind in SERVER_BLOCKS:
            continue  # earlier reasoning and server tools' traffic are not replayed to the engine
        elif kind in UNREADABLE:
            raise bad_request(
                f"{at}: {kind} blocks are not supported by the models served here", param="messages"
            )
        else:
            raise bad_request(f"{at}: unsupported content block type {kind!r}", param="messages")
    return into


def _turn(i: int, message: Any) -> list[dict]:
    """One Anthropic message as OpenAI messages (a user turn's tool results become tool messages)."""
    where = f"messages[{i}]"
    if not isinstance(message, dict) or message.get("role") not in ("user", "assistant", "system"):
        raise bad_request(f"{where}: role must be 'user', 'assistant' or 'system'", param="messages")
    role, content = message["role"], message.get("content")
    if role == "system":  # a system message at this point of the conversation
        return [{"role": "system", "content": _content_text(content, where)}]
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise bad_request(f"{where}: content must be a string or an array of blocks", param="messages")
    blocks = _blocks(role, content, where)
    out = list(blocks.results)
    if role == "assistant":
        turn: dict = {"role": "assistant", "content": "".join(blocks.texts) or None}
        if blocks.calls:
            turn["tool_calls"] = blocks.calls
        if turn["content"] is not None or blocks.calls:
            out.append(turn)
    elif blocks.texts or not blocks.results:
        out.append({"role": "user", "content": "\n".join(blocks.texts)})
    return out


def _tools(tools: Any) -> tuple[list[dict], set[str]]:
    """(the function tools, the names of the server tools dropped)."""
    if not isinstance(tools, list):
        raise bad_request("'tools' must be an array", param="tools")
    out, dropped = [], set()
    for i, t in enumerate(tools):
        if not isinstance(t, dict) or not isinstance(t.get("name"), str):
            raise bad_request(f"tools[{i}] needs a string 'name'", param="tools")
        if t.get("type") not in (None, "custom"):
            dropped.add(t["name"])  # server tools (web search, code execution, ...) are not run here
            continue
        schema = t.get("input_schema") or {"type": "object"}
        if not isinstance(schema, dict):
            raise bad_request(f"tools[{i}].input_schema must be an object", param="tools")
        fn = {"name": t["name"], "parameters": schema}
        if isinstance(t.get("description"), str):
            fn["description"] = t["description"]
        out.append({"type": "function", "function": fn})
    return out, dropped


def _tool_choice(choice: Any, dropped: set[str]) -> Any:
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
        if choice["name"] in dropped:
            raise bad_request(
                f"'tool_choice' forces '{choice['name']}', a server tool that no model here runs",
                param="tool_choice",
            )
        return {"type": "function", "function": {"name": choice["name"]}}
    raise bad_request("'tool_choice.type' must be auto, any, tool (with a name) or none", param="tool_choice")


def reasoning(body: dict) -> Reasoning:
    """`thinking` and `output_config.effort` as what the engine is asked of its reasoning. No
    `thinking` means none, as on Anthropic's API. Malformed values are ignored, never a 400."""
    thinking = body.get("thinking") if isinstance(body.get("thinking"), dict) else {}
    config = body.get("output_config") if isinstance(body.get("output_config"), dict) else {}
    effort = config.get("effort") if config.get("effort") in EFFORTS else None
    kind = thinking.get("type")
    shown = thinking.get("display") != "omitted"
    if kind == "enabled":
        budget = thinking.get("budget_tokens")
        ok = isinstance(budget, int) and not isinstance(budget, bool) and budget > 0
        return Reasoning(True, effort, budget if ok else None, shown)
    if kind == "adaptive":
        return Reasoning(True, effort, shown=shown)
    return Reasoning(False)


def _response_format(body: dict) -> dict | None:
    """`output_config.format` (structured outputs) as OpenAI's `response_format`."""
    config = body.get("output_config")
    fmt = config.get("format") if isinstance(config, dict) else None
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema" and isinstance(fmt.get("schema"), dict):
        return {"type": "json_schema", "json_schema": {"name": "output", "schema": fmt["schema"]}}
    return None


def _max_tokens(body: dict) -> int:
    max_tokens = body.get("max_tokens")
    if (
        not isinstance(max_tokens, int)
        or isinstance(max_tokens, bool)
        or not 1 <= max_tokens <= MAX_TOKENS_CAP
    ):
        raise bad_request("'max_tokens' is required: an integer of at least 1", param="max_tokens")
    return max_tokens


def _chat(body: dict) -> list[dict]:
    """`system` and `messages` as the OpenAI conversation."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty array", param="messages")
    chat: list[dict] = []
    system = body.get("system")
    if system is not None:
        chat.append({"role": "system", "content": _content_text(system, "system")})
    for i, m in enumerate(messages):
        chat += _turn(i, m)
    if all(m["role"] == "system" for m in chat):
        raise bad_request("'messages' needs at least one user or assistant turn", param="messages")
    return chat


def _copy_stops(body: dict, out: dict) -> None:
    stops = body.get("stop_sequences")
    if stops is None:
        return
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops) or len(stops) > 16:
        raise bad_request("'stop_sequences' must be an array of strings", param="stop_sequences")
    if stops:
        out["stop"] = stops


def _copy_tools(body: dict, out: dict) -> None:
    """`tools` and `tool_choice`: server tools are dropped, and a `tool_choice` forcing one refused."""
    dropped: set[str] = set()
    if body.get("tools"):
        tools, dropped = _tools(body["tools"])
        if tools:
            out["tools"] = tools
    choice = body.get("tool_choice")
    if choice is not None and ("tools" in out or dropped):
        mapped = _tool_choice(choice, dropped)  # a forced server tool is refused
        if "tools" in out:
            out["tool_choice"] = mapped
            if choice.get("disable_parallel_tool_use") is True:
                out["parallel_tool_calls"] = False


def translate(body: dict, aliases: dict[str, str]) -> tuple[str, dict]:
    """(the model asked for, the OpenAI chat body for the engine)."""
    model = check_model(body)
    max_tokens = _max_tokens(body)
    chat = _chat(body)
    out: dict[str, Any] = {"model": resolve_model(model, aliases), "messages": chat, "max_tokens": max_tokens}
    out["stream"] = check_stream(body, null_is_false=False)
    _copy_stops(body, out)
    copy_sampling(body, out, 1)
    _copy_tools(body, out)
    if (fmt := _response_format(body)) is not None:
        out["response_format"] = fmt
    return model, out


@dataclass(frozen=True)
class MessagesView:
    """What the answer needs to know of the request (`serving.AnthropicSink`)."""

    model: str = ""  # the model the client asked for (aliases resolved only upstream)
    thinking: bool = False  # thinking on: the engine's reasoning goes back as thinking blocks
    shown: bool = True  # False (`display: omitted`): the blocks go back without their text


def parse_messages(raw: bytes, aliases: dict[str, str]) -> tuple[ParsedRequest, MessagesView]:
    """The request the lifecycle routes on (the engine's model and the translated body), and what
    its answer needs. The usage chunk is always asked for: the answer needs it."""
    body = parse_body(raw)
    asked, chat = translate(body, aliases)
    stream = chat["stream"]
    parsed = ParsedRequest("messages", chat["model"], stream, stream, chat, reasoning(body))
    on = parsed.reasoning is not None and parsed.reasoning.on
    return parsed, MessagesView(asked, on, parsed.reasoning.shown if on else True)
