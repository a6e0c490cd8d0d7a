"""Watch an OpenAI-style SSE stream go by: usage, progress, finish reason, first token.

Events are forwarded byte for byte; only the final usage chunk is ever parsed as JSON (and
error events). Progress counts come from cheap byte searches.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from tokenport.gateway.usage_guard import UsageLimits, tell_client

DONE = b"data: [DONE]"
_FINISH = re.compile(rb'"finish_reason":\s*"([A-Za-z_]+)"')
_PREDICTED = re.compile(rb'"predicted_n":\s*(\d+)')
_PROMPT_N = re.compile(rb'"prompt_n":\s*(\d+)')
_CACHE_N = re.compile(rb'"cache_n":\s*(\d+)')
_CONTENT = re.compile(rb'"(?:content|text|arguments|reasoning_content)":\s*"[^"]|"tool_calls":\s*\[\{')


@dataclass(slots=True)
class Counts:
    prompt: int = 0
    cached: int = 0
    completion: int = 0


INVALID = -1  # what an unreadable count parses to: below every bound


def token_count(value: object) -> int:
    """A count as an engine sent it: the integer, 0 when absent, INVALID when not a count."""
    if value is None:
        return 0
    if isinstance(value, bool):
        return INVALID
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return INVALID


def usage_counts(usage: dict) -> Counts:
    """OpenAI convention: prompt_tokens includes cached tokens. Never raises: a value that is
    not a count reads as INVALID (usage_guard.py bounds it)."""
    details = usage.get("prompt_tokens_details")
    return Counts(
        prompt=token_count(usage.get("prompt_tokens")),
        cached=token_count(details.get("cached_tokens")) if isinstance(details, dict) else 0,
        completion=token_count(usage.get("completion_tokens")),
    )


class StreamWatcher:
    def __init__(
        self,
        forward_usage: bool,
        usage_fields: Callable[[Counts], dict] | None = None,
        clean: Callable[[bytes], bytes] | None = None,
        limits: UsageLimits | None = None,
    ) -> None:
        self.forward_usage = forward_usage  # the client asked for usage itself
        self.limits = limits  # the bounds of the engine's counts (usage_guard.py)
        self.bounded = False  # a count the engine reported was outside them
        self.usage_fields = usage_fields  # what to add to the final usage the client sees
        self.clean = clean  # what the engine adds to OpenAI's events, removed once read
        self.final: Counts | None = None  # the engine's own final usage
        self._progress: Counts | None = None  # running counts reported per chunk
        self._timings_event: bytes | None = None  # the latest llama.cpp timings, parsed on demand
        self.content_chunks = 0
        self.finish_reason: str | None = None
        self.error: dict | None = None
        self.done = False

    def ending(self, choices: int) -> bool:
        """The answer's end has come (its last choice finished, its usage, `[DONE]` or an error):
        what is sent from here is held until the request is settled (`ClientSink.hold`)."""
        return (
            self.done
            or self.final is not None
            or self.error is not None
            or (choices <= 1 and self.finish_reason is not None)
        )

    def observe(self, event: bytes) -> bytes | None:
        """Inspect one SSE event (ending in a blank line); returns what to forward, if anything."""
        forward = self._observe(event)
        return self.clean(forward) if self.clean is not None and forward is not None else forward

    def _observe(self, event: bytes) -> bytes | None:
        if event.startswith(DONE):
            self.done = True
            return event
        if _CONTENT.search(event):
            self.content_chunks += 1
        if (b'"finish_reason":"' in event or b'"finish_reason": "' in event) and (m := _FINISH.search(event)):
            self.finish_reason = m.group(1).decode()
        if b'"predicted_n"' in event:
            self._timings_event = event
        if b'"usage"' in event or b'"error"' in event:
            return self._parse(event)
        return event

    @property
    def progress(self) -> Counts | None:
        event, self._timings_event = self._timings_event, None
        if event is not None:
            self._progress = self.checked(_timings_counts(event))
        return self._progress

    def checked(self, counts: Counts) -> Counts:
        """`counts` within the limits (noting when they were not)."""
        if self.limits is None:
            return counts
        counts, changed = self.limits.bound(counts, self.content_chunks)
        self.bounded = self.bounded or changed
        return counts

    def _parse(self, event: bytes) -> bytes | None:
        payload = _data(event)
        if payload is None:
            return event
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return event
        if not isinstance(obj, dict):
            return event
        if isinstance(obj.get("error"), dict):
            self.error = obj["error"]
            return event
        usage = obj.get("usage")
        if not isinstance(usage, dict):
            return event
        choices = obj.get("choices") or []
        if not choices or any(isinstance(c, dict) and c.get("finish_reason") for c in choices):
            return self._final_usage(event, obj, usage, choices)
        # running usage on a content chunk (vLLM continuous stats): forwarded as it is
        self._progress, self._timings_event = self.checked(usage_counts(usage)), None
        return event

    def _final_usage(self, event: bytes, obj: dict, usage: dict, choices: list) -> bytes | None:
        """The engine's final usage (`obj` is `event`'s payload): what the client sees of it."""
        final = self.final = self.checked(usage_counts(usage))
        if self.forward_usage:
            if tell_client(usage, final, self.bounded, self.usage_fields):
                return b"data: " + orjson.dumps(obj) + b"\n\n"
            return event
        if not choices:
            return None  # the usage chunk the gateway asked for on the client's behalf
        del obj["usage"]  # usage riding on the last content chunk: hide it from this client
        return b"data: " + orjson.dumps(obj) + b"\n\n"


def _timings_counts(event: bytes) -> Counts:
    pred, prompt, cache = _PREDICTED.search(event), _PROMPT_N.search(event), _CACHE_N.search(event)
    cached = int(cache.group(1)) if cache else 0
    return Counts(
        prompt=(int(prompt.group(1)) if prompt else 0) + cached,
        cached=cached,
        completion=int(pred.group(1)) if pred else 0,
    )


def _data(event: bytes) -> bytes | None:
    """The payload of an event's data line(s)."""
    lines = [ln[5:].lstrip() for ln in event.split(b"\n") if ln.startswith(b"data:")]
    return b"".join(lines) if lines else None


def sse_error(message: str, type_: str, code: str | None) -> bytes:
    return (
        b"data: "
        + orjson.dumps({"error": {"message": message, "type": type_, "param": None, "code": code}})
        + b"\n\n"
    )
