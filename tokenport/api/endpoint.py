"""The hot-path endpoint, one for every completion protocol: read the body, parse it in the
client's protocol, build the sink that answers in that protocol, watch for the client going away,
and hand the parsed request and its sink to the lifecycle (`gateway/lifecycle.py`). Served
without middleware: it sets its own request id header.

The request is parsed here, before the lifecycle, and nothing flows back: the lifecycle gets the
parsed request (or the error its parse raised, answered once the caller is authenticated, so
that an authenticated bad request is recorded like any other) and a sink already configured for
the answer.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.types import Receive, Scope, Send

from tokenport.api.asgi_sink import AsgiSink
from tokenport.api.middleware import INTERNAL_ERROR, internal_error, log_unhandled, new_request_id
from tokenport.clock import Clock
from tokenport.gateway.context import RequestContext
from tokenport.gateway.errors import ApiError
from tokenport.gateway.lifecycle import Gateway
from tokenport.gateway.relay import ClientSink
from tokenport.gateway.request import ParsedRequest


@dataclass(frozen=True)
class WireFormat:
    """A protocol as the endpoint serves it."""

    endpoint: str  # the usage record's `endpoint`
    # the body -> the request in the engines' shape, and what the answer needs to know of it
    parse: Callable[[bytes], tuple[ParsedRequest, Any]]
    # (the HTTP sink, the request id, what parse said or None before a parse) -> the answer's sink
    sink: Callable[[AsgiSink, str, Any], ClientSink]


def plain_sink(inner: AsgiSink, request_id: str, view: Any) -> AsgiSink:
    """OpenAI's protocols: the engine's answer as it is."""
    return inner


class Endpoint:
    def __init__(
        self, wire: WireFormat, gateway_ref: Callable[[], Gateway], clock: Clock, max_body: int
    ) -> None:
        self.wire = wire
        self.gateway_ref = gateway_ref  # built at startup
        self.clock = clock
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = new_request_id()
        inner = AsgiSink(send, (b"x-request-id", request_id.encode()))
        sink = self.wire.sink(inner, request_id, None)  # until parsed: errors in the protocol's shape
        ctx = None
        try:
            sink, ctx = await self._serve(scope, receive, request_id, inner, sink)
        except Exception as exc:
            log_unhandled(exc, scope.get("path"))
            if not inner.started:
                await sink.error(INTERNAL_ERROR)
        if inner.started and not (ctx is not None and ctx.client_disconnected):
            await inner.finish()

    async def _serve(
        self, scope: Scope, receive: Receive, request_id: str, inner: AsgiSink, sink: ClientSink
    ) -> tuple[ClientSink, RequestContext | None]:
        if scope["method"] != "POST":
            await sink.error(ApiError(405, "Use POST", "invalid_request_error", "method_not_allowed"))
            return sink, None
        headers = dict(scope["headers"])
        try:
            body = await read_body(headers, receive, self.max_body)
        except ApiError as err:
            await sink.error(err)
            return sink, None
        if body is None:  # client left while sending the body
            return sink, None
        parsed: ParsedRequest | ApiError
        try:
            parsed, view = self.wire.parse(body)
            sink = self.wire.sink(inner, request_id, view)
        except ApiError as err:
            parsed = err
        except Exception as exc:  # a bug in a parser: a 500, recorded once the caller is known
            log_unhandled(exc, scope.get("path"))
            parsed = internal_error()
        peer = scope.get("client")
        ctx = RequestContext(
            request_id,
            self.wire.endpoint,
            self.clock.now(),
            self.clock.monotonic(),
            peer[0] if peer else None,
        )
        ctx.request_sha256 = hashlib.sha256(body).hexdigest()  # evidence of what was processed
        watcher = asyncio.create_task(_watch_disconnect(receive, inner, ctx, asyncio.current_task()))
        try:
            await self.gateway_ref().handle(ctx, headers, body, parsed, sink)
        finally:
            watcher.cancel()
        return sink, ctx


async def _watch_disconnect(
    receive: Receive, inner: AsgiSink, ctx: RequestContext, task: asyncio.Task
) -> None:
    """The request body is read; the next message can only be the client going away."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
    if inner.finished or ctx.delivered:
        return  # the client had everything: closing now is not a disconnect
    ctx.client_disconnected = True
    if ctx.cancellable:
        task.cancel()  # stop relaying; the relay closes the upstream, the engine stops


def _too_big(limit: int) -> ApiError:
    return ApiError(
        413, f"Request body exceeds the limit of {limit} bytes", "invalid_request_error", "request_too_large"
    )


async def read_body(headers: dict[bytes, bytes], receive: Receive, limit: int) -> bytes | None:
    declared = headers.get(b"content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "Invalid Content-Length header", "invalid_request_error", "invalid_request")
        if int(declared) > limit:
            raise _too_big(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_big(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
