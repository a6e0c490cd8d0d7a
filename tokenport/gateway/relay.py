"""Stream: forward the request to the chosen backend over HTTP and relay the answer.

The embedded engine, vLLM, SGLang and llama-server are all reached this same way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import orjson

from tokenport.config import Waits
from tokenport.engines.dialects import Reasoning, with_reasoning
from tokenport.gateway.backends import Backend
from tokenport.gateway.context import RequestContext
from tokenport.gateway.errors import ApiError, bad_request
from tokenport.gateway.sse import Counts, StreamWatcher, sse_error, usage_counts
from tokenport.gateway.upstream_http import Response, UpstreamError, UpstreamPool, UpstreamTimeout
from tokenport.gateway.usage_guard import UsageLimits, tell_client
from tokenport.gateway.window import engine_context_error
from tokenport.usage_record import (
    SOURCE_BOUNDED,
    SOURCE_CHUNKS,
    SOURCE_ENGINE,
    SOURCE_NONE,
    SOURCE_PROGRESS,
)

_ERROR_BODY_LIMIT = 64 * 1024


class ClientSink(Protocol):
    """Where the answer goes: the HTTP layer implements it for its protocol. (Where the request
    stands, delivered or cancellable, is the request's: `RequestContext`.)"""

    receipted: bool  # the request will be recorded: announce its receipt id

    async def start(self, status: int, content_type: bytes, length: int | None = None) -> None: ...

    async def send(self, data: bytes) -> None: ...  # a whole answer's body

    async def send_events(self, events: list[bytes]) -> None: ...  # whole SSE events

    async def error(self, err: ApiError) -> None: ...

    def response_sha256(self) -> str: ...  # SHA-256 (hex) of the body bytes sent so far

    def header(self, name: bytes, value: bytes) -> None: ...  # one more header, before the start

    def keep(self) -> None: ...  # keep the body bytes sent from now on (opt-in retention)

    def hold(self) -> None: ...  # keep what is sent from now on back, until `release`

    async def release(self) -> None: ...  # send what was held (once the request is settled)

    def kept_body(self) -> bytes: ...


@dataclass(slots=True)
class Outcome:
    status: int = 0
    counts: Counts | None = None
    usage_source: str = SOURCE_NONE
    finish_reason: str | None = None
    error_code: str | None = None
    first_token_at: float | None = None  # monotonic
    started: bool = False  # bytes reached the client


@dataclass(slots=True)
class UpstreamCall:
    backend: Backend
    path: str
    payload: bytes
    request_id: str  # sent as x-request-id, so engine logs line up with usage records
    usage_fields: Callable[[Counts], dict] | None = None  # added to the client's usage (the cost)
    clean: Callable[[bytes], bytes] | None = None  # drops what the engine adds to OpenAI's answer
    limits: UsageLimits | None = None  # the bounds of the engine's counts (usage_guard.py)
    waits: Waits | None = None  # the bounds of each wait on the engine (None: the pool's)
    prompt_estimate: int = 0  # the prompt's tokens, when the engine never says (window.Fit)
    choices: int = 1  # `n`: a stream's end is near once its last choice finished


def upstream_payload(body: dict, stream: bool, kind: str, reasoning: Reasoning | None = None) -> bytes:
    """The body sent upstream: always ask for usage, and for running counts where supported;
    reasoning in the fields this kind of engine reads (engines/dialects.py)."""
    if stream:
        opts = dict(body.get("stream_options") or {})
        opts["include_usage"] = True
        if kind in ("vllm", "sglang"):
            opts["continuous_usage_stats"] = True
        body = {**body, "stream_options": opts}
        if kind == "llamacpp":
            body["timings_per_token"] = True
    if "max_completion_tokens" in body and "max_tokens" not in body:
        body = {**body, "max_tokens": body["max_completion_tokens"]}
    if reasoning is not None:
        body = with_reasoning(reasoning, kind, body)
    try:
        return orjson.dumps(body)
    except orjson.JSONEncodeError:  # orjson parses deeper nesting than it will write back
        raise bad_request("The request body is nested too deeply", code="invalid_json") from None


class Relay:
    def __init__(self, upstream: UpstreamPool, clock_monotonic: Callable[[], float]) -> None:
        self.upstream = upstream
        self.mono = clock_monotonic

    async def _post(self, call: UpstreamCall) -> Response:
        """The client's own headers (its API key above all) are never passed on."""
        backend = call.backend
        headers = {"content-type": "application/json", "x-request-id": call.request_id}
        if backend.config.api_key:
            headers["authorization"] = f"Bearer {backend.config.api_key}"
        try:
            return await self.upstream.post(backend.url, call.path, call.payload, headers, call.waits)
        except UpstreamTimeout as exc:
            if exc.phase != "connect":  # it took the request: not tried elsewhere
                raise timed_out(backend, exc) from None
            backend.healthy = False
            raise unavailable(backend) from exc
        except UpstreamError as exc:
            backend.healthy = False  # passive health: the next check decides when it is back
            raise unavailable(backend) from exc

    async def unary(self, call: UpstreamCall, sink: ClientSink, out: Outcome, ctx: RequestContext) -> None:
        resp = await self._post(call)
        async with resp:
            if resp.status != 200:
                raise await _upstream_error(resp)
            try:
                body = await resp.read()
            except UpstreamTimeout as exc:
                raise timed_out(call.backend, exc) from None
            except UpstreamError as exc:
                raise _broken(call.backend) from exc
        out.first_token_at = self.mono()
        if call.clean is not None:
            body = call.clean(body)
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise _broken(call.backend) from None
        usage = obj.get("usage") if isinstance(obj, dict) else None
        if isinstance(usage, dict):
            counts, bounded = usage_counts(usage), False
            if call.limits is not None:
                counts, bounded = call.limits.bound(counts)
            out.counts, out.usage_source = counts, SOURCE_BOUNDED if bounded else SOURCE_ENGINE
            if tell_client(usage, counts, bounded, call.usage_fields):
                body = orjson.dumps(obj)
        choices = obj.get("choices") if isinstance(obj, dict) else None
        if choices and isinstance(choices[0], dict):
            out.finish_reason = choices[0].get("finish_reason")
        out.status = 200
        sink.hold()  # the whole answer goes out once the request is settled (journaled)
        await sink.start(200, b"application/json", len(body))
        out.started = True
        await sink.send(body)
        ctx.delivered = True

    async def stream(
        self, call: UpstreamCall, sink: ClientSink, include_usage: bool, out: Outcome, ctx: RequestContext
    ) -> None:
        """Fills `out` as it goes, so a cancelled stream (client gone) still has its counts."""
        watcher = StreamWatcher(include_usage, call.usage_fields, call.clean, call.limits)
        resp: Response | None = None
        ctx.cancellable = True
        try:
            resp = await self._post(call)
            if resp.status != 200:
                raise await _upstream_error(resp)
            out.status = 200
            await sink.start(200, b"text/event-stream")
            out.started = True
            await self._relay_events(resp, call, watcher, sink, out)
            await _end_stream(sink, out, watcher)
            ctx.delivered = True
        except UpstreamTimeout as exc:
            if not out.started:
                raise timed_out(call.backend, exc) from None
            await _end_with_error(sink, out, _timeout_message(call.backend, exc), "upstream_timeout")
            ctx.delivered = True
        except UpstreamError:
            if not out.started:
                raise _broken(call.backend) from None
            await _end_with_error(sink, out, "The backend stream failed", "upstream_disconnected")
            ctx.delivered = True
        finally:
            ctx.cancellable = False
            if resp is not None:
                resp.close()  # on a client disconnect this is what stops the engine generating
            _settle_counts(out, watcher, call.prompt_estimate)

    async def _relay_events(
        self, resp: Response, call: UpstreamCall, watcher: StreamWatcher, sink: ClientSink, out: Outcome
    ) -> None:
        """Forward the engine's SSE events as they arrive, each seen by `watcher` on its way."""
        buf = b""
        async for data in resp.iter_any():
            buf += data
            ready = []  # whole events that arrived together go out together, at once
            while (cut := buf.find(b"\n\n")) >= 0:
                event, buf = buf[: cut + 2], buf[cut + 2 :]
                forward = watcher.observe(event)
                if forward is not None:
                    ready.append(forward)
            if watcher.ending(call.choices):
                sink.hold()  # the answer's last bytes wait for its settlement (journaled)
            if ready:
                await sink.send_events(ready)
                if out.first_token_at is None and watcher.content_chunks:
                    out.first_token_at = self.mono()


async def _end_stream(sink: ClientSink, out: Outcome, watcher: StreamWatcher) -> None:
    """The engine's stream is over: hold what is left to send, and end it with an error event if
    the engine did not end it itself."""
    sink.hold()
    if watcher.error is not None:
        out.error_code = str(watcher.error.get("code") or watcher.error.get("type") or "upstream_error")
    elif not watcher.done:
        await _end_with_error(sink, out, "The backend stream ended unexpectedly", "upstream_disconnected")


async def _end_with_error(sink: ClientSink, out: Outcome, message: str, code: str) -> None:
    """A stream the engine broke off: an error event ends it, held like any last bytes."""
    out.error_code = code
    sink.hold()
    await sink.send_events([sse_error(message, "server_error", code)])


def _settle_counts(out: Outcome, watcher: StreamWatcher, prompt_estimate: int) -> None:
    out.finish_reason = watcher.finish_reason
    if watcher.final is not None:
        out.counts, out.usage_source = watcher.final, SOURCE_ENGINE
    elif watcher.progress is not None:
        out.counts, out.usage_source = watcher.progress, SOURCE_PROGRESS
    elif watcher.content_chunks:
        out.counts = watcher.checked(Counts(prompt=prompt_estimate, completion=watcher.content_chunks))
        out.usage_source = SOURCE_CHUNKS
    if watcher.bounded:
        out.usage_source = SOURCE_BOUNDED


def unavailable(backend: Backend) -> ApiError:
    return ApiError(
        503,
        f"Backend '{backend.name}' is unavailable; try again shortly",
        "service_unavailable",
        "backend_unavailable",
        headers={"retry-after": "1"},
    )


def _timeout_message(backend: Backend, exc: UpstreamTimeout) -> str:
    waited = {"total": "finish", "headers": "answer", "first_token": "start answering"}
    what = waited.get(exc.phase, "send more")
    return f"Backend '{backend.name}' did not {what} within {exc.seconds:g} s"


def timed_out(backend: Backend, exc: UpstreamTimeout) -> ApiError:
    """504 `upstream_timeout`: a wait on the engine ran past its configured bound."""
    return ApiError(504, _timeout_message(backend, exc), "server_error", "upstream_timeout")


def _broken(backend: Backend) -> ApiError:
    return ApiError(
        502, f"Backend '{backend.name}' returned an invalid response", "server_error", "upstream_error"
    )


async def _upstream_error(resp: Response) -> ApiError:
    """Map an engine's error answer to an OpenAI-shaped one (the engine's text is not logged)."""
    raw = b""
    with contextlib.suppress(UpstreamError):
        raw = await resp.read(_ERROR_BODY_LIMIT)
    message, error = f"The backend answered HTTP {resp.status}", {}
    with contextlib.suppress(orjson.JSONDecodeError, AttributeError, TypeError):
        err = orjson.loads(raw).get("error")
        if isinstance(err, dict):
            message, error = str(err.get("message") or message)[:1000], err
        elif isinstance(err, str):
            message = err[:1000]
    if resp.status == 400 and (too_long := engine_context_error(message, error)) is not None:
        return too_long  # in each protocol's own words, never the engine's
    if 400 <= resp.status < 500 and resp.status not in (401, 403, 429):
        return ApiError(resp.status, message, "invalid_request_error", "upstream_rejected")
    if resp.status == 429:
        return ApiError(
            503,
            "The backend is overloaded; try again shortly",
            "service_unavailable",
            "backend_overloaded",
            headers={"retry-after": "1"},
        )
    return ApiError(502, f"The backend failed (HTTP {resp.status})", "server_error", "upstream_error")
