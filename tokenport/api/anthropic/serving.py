"""Anthropic answers from the engine's OpenAI output: a sink that wraps the HTTP sink, so the relay
and the rest of the lifecycle stay the same for both protocols.

Streaming: `message_start` (with the input tokens, read from the engine's first chunk), then per
content block `content_block_start` / `content_block_delta` (`text_delta`, or `input_json_delta`
for a tool call's arguments) / `content_block_stop` with contiguous indexes, then
`message_delta` (stop reason, output tokens) and `message_stop`. Errors in Anthropic's shape
(`{"type": "error", "error": {...}}`, `event: error` once streaming), with `request-id`.
Usage follows Anthropic's convention: `input_tokens` excludes cached prompt tokens, which are
`cache_read_input_tokens`. The engine's reasoning (`reasoning_content`, or vLLM's `reasoning`)
comes back as `thinking` blocks (`thinking_delta`, then a `signature_delta`) when the client
turned thinking on (with `display: "omitted"`, as Claude Code asks, the blocks carry no text: the
signature only); the signature is a digest of the thinking, and thinking sent back is not
replayed to the engine.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from tokenport.api.anthropic.protocol import MessagesView
from tokenport.api.asgi_sink import AsgiSink
from tokenport.api.errors import error_headers
from tokenport.api.translating_sink import TranslatingSink, reasoning_text, stream_error
from tokenport.gateway.errors import ApiError
from tokenport.gateway.window import ContextExceeded

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",  # the client's request did not arrive in time
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",  # Anthropic's own gateway timeout (an engine past its bound)
    529: "overloaded_error",
}


def anthropic_error(err: ApiError) -> bytes:
    kind = "billing_error" if err.code == "insufficient_quota" else _ERROR_TYPES.get(err.status, "api_error")
    message = err.anthropic_message if isinstance(err, ContextExceeded) else err.message
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})


def _event(name: str, data: dict) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def anthropic_usage(usage: dict | None) -> dict:
    usage = usage or {}
    prompt = int(usage.get("prompt_tokens") or 0)
    cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    out = {
        "input_tokens": prompt - cached,
        "output_tokens": int(usage.get("completion_tokens") or 0),
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": 0,
    }
    if "clamped_max_tokens" in usage:  # max_tokens was lowered to what the context leaves
        out["clamped_max_tokens"] = usage["clamped_max_tokens"]
    return out


def signature(digest: Any) -> str:
    """A thinking block's signature: a digest of its text (nothing to verify; it is not replayed)."""
    return "tokenport-" + digest.hexdigest()[:40]


def _counts_known(obj: dict) -> bool:
    return isinstance(obj.get("usage"), dict) or isinstance(obj.get("timings"), dict)


def _has_output(obj: dict) -> bool:
    return any(
        (c.get("delta") or {}).get("content")
        or (c.get("delta") or {}).get("tool_calls")
        or reasoning_text(c.get("delta") or {})
        or c.get("finish_reason")
        for c in obj.get("choices") or []
    )


class AnthropicSink(TranslatingSink):
    """A ClientSink: the relay writes OpenAI bytes, the client receives Anthropic ones."""

    def __init__(self, inner: AsgiSink, request_id: str, view: MessagesView | None = None) -> None:
        super().__init__(inner)
        view = view or MessagesView()
        self.model = view.model  # the model the client asked for (aliases resolved only upstream)
        self.thinking = view.thinking  # the client turned thinking on: the engine's reasoning goes back
        self.thinking_shown = view.shown  # False (`display: omitted`): the blocks go back without their text
        self._thought = None  # the open thinking block's text, digested (hashlib.sha256)
        self.message_id = "msg_" + request_id.removeprefix("req_")
        self._rid = request_id.encode()
        self._stream = False
        self._started = False  # message_start sent
        self._ended = False  # message_stop (or an error event) sent
        self._open: int | None = None  # the index of the open content block
        self._next = 0
        self._tools: dict[int, int] = {}  # the engine's tool-call index -> our block index
        self._stop: str | None = None

    def _ids(self) -> tuple:
        return ((b"request-id", self._rid),)

    async def start(self, status: int, content_type: bytes, length: int | None = None) -> None:
        if content_type == b"text/event-stream":
            self._stream = True
            await self.inner.start(status, content_type, extra=self._ids())
        # JSON: started with the translated body's length, in send()

    async def send(self, data: bytes) -> None:
        if not self._stream:
            body = orjson.dumps(self._message(orjson.loads(data)))
            await self.inner.start(200, b"application/json", len(body), extra=self._ids())
            await self.inner.send(body)
            return
        await self.send_events([data])

    async def error(self, err: ApiError) -> None:
        body = anthropic_error(err)
        if self._stream and self.inner.started:
            if not self._ended:
                self._ended = True
                await self.inner.send(b"event: error\ndata: " + body + b"\n\n")
            return
        await self.inner.raw_error(
            err.status, error_headers(err, body, (*self.inner.ids(), *self._ids())), body
        )

    # --- streaming: one engine chunk in, Anthropic events out ---

    def _data(self, obj: dict) -> list[bytes]:
        if self._ended:
            return []
        if (error := stream_error(obj)) is not None:
            self._ended = True
            err = {"type": "error", "error": {"type": "api_error", "message": error["message"] or "error"}}
            return [_event("error", err)]
        if not self._started and not _counts_known(obj) and not _has_output(obj):
            return []  # a role-only opening chunk: wait for one that says the input tokens
        out = [] if self._started else [self._message_start(obj)]
        for choice in obj.get("choices") or []:
            delta = choice.get("delta") or {}
            if self.thinking and (thought := reasoning_text(delta)) is not None:
                self._thinking_delta(out, thought)
            if delta.get("content"):
                self._text_delta(out, delta["content"])
            for call in delta.get("tool_calls") or []:
                self._tool_delta(out, call)
            if choice.get("finish_reason"):
                self._stop = STOP_REASONS.get(choice["finish_reason"], "end_turn")
        if obj.get("usage") and not obj.get("choices"):  # the final usage chunk: the message ends
            self._end(out, anthropic_usage(obj["usage"]))
        return out

    # Each appends its events to the chunk's `out`: no list of its own per delta.

    def _thinking_delta(self, out: list[bytes], thought: str) -> None:
        if self._thought is None:
            out += self._open_block({"type": "thinking", "thinking": "", "signature": ""})
            self._thought = hashlib.sha256()
        self._thought.update(thought.encode())
        if self.thinking_shown:
            out.append(self._delta({"type": "thinking_delta", "thinking": thought}))

    def _text_delta(self, out: list[bytes], text: str) -> None:
        if self._open is None or self._open in self._tools.values() or self._thought is not None:
            out += self._open_block({"type": "text", "text": ""})
        out.append(self._delta({"type": "text_delta", "text": text}))

    def _tool_delta(self, out: list[bytes], call: dict) -> None:
        """A tool call's block opens on its first delta; its arguments stream as they come."""
        k = call.get("index", 0)
        fn = call.get("function") or {}
        if k not in self._tools:
            block = {
                "type": "tool_use",
                "id": call.get("id") or f"toolu_{k}",
                "name": fn.get("name") or "",
                "input": {},
            }
            out += self._open_block(block)
            self._tools[k] = self._open
        if fn.get("arguments"):
            out.append(
                self._delta({"type": "input_json_delta", "partial_json": fn["arguments"]}, self._tools[k])
            )

    def _end(self, out: list[bytes], usage: dict) -> None:
        """The open block closes, then `message_delta` (stop reason, usage) and `message_stop`."""
        out += self._close()
        delta = {"stop_reason": self._stop or "end_turn", "stop_sequence": None}
        out.append(_event("message_delta", {"type": "message_delta", "delta": delta, "usage": usage}))
        out.append(_event("message_stop", {"type": "message_stop"}))
        self._ended = True

    def _message_start(self, obj: dict) -> bytes:
        """The input tokens are known from the engine's first chunk: running usage (vLLM, SGLang)
        or llama.cpp's per-token timings."""
        self._started = True
        usage = {
            "input_tokens": 0,
            "output_tokens": 0,
            "cache_read_input_tokens": 0,
            "cache_creation_input_tokens": 0,
        }
        if isinstance(obj.get("usage"), dict):
            usage = {**anthropic_usage(obj["usage"]), "output_tokens": 0}
        elif isinstance(obj.get("timings"), dict):
            t = obj["timings"]
            usage["input_tokens"] = int(t.get("prompt_n") or 0)
            usage["cache_read_input_tokens"] = int(t.get("cache_n") or 0)
        message = {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage,
        }
        return _event("message_start", {"type": "message_start", "message": message})

    def _open_block(self, block: dict) -> list[bytes]:
        out = self._close()
        self._open, self._next = self._next, self._next + 1
        out.append(
            _event(
                "content_block_start",
                {"type": "content_block_start", "index": self._open, "content_block": block},
            )
        )
        return out

    def _delta(self, delta: dict, index: int | None = None) -> bytes:
        i = self._open if index is None else index
        return _event("content_block_delta", {"type": "content_block_delta", "index": i, "delta": delta})

    def _close(self) -> list[bytes]:
        if self._open is None:
            return []
        out = []
        if self._thought is not None:  # a thinking block ends with its signature
            out.append(self._delta({"type": "signature_delta", "signature": signature(self._thought)}))
            self._thought = None
        i, self._open = self._open, None
        out.append(_event("content_block_stop", {"type": "content_block_stop", "index": i}))
        return out

    # --- a whole answer ---

    def _message(self, obj: dict) -> dict:
        choice = (obj.get("choices") or [{}])[0]
        msg = choice.get("message") or {}
        content: list[dict] = []
        if self.thinking and (thought := reasoning_text(msg)) is not None:
            sig = signature(hashlib.sha256(thought.encode()))
            shown = thought if self.thinking_shown else ""
            content.append({"type": "thinking", "thinking": shown, "signature": sig})
        if msg.get("content"):
            content.append({"type": "text", "text": msg["content"]})
        for call in msg.get("tool_calls") or []:
            fn = call.get("function") or {}
            try:
                args = orjson.loads(fn.get("arguments") or "{}")
            except orjson.JSONDecodeError:
                args = {}
            content.append(
                {
                    "type": "tool_use",
                    "id": call.get("id") or "toolu_0",
                    "name": fn.get("name") or "",
                    "input": args,
                }
            )
        return {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": STOP_REASONS.get(choice.get("finish_reason") or "stop", "end_turn"),
            "stop_sequence": None,
            "usage": anthropic_usage(obj.get("usage")),
        }
