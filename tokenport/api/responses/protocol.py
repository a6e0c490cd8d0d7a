"""OpenAI Responses API requests (what Codex CLI speaks), validated and translated to a chat
completion body for the engine: the same one code path as every other protocol.

Translated: `instructions` (a system message), `input` (a string, or items: messages with
`input_text` / `output_text` parts, `function_call` (with its `namespace`), `custom_tool_call`,
`local_shell_call`, their outputs), `tools` and `tool_choice` (responses_tools.py: namespaces
flattened, custom tools as functions, hosted tools dropped), `max_output_tokens`, `temperature`,
`top_p`, `stream`, `parallel_tool_calls`, `reasoning.effort` (to each engine's reasoning
parameters), `text.format` json_schema (as `response_format`). Ignored: `store`, `metadata`,
`include`, `user`, `truncation`, `prompt_cache_key`, `service_tier`, `client_metadata`,
`reasoning.summary`, `text.verbosity` and unknown fields; `reasoning` and `compaction` input items
(their content is encrypted for OpenAI's models) and hosted tools' call items (`web_search_call`,
...). Images in a tool's output become a placeholder line. Refused: `previous_response_id` and
`item_reference` (nothing is kept between requests: zero retention), images and files as input.
"""

from __future__ import annotations

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
from tokenport.api.responses.tools import ToolMap, tool_map
from tokenport.engines.dialects import Reasoning, effort_reasoning
from tokenport.gateway.errors import bad_request

# Items the client echoes back from earlier answers that an engine here cannot use: reasoning and
# compaction are encrypted for OpenAI's models, hosted tools' calls ran on OpenAI's side.
SKIPPED_ITEMS = frozenset(
    {
        "reasoning",
        "compaction",
        "compaction_summary",
        "additional_tools",  # its tools join the request's (responses_tools.py)
        "web_search_call",
        "file_search_call",
        "code_interpreter_call",
        "image_generation_call",
        "computer_call",
        "computer_call_output",
        "mcp_list_tools",
        "mcp_call",
        "mcp_approval_request",
        "mcp_approval_response",
        "tool_search_call",
        "tool_search_output",
    }
)
IMAGE_PLACEHOLDER = "[an image was here: the models served here read text only]"


def _text_of(content: Any, where: str, tool_output: bool = False) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad_request(f"{where}: content must be a string or an array of parts", param="input")
    parts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text") and isinstance(part.get("text"), str):
            parts.append(part["text"])
        elif kind in ("input_image", "input_file", "input_audio") and tool_output:
            parts.append(IMAGE_PLACEHOLDER)
        elif kind in ("input_image", "input_file", "input_audio"):
            raise bad_request(f"{where}: {kind} is not supported by the models served here", param="input")
        elif kind != "refusal":
            raise bad_request(f"{where}: unsupported content part {kind!r}", param="input")
    return "".join(parts)


def _call(out: list[dict], call_id: str, name: str, arguments: str) -> None:
    """An engine-side tool call; consecutive calls (parallel) share one assistant turn."""
    call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
    last = out[-1] if out else None
    if last is not None and last["role"] == "assistant" and "tool_calls" in last:
        last["tool_calls"].append(call)
    else:
        out.append({"role": "assistant", "content": None, "tool_calls": [call]})


def _message(out: list[dict], item: dict, where: str, tools: ToolMap) -> None:
    role = item.get("role")
    if role not in ("user", "assistant", "system", "developer"):
        raise bad_request(f"{where}.role must be user, assistant, system or developer", param="input")
    out.append(
        {
            "role": "system" if role == "developer" else role,
            "content": _text_of(item.get("content"), where),
        }
    )


def _tool_call(out: list[dict], item: dict, where: str, tools: ToolMap) -> None:
    """A `function_call` or `custom_tool_call`, under the engine's name for the client's tool."""
    kind = item["type"]
    if not all(isinstance(item.get(k), str) for k in ("call_id", "name")):
        raise bad_request(f"{where}: a {kind} needs 'call_id' and 'name'", param="input")
    ns = item.get("namespace") if isinstance(item.get("namespace"), str) else None
    if kind == "function_call":
        arguments = item.get("arguments") or "{}"
    else:
        arguments = orjson.dumps({"input": str(item.get("input") or "")}).decode()
    _call(out, item["call_id"], tools.engine_name(item["name"], ns), arguments)


def _shell_call(out: list[dict], item: dict, where: str, tools: ToolMap) -> None:
    call_id = item.get("call_id") or item.get("id")
    if not isinstance(call_id, str):
        raise bad_request(f"{where}: a local_shell_call needs 'call_id'", param="input")
    _call(out, call_id, "local_shell", orjson.dumps(item.get("action") or {}).decode())


def _call_output(out: list[dict], item: dict, where: str, tools: ToolMap) -> None:
    """A tool call's output (any kind of call): a tool message."""
    call_id = item.get("call_id") or item.get("id")
    if not isinstance(call_id, str):
        raise bad_request(f"{where}: a {item['type']} needs 'call_id'", param="input")
    output = item.get("output")
    if isinstance(output, dict):  # {content, success}: an older failure shape
        output = output.get("content", "")
    text = output if isinstance(output, str) else _text_of(output, where, tool_output=True)
    out.append({"role": "tool", "tool_call_id": call_id, "content": text})


# The input items translated, by type (each appends to the conversation); any other is skipped
# (SKIPPED_ITEMS) or refused.
_ITEMS: dict[Any, Callable[[list[dict], dict, str, ToolMap], None]] = {
    "message": _message,
    "function_call": _tool_call,
    "custom_tool_call": _tool_call,
    "local_shell_call": _shell_call,
    "function_call_output": _call_output,
    "custom_tool_call_output": _call_output,
    "local_shell_call_output": _call_output,
}


def _messages(items: Any, tools: ToolMap) -> list[dict]:
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    if not isinstance(items, list) or not items:
        raise bad_request("'input' must be a string or a non-empty array of items", param="input")
    out: list[dict] = []
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise bad_request(f"{where} must be an object", param="input")
        kind = item.get("type", "message")
        if not isinstance(kind, str):
            raise bad_request(f"{where}: 'type' must be a string", param="input")
        if (translate_item := _ITEMS.get(kind)) is not None:
            translate_item(out, item, where, tools)
        elif kind == "item_reference":
            raise bad_request(
                f"{where}: 'item_reference' is not supported: nothing is stored between requests "
                "(zero retention); send the item itself",
                param="input",
            )
        elif kind not in SKIPPED_ITEMS:
            raise bad_request(f"{where}: unsupported item type {kind!r}", param="input")
    return out


def reasoning(body: dict) -> Reasoning | None:
    """`reasoning.effort` as what the engine is asked of its thinking; none asked: the engine's
    default. A malformed value is ignored."""
    config = body.get("reasoning")
    return effort_reasoning(config.get("effort") if isinstance(config, dict) else None)


def _instructions(body: dict) -> list[dict]:
    """`instructions` as the conversation's opening system message."""
    if body.get("instructions") is None:
        return []
    if not isinstance(body["instructions"], str):
        raise bad_request("'instructions' must be a string", param="instructions")
    return [{"role": "system", "content": body["instructions"]}]


def _copy_max_tokens(body: dict, out: dict) -> None:
    limit = body.get("max_output_tokens")
    if limit is None:
        return
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_TOKENS_CAP:
        raise bad_request("'max_output_tokens' must be a positive integer", param="max_output_tokens")
    out["max_tokens"] = limit


def _copy_tools(body: dict, out: dict, tools: ToolMap) -> None:
    """The engine's functions, `tool_choice` and `parallel_tool_calls`; a `tool_choice` forcing a
    tool with no function to run it is refused."""
    if tools.functions:
        out["tools"] = tools.functions
        choice = tools.tool_choice(body.get("tool_choice"))
        if choice is not None:
            out["tool_choice"] = choice
        if isinstance(body.get("parallel_tool_calls"), bool):
            out["parallel_tool_calls"] = body["parallel_tool_calls"]
    elif body.get("tool_choice") not in (None, "auto", "none"):
        tools.tool_choice(body["tool_choice"])  # a forced hosted tool: its clear 400
        raise bad_request("'tool_choice' requires a tool, and 'tools' has none", param="tool_choice")


def _response_format(body: dict) -> dict | None:
    """`text.format` (structured outputs) as the chat completion's `response_format`."""
    fmt = (body.get("text") or {}).get("format") if isinstance(body.get("text"), dict) else None
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        schema = {k: fmt[k] for k in ("name", "schema", "strict") if k in fmt}
        return {"type": "json_schema", "json_schema": schema}
    if isinstance(fmt, dict) and fmt.get("type") == "json_object":
        return {"type": "json_object"}
    return None


def translate(body: dict) -> tuple[dict, ToolMap]:
    """The chat completion body for the engine, and how its tools map to the client's."""
    model = check_model(body)
    if body.get("previous_response_id") is not None:
        raise bad_request(
            "'previous_response_id' is not supported: responses are not stored (zero retention); "
            "send the whole conversation in 'input'",
            param="previous_response_id",
        )
    chat = _instructions(body)
    tools = tool_map(body)
    chat += _messages(body.get("input"), tools)
    out: dict[str, Any] = {"model": model, "messages": chat}
    out["stream"] = check_stream(body, null_is_false=False)
    _copy_max_tokens(body, out)
    copy_sampling(body, out, 2)
    _copy_tools(body, out, tools)
    if (fmt := _response_format(body)) is not None:
        out["response_format"] = fmt
    return out, tools


@dataclass(frozen=True)
class ResponsesView:
    """What the answer needs to know of the request (`serving.ResponsesSink`)."""

    request: dict = field(default_factory=dict)  # as the client sent it: the echoed fields
    tools: ToolMap = field(default_factory=ToolMap)  # the client's tools behind the engine's names
    stream: bool = False


def parse_responses(raw: bytes) -> tuple[ParsedRequest, ResponsesView]:
    """The request the lifecycle routes on, and what its answer needs."""
    body = parse_body(raw)
    chat, tools = translate(body)
    parsed = ParsedRequest("responses", chat["model"], chat["stream"], chat["stream"], chat, reasoning(body))
    return parsed, ResponsesView(body, tools, chat["stream"])
