"""OpenAI-compatible endpoints as raw ASGI callables (the hot path: no framework in between)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable

from tokenport.api.errors import error_headers, openai_error_body
from tokenport.api.middleware import INTERNAL_ERROR, log_unhandled, new_request_id
from tokenport.api.openai_protocol import ParsedRequest, parse_chat, parse_completion, parse_embeddings
from tokenport.clock import Clock
from tokenport.gateway.context import RequestContext
from tokenport.gateway.errors import ApiError
from tokenport.gateway.lifecycle import Gateway
from tokenport.gateway.sse import sse_error

RECEIPT_HEADER = b"x-tokenport-receipt-id"  # GET /v1/receipts/{id} returns the signed receipt
_SSE_HEADERS = [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]


class AsgiSink:
    """Writes one response to the ASGI `send`; knows whether the client went away."""

    __slots__ = (
        "_digest",
        "_held",
        "_rid",
        "_send",
        "cancellable",
        "delivered",
        "disconnected",
        "finished",
        "kept",
        "receipted",
        "started",
        "streaming",
    )

    def __init__(self, send, request_id_header: tuple[bytes, bytes]) -> None:
        self._send = send
        self._rid = request_id_header
        self.disconnected = False
        self.cancellable = False
        self.delivered = False
        self.finished = False
        self.receipted = False
        self.started = False
        self.streaming = False
        self._digest = hashlib.sha256()  # of every body byte the client is sent
        self.kept: list[bytes] | None = None  # the body, only for a tenant that opted in to retention
        self._held: list[dict] | None = None  # messages kept back until the request is settled

    def hold(self) -> None:
        """From now on keep the messages back (the answer's last bytes): `release` sends them once
        the request's settlement is journaled, so no client has an answer the journal lacks."""
        if self._held is None:
            self._held = []

    async def release(self) -> None:
        held, self._held = self._held, None
        for message in held or ():
            await self._send(message)

    async def _out(self, message: dict) -> None:
        if self._held is not None:
            self._held.append(message)
        else:
            await self._send(message)

    def keep(self) -> None:
        self.kept = []

    def kept_body(self) -> bytes:
        return b"".join(self.kept or ())

    def response_sha256(self) -> str:
        return self._digest.hexdigest()

    def ids(self) -> tuple[tuple[bytes, bytes], ...]:
        """The request id, and the receipt id once the request will have a receipt (same value)."""
        return (self._rid, (RECEIPT_HEADER, self._rid[1])) if self.receipted else (self._rid,)

    async def start(
        self, status: int, content_type: bytes, length: int | None = None, extra: tuple = ()
    ) -> None:
        headers = [(b"content-type", content_type), *self.ids(), *extra]
        if length is not None:
            headers.append((b"content-length", str(length).encode()))
        if content_type == b"text/event-stream":
            self.streaming = True
            headers += _SSE_HEADERS
        self.started = True
        await self._out({"type": "http.response.start", "status": status, "headers": headers})

    async def send(self, data: bytes) -> None:
        self._digest.update(data)
        if self.kept is not None:
            self.kept.append(data)
        await self._out({"type": "http.response.body", "body": data, "more_body": True})

    async def error(self, err: ApiError) -> None:
        if self.streaming:  # after streaming started: an error event, then the stream ends
            await self.send(sse_error(err.message, err.type, err.code))
            return
        body = openai_error_body(err)
        await self.raw_error(err.status, error_headers(err, body, self.ids()), body)

    async def raw_error(self, status: int, headers: list, body: bytes) -> None:
        """An error answer already in the client's protocol shape."""
        self.started = True
        await self._out({"type": "http.response.start", "status": status, "headers": headers})
        self._digest.update(body)
        if self.kept is not None:
            self.kept.append(body)
        await self._out({"type": "http.response.body", "body": body, "more_body": True})

    async def finish(self) -> None:
        await self.release()  # a request that never reached settlement (an early error, a bug)
        self.finished = True
        await self._send({"type": "http.response.body", "body": b"", "more_body": False})


class CompletionEndpoint:
    def __init__(
        self,
        endpoint: str,
        parse: Callable[[bytes], ParsedRequest],
        gateway_ref,
        clock: Clock,
        max_body: int,
    ) -> None:
        self.endpoint = endpoint
        self.parse = parse
        self.gateway_ref = gateway_ref  # () -> Gateway, built at startup
        self.clock = clock
        self.max_body = max_body

    async def __call__(self, scope, receive, send) -> None:
        """Served without middleware (the hot path): it sets its own request id header."""
        request_id = new_request_id()
        sink = self.make_sink(AsgiSink(send, (b"x-request-id", request_id.encode())), request_id)
        try:
            await self._serve(scope, receive, request_id, sink)
        except Exception as exc:
            log_unhandled(exc, scope.get("path"))
            if not sink.started:
                await sink.error(INTERNAL_ERROR)
        if sink.started and not sink.disconnected:
            await sink.finish()

    def make_sink(self, sink: AsgiSink, request_id: str):
        """The sink in the client's protocol (an Anthropic endpoint wraps this one)."""
        return sink

    def parser(self, sink) -> Callable[[bytes], ParsedRequest]:
        return self.parse

    async def _serve(self, scope, receive, request_id: str, sink: AsgiSink) -> None:
        if scope["method"] != "POST":
            err = ApiError(405, "Use POST", "invalid_request_error", "method_not_allowed")
            return await sink.error(err)
        headers = dict(scope["headers"])
        try:
            body = await read_body(headers, receive, self.max_body)
        except ApiError as err:
            return await sink.error(err)
        if body is None:  # client left while sending the body
            return
        gateway: Gateway = self.gateway_ref()
        peer = scope.get("client")
        ctx = RequestContext(
            request_id, self.endpoint, self.clock.now(), self.clock.monotonic(), peer[0] if peer else None
        )
        ctx.request_sha256 = hashlib.sha256(body).hexdigest()  # evidence of what was processed
        watcher = asyncio.create_task(_watch_disconnect(receive, sink, asyncio.current_task()))
        try:
            await gateway.handle(ctx, headers, body, self.parser(sink), sink)
        finally:
            watcher.cancel()


async def _watch_disconnect(receive, sink: AsgiSink, task: asyncio.Task) -> None:
    """The request body is read; the next message can only be the client going away."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
    if sink.finished or sink.delivered:
        return  # the client had everything: closing now is not a disconnect
    sink.disconnected = True
    if sink.cancellable:
        task.cancel()  # stop relaying; the relay closes the upstream, the engine stops


def _too_big(limit: int) -> ApiError:
    return ApiError(
        413, f"Request body exceeds the limit of {limit} bytes", "invalid_request_error", "request_too_large"
    )


async def read_body(headers: dict[bytes, bytes], receive, limit: int) -> bytes | None:
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


def completion_endpoints(
    gateway_ref, clock: Clock, max_body: int, aliases: dict[str, str] | None = None
) -> dict[str, CompletionEndpoint]:
    from tokenport.api.anthropic_routes import MessagesEndpoint
    from tokenport.api.responses_routes import ResponsesEndpoint

    return {
        "/v1/chat/completions": CompletionEndpoint("chat", parse_chat, gateway_ref, clock, max_body),
        "/v1/completions": CompletionEndpoint("completions", parse_completion, gateway_ref, clock, max_body),
        "/v1/messages": MessagesEndpoint(gateway_ref, clock, max_body, aliases or {}),
        "/v1/responses": ResponsesEndpoint(gateway_ref, clock, max_body),
        "/v1/embeddings": CompletionEndpoint("embeddings", parse_embeddings, gateway_ref, clock, max_body),
    }
