"""HTTP/1.1 with bounds on the client's side: uvicorn's httptools protocol, plus what it lacks.

uvicorn closes an idle keep-alive connection (`keepalive_timeout_s`), but a connection that never
sends a request, sends its headers a byte at a time, or declares a body it never sends is held
for as long as the client likes. Here each request must arrive within bounds:

- its headers within `header_timeout_s` of its first byte (or of the connection, for the first);
- its body with no gap longer than `body_timeout_s`, and the whole request within
  `read_timeout_s` of its first byte (a lying `Content-Length` ends here: 408);
- at most `max_connections_per_client` connections from one address: a request on one more is
  answered 429 and its connection closed.

Past a bound the client gets 408 (or 429) with a request id, in OpenAI's error shape (Anthropic's
under `/v1/messages`), and the connection is closed; a request the application was reading sees
the client as gone. Malformed HTTP gets the same JSON shape (400) instead of uvicorn's text.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from tokenport.api.anthropic.serving import anthropic_error
from tokenport.api.errors import error_headers, openai_error_body
from tokenport.api.middleware import new_request_id
from tokenport.config import ClientBounds
from tokenport.gateway.errors import ApiError

_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 429: b"Too Many Requests"}


def guarded_protocol(
    bounds: ClientBounds, on_refused: Callable[[str], None] = lambda reason: None
) -> type[HttpToolsProtocol]:
    """The protocol class for `uvicorn.Config(http=...)`; `on_refused(reason)` counts what a
    bound ended ("header_timeout", "body_timeout", "too_many_connections", "malformed")."""

    class ServerHttp(GuardedHttp):
        _bounds = bounds
        _on_refused = staticmethod(on_refused)
        _per_address = {}  # this server's own counts

    return ServerHttp


class GuardedHttp(HttpToolsProtocol):
    """uvicorn's httptools protocol within the client bounds. A server's own subclass
    (`guarded_protocol`) sets what it shares across connections."""

    _bounds: ClientBounds
    _on_refused: Callable[[str], None]
    _per_address: dict[str | None, int]  # the connections open from each address

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0  # the whole request's (from its first byte); 0 between requests
        self._address: str | None = None
        self._over_cap = False
        self._in_body = False
        self._refused = False

    # --- connections per address ---

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._address = self.client[0] if self.client else None
        n = self._per_address[self._address] = self._per_address.get(self._address, 0) + 1
        cap = self._bounds.max_connections_per_client
        self._over_cap = bool(cap) and n > cap
        self._arm(self._bounds.header_timeout_s)  # the first request, from the connection

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        n = self._per_address.get(self._address, 1) - 1
        if n > 0:
            self._per_address[self._address] = n
        else:
            self._per_address.pop(self._address, None)
        super().connection_lost(exc)

    # --- the parser's events (one request after another on a connection) ---

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._deadline = self.loop.time() + self._bounds.read_timeout_s
        self._arm(self._bounds.header_timeout_s)

    def on_headers_complete(self) -> None:
        if self._over_cap:
            return self._refuse(429, "too_many_connections", _too_many(self._bounds))
        super().on_headers_complete()
        self._in_body = True
        self._arm(self._bounds.body_timeout_s)

    def on_body(self, body: bytes) -> None:
        if self._refused:
            return
        super().on_body(body)
        self._arm(self._bounds.body_timeout_s)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        super().on_message_complete()
        self._cancel()  # the answer's time is the application's; then keep-alive's
        self._in_body, self._deadline = False, 0.0

    def send_400_response(self, msg: str) -> None:
        err = ApiError(400, "Malformed HTTP request", "invalid_request_error", "invalid_http")
        self._refuse(400, "malformed", err)

    # --- bounds ---

    def _arm(self, seconds: float) -> None:
        self._cancel()
        at = self.loop.time() + seconds
        self._timer = self.loop.call_at(min(at, self._deadline) if self._deadline else at, self._timed_out)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if not self._deadline:  # no request begun: nothing to answer
            self._on_refused("idle")
            self.transport.close()
            return
        part = "body" if self._in_body else "headers"
        err = ApiError(
            408,
            f"The request's {part} did not arrive in time",
            "invalid_request_error",
            "request_timeout",
        )
        self._refuse(408, "body_timeout" if self._in_body else "header_timeout", err)

    def _refuse(self, status: int, reason: str, err: ApiError) -> None:
        """Answer in the client's protocol and close; an application reading the request
        sees the client gone (its own answer, if any, goes nowhere)."""
        self._cancel()
        self._refused = True
        self._on_refused(reason)
        cycle = self.cycle if self._in_body else None
        if cycle is None or not cycle.response_started:
            anthropic = (self.url or b"").startswith(b"/v1/messages")
            body = anthropic_error(err) if anthropic else openai_error_body(err)
            rid = (b"x-request-id", new_request_id().encode())
            headers = [*error_headers(err, body, (rid,)), (b"connection", b"close")]
            head = b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status])
            head += b"".join(k + b": " + v + b"\r\n" for k, v in headers)
            self.transport.write(head + b"\r\n" + body)
        self.transport.close()
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True
            cycle.message_event.set()


def _too_many(bounds: ClientBounds) -> ApiError:
    return ApiError(
        429,
        f"More than {bounds.max_connections_per_client} connections from this address",
        "rate_limit_error",
        "too_many_connections",
        headers={"retry-after": "1"},
    )
