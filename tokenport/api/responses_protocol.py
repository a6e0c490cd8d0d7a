"""OpenAI Responses API requests (what Codex CLI speaks), validated and translated to a chat
completion body for the engine: the same one code path as every other protocol.

Translated: `instructions` (a system message), `input` (a string, or items: messages with
`input_text` / `output_text` parts, `function_call`, `function_call_output`), function `tools`,
`tool_choice`, `max_output_tokens`, `temperature`, `top_p`, `stream`, `parallel_tool_calls`,
`text.format` json_schema (as `response_format`). Ignored: `store`, `metadata`, `reasoning`,
`include`, `user`, `truncation`, `prompt_cache_key`, `service_tier`; `reasoning` input items.
Refused: `previous_response_id` (nothing is kept between requests: zero retention), non-function
tools, images and files.
"""

from __future__ import annotations

from typing import Any

from tokenport.api.openai_protocol import MAX_TOKENS_CAP, ParsedRequest, copy_sampling, parse_body
from tokenport.gateway.errors import bad_request


def _text_of(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad_request(f"{where}: content must be a string or an array of parts", param="input")
    parts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text") and isinstance(part.get("text"), str):
            parts.append(part["text"])
        elif kind in ("input_image", "input_file", "input_audio"):
            raise bad_request(f"{where}: {kind} is not supported by the models served here", param="input")
        elif kind != "refusal":
            raise bad_request(f"{where}: unsupported content part {kind!r}", param="input")
    return "".join(parts)


def _messages(items: Any) -> list[dict]:
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
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise bad_request(f"{where}.role must be user, assistant, system or developer", param="input")
            out.append(
                {
                    "role": "system" if role == "developer" else role,
                    "content": _text_of(item.get("content"), where),
                }
            )
        elif kind == "function_call":
            if not all(isinstance(item.get(k), str) for k in ("call_id", "name")):
                raise bad_request(f"{where}: a function_call needs 'call_id' and 'name'", param="input")
            call = {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item.get("arguments") or "{}"},
            }
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)  # parallel calls: one assistant turn
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            if not isinstance(item.get("call_id"), str):
                raise bad_request(f"{where}: a function_call_output needs 'call_id'", param="input")
            output = item.get("output")
            text = output if isinstance(output, str) else _text_of(output, where)
            out.append({"role": "tool", "tool_call_id": item["call_id"], "content": text})
        elif kind == "reasoning":
            continue
        else:
            raise bad_request(f"{where}: unsupported item type {kind!r}", param="input")
    return out


def translate(body: dict) -> dict:
    """The chat completion body for the engine."""
    model = body.get("model")
    if not isinstance(model, str) or not model or len(model) > 128:
        raise bad_request("'model' is required: a string of 1 to 128 characters", param="model")
    if body.get("previous_response_id") is not None:
        raise bad_request(
            "'previous_response_id' is not supported: responses are not stored (zero retention); "
            "send the whole conversation in 'input'",
            param="previous_response_id",
        )
    chat: list[dict] = []
    if body.get("instructions") is not None:
        if not isinstance(body["instructions"], str):
            raise bad_request("'instructions' must be a string", param="instructions")
        chat.append({"role": "system", "content": body["instructions"]})
    chat += _messages(body.get("input"))
    out: dict[str, Any] = {"model": model, "messages": chat}
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad_request("'stream' must be a boolean", param="stream")
    out["stream"] = stream
    limit = body.get("max_output_tokens")
    if limit is not None:
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_TOKENS_CAP:
            raise bad_request("'max_output_tokens' must be a positive integer", param="max_output_tokens")
        out["max_tokens"] = limit
    copy_sampling(body, out, 2)
    tools = body.get("tools")
    if tools:
        if not isinstance(tools, list):
            raise bad_request("'tools' must be an array", param="tools")
        out["tools"] = []
        for i, t in enumerate(tools):
            if not isinstance(t, dict) or t.get("type") != "function" or not isinstance(t.get("name"), str):
                raise bad_request(
                    f"tools[{i}]: only function tools (with a name) are supported", param="tools"
                )
            fn = {"name": t["name"], "parameters": t.get("parameters") or {"type": "object"}}
            if isinstance(t.get("description"), str):
                fn["description"] = t["description"]
            out["tools"].append({"type": "function", "function": fn})
        choice = body.get("tool_choice")
        if isinstance(choice, str) and choice in ("auto", "required", "none"):
            out["tool_choice"] = choice
        elif (
            isinstance(choice, dict)
            and choice.get("type") == "function"
            and isinstance(choice.get("name"), str)
        ):
            out["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
        elif choice is not None:
            raise bad_request("'tool_choice' must be auto, required, none or a function", param="tool_choice")
        if isinstance(body.get("parallel_tool_calls"), bool):
            out["parallel_tool_calls"] = body["parallel_tool_calls"]
    fmt = (body.get("text") or {}).get("format") if isinstance(body.get("text"), dict) else None
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        schema = {k: fmt[k] for k in ("name", "schema", "strict") if k in fmt}
        out["response_format"] = {"type": "json_schema", "json_schema": schema}
    elif isinstance(fmt, dict) and fmt.get("type") == "json_object":
        out["response_format"] = {"type": "json_object"}
    return out


def parse_responses(raw: bytes) -> tuple[dict, ParsedRequest]:
    """(the request as the client sent it, the one the lifecycle routes on)."""
    body = parse_body(raw)
    chat = translate(body)
    return body, ParsedRequest("responses", chat["model"], chat["stream"], chat["stream"], chat)
