"""The HTTP sink: one response written to the ASGI `send`, its body digested (the receipt's
response hash) and, for a tenant that opted in, kept; its last bytes held back until the request
is settled (`hold` / `release`)."""

from __future__ import annotations

import hashlib

from starlette.types import Send

from tokenport.api.errors import error_headers, openai_error_body
from tokenport.gateway.errors import ApiError
from tokenport.gateway.sse import sse_error

RECEIPT_HEADER = b"x-tokenport-receipt-id"  # GET /v1/receipts/{id} returns the signed receipt
_SSE_HEADERS = [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]


class AsgiSink:
    """Writes one response to the ASGI `send` (the client's going away is the request's state:
    `RequestContext.client_disconnected`)."""

    __slots__ = (
        "_digest",
        "_extra",
        "_held",
        "_rid",
        "_send",
        "finished",
        "kept",
        "receipted",
        "started",
        "streaming",
    )

    def __init__(self, send: Send, request_id_header: tuple[bytes, bytes]) -> None:
        self._send = send
        self._rid = request_id_header
        self.finished = False
        self.receipted = False
        self.started = False
        self.streaming = False
        self._digest = hashlib.sha256()  # of every body byte the client is sent
        self.kept: list[bytes] | None = None  # the body, only for a tenant that opted in to retention
        self._held: list[dict] | None = None  # messages kept back until the request is settled
        self._extra: tuple[tuple[bytes, bytes], ...] = ()  # headers the lifecycle adds (a device's)

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

    def header(self, name: bytes, value: bytes) -> None:
        """One more header on the answer, success or error (before it starts)."""
        self._extra = (*self._extra, (name, value))

    def keep(self) -> None:
        self.kept = []

    def kept_body(self) -> bytes:
        return b"".join(self.kept or ())

    def response_sha256(self) -> str:
        return self._digest.hexdigest()

    def ids(self) -> tuple[tuple[bytes, bytes], ...]:
        """The request id, and the receipt id once the request will have a receipt (same value)."""
        ids = (self._rid, (RECEIPT_HEADER, self._rid[1])) if self.receipted else (self._rid,)
        return (*ids, *self._extra) if self._extra else ids

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

    async def send_events(self, events: list[bytes]) -> None:
        """Whole SSE events (the relay's framing), as they are."""
        await self.send(events[0] if len(events) == 1 else b"".join(events))

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
        await self.send(body)

    async def finish(self) -> None:
        await self.release()  # a request that never reached settlement (an early error, a bug)
        self.finished = True
        await self._send({"type": "http.response.body", "body": b"", "more_body": False})
