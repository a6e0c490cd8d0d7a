"""A small HTTP/1.1 client for the hot path: POST a body to an engine, read the answer as it comes.

The relay's one upstream call per request, on asyncio protocols and llhttp (`httptools`, the
parser uvicorn uses), with keep-alive connections pooled per origin. It does only what talking
to an inference engine needs (one request per connection at a time, content-length, chunked or
close-delimited bodies, TLS when the URL says https) and costs about a third of a general
client's CPU per request. Health checks and other slow-path calls keep using aiohttp.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools

from tokenport.config import Waits

_PAUSE_ABOVE = 256 * 1024  # stop reading from the engine while this much is waiting for the client


class UpstreamError(Exception):
    """The engine could not be reached, or the connection broke before the answer was complete."""


class UpstreamTimeout(UpstreamError, TimeoutError):
    """A wait ran past its bound (config.Waits): `phase` says which, `seconds` how long."""

    def __init__(self, phase: str, seconds: float) -> None:
        super().__init__(f"the engine's {phase} took over {seconds:g} s")
        self.phase = phase  # connect | headers | first_token | idle | total
        self.seconds = seconds


@dataclass(frozen=True, slots=True)
class Origin:
    host: str
    port: int
    tls: bool
    prefix: bytes  # a path the URL carries before the API's own ("/engine" in http://h/engine)
    host_header: bytes

    @classmethod
    def parse(cls, url: str) -> Origin:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        tls = parts.scheme == "https"
        port = parts.port or (443 if tls else 80)
        default = parts.port is None
        host = parts.hostname
        shown = f"[{host}]" if ":" in host else host
        return cls(
            host,
            port,
            tls,
            parts.path.rstrip("/").encode(),
            (shown if default else f"{shown}:{port}").encode("idna"),
        )


class _Connection(asyncio.Protocol):
    """One keep-alive connection; carries one exchange at a time."""

    def __init__(self, pool: UpstreamPool, origin: Origin) -> None:
        self.pool = pool
        self.origin = origin
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.response_started = False  # the current answer's headers are in
        self.idle_since = 0.0
        self.response: Response | None = None
        self.parser = httptools.HttpResponseParser(self)

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.response is None:  # bytes nobody asked for: the connection cannot be trusted
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.response._fail(UpstreamError(f"invalid HTTP from the engine: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.parser = self.transport = None  # parser <-> callbacks: a cycle left to the collector
        response, self.response = self.response, None
        if response is not None and not response.complete:
            if response.headers_done and response.until_close:
                response._finish()  # a body that ends with the connection: ended
            else:
                response._fail(UpstreamError("the engine closed the connection"))

    def pause_writing(self) -> None:  # requests are small; nothing to throttle
        pass

    def resume_writing(self) -> None:
        pass

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.response.headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        r = self.response
        r.status = self.parser.get_status_code()
        h = r.headers
        r.until_close = b"content-length" not in h and b"chunked" not in h.get(b"transfer-encoding", b"")
        r.headers_done = True
        r._wake()

    def on_body(self, body: bytes) -> None:
        self.response._append(body)

    def on_message_complete(self) -> None:
        response = self.response
        response._finish()
        if not self.parser.should_keep_alive():
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()

    def pause(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and not self.closed and self.transport.is_reading() is False:
            self.transport.resume_reading()


class Response:
    """An engine's answer: status and headers once they arrived, then the body as it comes."""

    __slots__ = (
        "_chunks",
        "_conn",
        "_error",
        "_size",
        "_waiter",
        "body_started",
        "complete",
        "deadline",
        "headers",
        "headers_done",
        "released",
        "status",
        "until_close",
        "waits",
    )

    def __init__(self, conn: _Connection, waits: Waits) -> None:
        self._conn = conn
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._waiter: asyncio.Future | None = None
        self._error: Exception | None = None
        self.waits = waits
        self.deadline = conn.loop.time() + waits.total  # the whole exchange
        self.body_started = False
        self.status = 0
        self.headers: dict[bytes, bytes] = {}
        self.headers_done = False
        self.until_close = False
        self.complete = False
        self.released = False

    # fed by the connection
    def _append(self, body: bytes) -> None:
        self.body_started = True
        self._chunks.append(body)
        self._size += len(body)
        if self._size > _PAUSE_ABOVE:
            self._conn.pause()
        self._wake()

    def _finish(self) -> None:
        self.complete = True
        self._wake()

    def _fail(self, exc: Exception) -> None:
        self._error = exc
        self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def _wait(self) -> None:
        """Until the connection has news, within this part's bound and the whole's."""
        if self._error is not None:
            raise self._error
        loop = self._conn.loop
        waits = self.waits
        if not self.headers_done:
            phase, limit = "headers", waits.headers
        elif not self.body_started:
            phase, limit = "first_token", waits.first_token
        else:
            phase, limit = "idle", waits.idle
        left = self.deadline - loop.time()
        if left < limit:
            phase, limit = "total", waits.total
        self._waiter = w = loop.create_future()
        timer = loop.call_later(max(0.0, min(left, limit)), _expire, w, phase, limit)
        try:
            await w
        finally:
            timer.cancel()
            self._waiter = None
        if self._error is not None:
            raise self._error

    async def _headers(self) -> None:
        while not self.headers_done:
            await self._wait()

    # read by the relay
    async def iter_any(self):
        """Every piece of the body as soon as it arrived (what came together, joined)."""
        while True:
            if self._chunks:
                data = self._take()
                yield data
                continue
            if self.complete:
                return
            await self._wait()

    async def read(self, limit: int | None = None) -> bytes:
        """The whole body (or its first `limit` bytes)."""
        while not self.complete and (limit is None or self._size < limit):
            await self._wait()
        data = self._take()
        return data if limit is None else data[:limit]

    def _take(self) -> bytes:
        chunks = self._chunks
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        if self._size > _PAUSE_ABOVE:
            self._conn.resume()
        self._size = 0
        return data

    def close(self) -> None:
        """Done with it: a fully read answer's connection goes back to the pool; otherwise it is
        closed (which is how an engine learns that the client went away)."""
        if self.released:
            return
        self.released = True
        conn = self._conn
        if conn.response is self:
            conn.response = None
        if self.complete and self._error is None and not conn.closed:
            conn.pool._release(conn)
        else:
            conn.close()

    async def __aenter__(self) -> Response:
        return self

    async def __aexit__(self, *exc) -> None:
        self.close()


def _expire(waiter: asyncio.Future, phase: str, seconds: float) -> None:
    if not waiter.done():
        waiter.set_exception(UpstreamTimeout(phase, seconds))


class UpstreamPool:
    """Keep-alive connections per origin; a new one when none is idle (no limit)."""

    def __init__(
        self,
        waits: Waits | None = None,  # the bounds of an exchange unless `post` is given its own
        idle_timeout: float = 30.0,  # a kept-alive connection unused this long is not reused
        ssl_context: ssl.SSLContext | None = None,  # default: the system's trust store
    ) -> None:
        self.waits = waits or Waits()
        self.idle_timeout = idle_timeout
        self._idle: dict[Origin, list[_Connection]] = {}
        self._origins: dict[str, Origin] = {}
        self._ssl = ssl_context
        self.loop: asyncio.AbstractEventLoop | None = None
        self.opened = 0  # connections made, for tests and metrics

    def origin(self, base_url: str) -> Origin:
        o = self._origins.get(base_url)
        if o is None:
            o = self._origins[base_url] = Origin.parse(base_url)
        return o

    async def post(
        self, base_url: str, path: str, body: bytes, headers: dict[str, str], waits: Waits | None = None
    ) -> Response:
        """Send the request; returns once the answer's status and headers are in."""
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
        waits = waits or self.waits
        origin = self.origin(base_url)
        head = _request_head(origin, path, len(body), headers)
        conn = self._take_idle(origin)
        if conn is not None:
            try:
                return await self._exchange(conn, head, body, waits)
            except UpstreamError as exc:
                if isinstance(exc, UpstreamTimeout) or conn.response_started:
                    raise
                # a kept-alive connection the engine closed as we reused it: once more, on a new one
        conn = await self._connect(origin, waits.connect)
        return await self._exchange(conn, head, body, waits)

    async def _exchange(self, conn: _Connection, head: bytes, body: bytes, waits: Waits) -> Response:
        response = conn.response = Response(conn, waits)
        conn.response_started = False
        conn.transport.write(head + body if len(body) < 16384 else head)
        if len(body) >= 16384:
            conn.transport.write(body)
        try:
            await response._headers()
        except BaseException:
            response.close()
            raise
        conn.response_started = True
        return response

    def _take_idle(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        horizon = self.loop.time() - self.idle_timeout
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.idle_since >= horizon:
                return conn
            conn.close()
        return None

    async def _connect(self, origin: Origin, timeout: float) -> _Connection:
        conn = _Connection(self, origin)
        if origin.tls and self._ssl is None:
            self._ssl = ssl.create_default_context()
        try:
            async with asyncio.timeout(timeout):
                await self.loop.create_connection(
                    lambda: conn, origin.host, origin.port, ssl=self._ssl if origin.tls else None
                )
        except TimeoutError:
            raise UpstreamTimeout("connect", timeout) from None
        except OSError as exc:
            raise UpstreamError(f"cannot connect to {origin.host}:{origin.port}: {exc}") from None
        self.opened += 1
        return conn

    def _release(self, conn: _Connection) -> None:
        conn.idle_since = self.loop.time()
        self._idle.setdefault(conn.origin, []).append(conn)

    def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()


def _request_head(origin: Origin, path: str, length: int, headers: dict[str, str]) -> bytes:
    lines = [
        b"POST " + origin.prefix + path.encode() + b" HTTP/1.1",
        b"host: " + origin.host_header,
        b"content-length: " + str(length).encode(),
    ]
    lines += [f"{k}: {v}".encode("latin-1") for k, v in headers.items()]
    return b"\r\n".join(lines) + b"\r\n\r\n"
