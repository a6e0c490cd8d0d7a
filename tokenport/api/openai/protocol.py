"""OpenAI request parsing and validation: only what routing and metering need, checked fast."""

from __future__ import annotations

from typing import Any

import orjson

from tokenport.engines.dialects import effort_reasoning
from tokenport.gateway.errors import bad_request
from tokenport.gateway.request import ParsedRequest

MAX_TOKENS_CAP = 1_000_000
_MAX_INT = 2**63 - 1


def parse_body(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"Invalid JSON body: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object", code="invalid_json")
    return body


def copy_sampling(body: dict, out: dict, temperature_max: float) -> None:
    """`temperature` (0 to `temperature_max`) and `top_p` (0 to 1), checked, into `out`: for the
    protocols translated to a chat completion."""
    for name, hi in (("temperature", temperature_max), ("top_p", 1)):
        v = body.get(name)
        if v is not None:
            if not _is_num(v) or not 0 <= v <= hi:
                raise bad_request(f"'{name}' must be a number between 0 and {hi}", param=name)
            out[name] = v


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (isinstance(v, int | float)) and not isinstance(v, bool)


def _check_range(body: dict, name: str, lo: float, hi: float) -> None:
    v = body.get(name)
    if v is not None and (not _is_num(v) or not lo <= v <= hi):
        raise bad_request(f"'{name}' must be a number between {lo} and {hi}", param=name)


def _check_int(body: dict, name: str, lo: int, hi: int) -> None:
    v = body.get(name)
    if v is not None and (not _is_int(v) or not lo <= v <= hi):
        raise bad_request(f"'{name}' must be an integer between {lo} and {hi}", param=name)


def check_model(body: dict) -> str:
    """The model asked for: every protocol's one required field."""
    model = body.get("model")
    if not isinstance(model, str) or not model or len(model) > 128:
        raise bad_request("'model' is required: a string of 1 to 128 characters", param="model")
    return model


def check_stream(body: dict, null_is_false: bool = True) -> bool:
    """`stream`: a boolean, false when absent (or null, in OpenAI's APIs)."""
    stream = body.get("stream", False)
    if stream is None and null_is_false:
        stream = False
    if not isinstance(stream, bool):
        raise bad_request("'stream' must be a boolean", param="stream")
    return stream


def _check_stream(body: dict) -> tuple[bool, bool]:
    """(`stream`, `stream_options.include_usage`); the options only with `stream` true."""
    stream = check_stream(body)
    opts = body.get("stream_options")
    if opts is None:
        return stream, False
    if not isinstance(opts, dict):
        raise bad_request("'stream_options' must be an object", param="stream_options")
    if not stream:
        raise bad_request("'stream_options' is only allowed when 'stream' is true", param="stream_options")
    include_usage = opts.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise bad_request("'stream_options.include_usage' must be a boolean", param="stream_options")
    return stream, include_usage


def _check_stop(body: dict) -> None:
    stop = body.get("stop")
    if stop is not None and not (
        isinstance(stop, str)
        or (isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) for s in stop))
    ):
        raise bad_request("'stop' must be a string or a list of at most 4 strings", param="stop")


def _check_common(body: dict) -> tuple[str, bool, bool]:
    """What chat and completions requests share: (model, stream, include_usage)."""
    model = check_model(body)
    stream, include_usage = _check_stream(body)
    _check_int(body, "max_tokens", 1, MAX_TOKENS_CAP)
    _check_int(body, "max_completion_tokens", 1, MAX_TOKENS_CAP)
    _check_range(body, "temperature", 0, 2)
    _check_range(body, "top_p", 0, 1)
    _check_range(body, "presence_penalty", -2, 2)
    _check_range(body, "frequency_penalty", -2, 2)
    _check_int(body, "seed", -_MAX_INT - 1, _MAX_INT)
    if "grammar" in body:
        # llama.cpp's grammar parser prints a grammar it cannot parse to stderr: request content
        # in the logs. Structured output goes through response_format (json_schema) instead.
        raise bad_request(
            "'grammar' is not accepted; use response_format with a json_schema", param="grammar"
        )
    n = body.get("n")
    if n is not None and n != 1:
        raise bad_request("Only 'n': 1 is supported", param="n")
    _check_stop(body)
    return model, stream, include_usage


def parse_chat(raw: bytes) -> ParsedRequest:
    body = parse_body(raw)
    model, stream, include_usage = _check_common(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty array", param="messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise bad_request(f"'messages[{i}]' must be an object with a string 'role'", param="messages")
        if m["role"] not in ("system", "developer", "user", "assistant", "tool", "function"):
            raise bad_request(f"'messages[{i}].role' is not a valid role", param="messages")
        content = m.get("content")
        if content is not None and not isinstance(content, str | list):
            raise bad_request(f"'messages[{i}].content' must be a string or an array", param="messages")
    tools = body.get("tools")
    if tools is not None and (
        not isinstance(tools, list) or not all(isinstance(t, dict) and t.get("type") for t in tools)
    ):
        raise bad_request("'tools' must be an array of tool objects", param="tools")
    tc = body.get("tool_choice")
    if tc is not None and not isinstance(tc, str | dict):
        raise bad_request("'tool_choice' must be a string or an object", param="tool_choice")
    rf = body.get("response_format")
    if rf is not None and not (isinstance(rf, dict) and isinstance(rf.get("type"), str)):
        raise bad_request("'response_format' must be an object with a 'type'", param="response_format")
    reasoning = effort_reasoning(body.get("reasoning_effort"))
    return ParsedRequest("chat", model, stream, include_usage, body, reasoning)


def parse_completion(raw: bytes) -> ParsedRequest:
    body = parse_body(raw)
    model, stream, include_usage = _check_common(body)
    prompt = body.get("prompt")
    if not (isinstance(prompt, str) or (isinstance(prompt, list) and len(prompt) == 1)):
        raise bad_request("'prompt' must be a string (or a list of one)", param="prompt")
    return ParsedRequest("completions", model, stream, include_usage, body)


def parse_embeddings(raw: bytes) -> ParsedRequest:
    body = parse_body(raw)
    model = check_model(body)
    data = body.get("input")
    ok = (
        isinstance(data, str)
        or (isinstance(data, list) and data and all(isinstance(x, str) for x in data))
        or (isinstance(data, list) and data and all(_is_int(x) for x in data))
        or (
            isinstance(data, list)
            and data
            and all(isinstance(x, list) and all(_is_int(t) for t in x) for x in data)
        )
    )
    if not ok or (isinstance(data, list) and len(data) > 2048):
        raise bad_request(
            "'input' must be a string, an array of up to 2048 strings, or token arrays", param="input"
        )
    fmt = body.get("encoding_format")
    if fmt is not None and fmt not in ("float", "base64"):
        raise bad_request("'encoding_format' must be float or base64", param="encoding_format")
    _check_int(body, "dimensions", 1, 65536)
    return ParsedRequest("embeddings", model, False, False, body)
