"""The hot path's HTTP client against a scripted server: body framings, keep-alive, stale
connections, timeouts, flow control and TLS."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl

import pytest

from tokenport.config import Waits
from tokenport.gateway.upstream_http import Origin, UpstreamError, UpstreamPool, UpstreamTimeout

LOOPBACK = "127.0.0.1"


class Script:
    """A server whose answers are written by the test: `reply(head, body, writer)` per request."""

    def __init__(self, reply, ssl_context=None) -> None:
        self.reply = reply
        self.ssl = ssl_context
        self.requests: list[tuple[bytes, bytes]] = []
        self.connections = 0

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ssl)
        port = self.server.sockets[0].getsockname()[1]
        return f"{'https' if self.ssl else 'http'}://127.0.0.1:{port}"

    async def __aexit__(self, *exc) -> None:
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                length = next(int(ln.split(b":")[1]) for ln in lines if ln.startswith(b"content-length"))
                body = await reader.readexactly(length)
                self.requests.append((head, body))
                if await self.reply(head, body, writer) == "close":
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), extra, body)


async def _post(pool: UpstreamPool, base: str, body: bytes = b"{}") -> tuple[int, bytes]:
    async with await pool.post(base, "/v1/chat/completions", body, {"x-request-id": "r1"}) as resp:
        return resp.status, await resp.read()


def test_content_length_answer_and_request_shape():
    async def reply(head, body, w):
        w.write(ok(b'{"ok":true}'))

    async def main():
        script = Script(reply)
        async with script as base:
            pool = UpstreamPool()
            assert await _post(pool, base, b'{"model":"m"}') == (200, b'{"ok":true}')
            head, body = script.requests[0]
            assert head.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
            assert b"\r\nhost: 127.0.0.1:" in head and b"\r\nx-request-id: r1\r\n" in head
            assert body == b'{"model":"m"}'
            pool.close()

    asyncio.run(main())


def test_keep_alive_reuses_one_connection():
    async def reply(head, body, w):
        w.write(ok(b"x" * 10))

    async def main():
        script = Script(reply)
        async with script as base:
            pool = UpstreamPool()
            for _ in range(5):
                assert await _post(pool, base) == (200, b"x" * 10)
            assert (script.connections, pool.opened) == (1, 1)
            pool.close()

    asyncio.run(main())


def test_concurrent_requests_open_their_own_connections():
    async def reply(head, body, w):
        await asyncio.sleep(0.05)
        w.write(ok(body))

    async def main():
        script = Script(reply)
        async with script as base:
            pool = UpstreamPool()
            got = await asyncio.gather(*(_post(pool, base, b"%d" % i) for i in range(4)))
            assert got == [(200, b"%d" % i) for i in range(4)]
            assert script.connections == 4
            pool.close()

    asyncio.run(main())


def test_chunked_stream_arrives_piece_by_piece():
    release = asyncio.Event

    async def main():
        gate = release()

        async def reply(head, body, w):
            w.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n")
            w.write(b"content-type: text/event-stream\r\n\r\n")
            w.write(b"6\r\ndata:1\r\n")
            await w.drain()
            await gate.wait()
            w.write(b"6\r\ndata:2\r\n0\r\n\r\n")

        script = Script(reply)
        async with script as base:
            pool = UpstreamPool()
            resp = await pool.post(base, "/v1/chat/completions", b"{}", {})
            assert resp.headers[b"content-type"] == b"text/event-stream"
            pieces = []
            async for data in resp.iter_any():
                pieces.append(data)
                gate.set()  # the second piece is only sent once the first was read
            resp.close()
            assert pieces == [b"data:1", b"data:2"]
            assert await _post(pool, base) is not None and pool.opened == 1  # reused after a chunked answer
            pool.close()

    asyncio.run(main())


def test_close_delimited_body_ends_with_the_connection():
    async def reply(head, body, w):
        w.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nall of it")
        return "close"

    async def main():
        async with Script(reply) as base:
            pool = UpstreamPool()
            assert await _post(pool, base) == (200, b"all of it")
            assert await _post(pool, base) == (200, b"all of it")
            assert pool.opened == 2  # never reused
            pool.close()

    asyncio.run(main())


def test_truncated_body_is_an_error_not_a_short_answer():
    async def reply(head, body, w):
        w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly this")
        return "close"

    async def main():
        async with Script(reply) as base:
            pool = UpstreamPool()
            with pytest.raises(UpstreamError):
                await _post(pool, base)
            pool.close()

    asyncio.run(main())


def test_a_kept_alive_connection_the_server_dropped_is_replaced_once():
    async def reply(head, body, w):
        w.write(ok(b"fine"))
        return "close"  # answers with keep-alive, then closes anyway (as at a keep-alive timeout)

    async def main():
        script = Script(reply)
        async with script as base:
            pool = UpstreamPool()
            assert await _post(pool, base) == (200, b"fine")
            # the close may or may not have been seen yet: either way the next request succeeds
            assert await _post(pool, base) == (200, b"fine")
            assert script.connections == 2
            pool.close()

    asyncio.run(main())


def test_stale_connection_closed_mid_reuse_is_retried_on_a_new_one():
    async def main():
        script = Script(None)
        served = 0

        async def reply(head, body, w):
            nonlocal served
            served += 1
            if served == 2:
                return "close"  # takes the request, then drops the connection without an answer
            w.write(ok(b"answer %d" % served))

        script.reply = reply
        async with script as base:
            pool = UpstreamPool()
            assert await _post(pool, base) == (200, b"answer 1")
            assert await _post(pool, base) == (200, b"answer 3")
            assert script.connections == 2
            pool.close()

    asyncio.run(main())


def test_fresh_connection_dropped_without_answer_is_an_error():
    async def reply(head, body, w):
        return "close"

    async def main():
        async with Script(reply) as base:
            with pytest.raises(UpstreamError):
                await _post(UpstreamPool(), base)

    asyncio.run(main())


def test_read_timeout_and_connect_refused():
    async def reply(head, body, w):
        await asyncio.sleep(5)

    async def main():
        async with Script(reply) as base:
            pool = UpstreamPool(Waits(headers=0.2))
            with pytest.raises(UpstreamTimeout) as exc:
                await _post(pool, base)
            assert (exc.value.phase, exc.value.seconds) == ("headers", 0.2)
        with pytest.raises(UpstreamError, match="cannot connect"):
            await _post(UpstreamPool(), base)  # the server is gone

    asyncio.run(main())


def test_invalid_http_is_an_error():
    async def reply(head, body, w):
        w.write(b"SPDY/9 banana\r\n\r\n")

    async def main():
        async with Script(reply) as base:
            with pytest.raises(UpstreamError, match="invalid HTTP"):
                await _post(UpstreamPool(), base)

    asyncio.run(main())


def test_unread_answer_closes_its_connection():
    async def reply(head, body, w):
        w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n" + b"y" * 500)
        await asyncio.sleep(0.05)
        w.write(b"y" * 500)

    async def main():
        script = Script(reply)
        async with script as base:
            pool = UpstreamPool()
            resp = await pool.post(base, "/v1/chat/completions", b"{}", {})
            resp.close()  # the client left before the body was read
            assert await _post(pool, base) == (200, b"y" * 1000)
            assert script.connections == 2
            pool.close()

    asyncio.run(main())


def test_slow_reader_pauses_the_engine_connection():
    big = b"z" * (4 * 1024 * 1024)

    async def reply(head, body, w):
        w.write(ok(big))
        await w.drain()

    async def main():
        async with Script(reply) as base:
            pool = UpstreamPool()
            resp = await pool.post(base, "/v1/chat/completions", b"{}", {})
            await asyncio.sleep(0.3)  # the server writes while nobody reads
            assert resp._conn.transport.is_reading() is False
            got = bytearray()
            async for data in resp.iter_any():
                got += data
            assert bytes(got) == big
            resp.close()
            pool.close()

    asyncio.run(main())


def test_origin_parsing():
    o = Origin.parse("https://engine.internal/v0/")
    want = ("engine.internal", 443, True, b"/v0", b"engine.internal")
    assert (o.host, o.port, o.tls, o.prefix, o.host_header) == want
    o = Origin.parse("http://[::1]:8000")
    assert (o.host, o.port, o.prefix, o.host_header) == ("::1", 8000, b"", b"[::1]:8000")
    with pytest.raises(ValueError):
        Origin.parse("ftp://x")


def test_tls(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)

    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(LOOPBACK))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")

    async def reply(head, body, w):
        w.write(ok(b"secret"))

    async def main():
        async with Script(reply, server_ctx) as base:
            with pytest.raises(UpstreamError):  # not a certificate the default trust store knows
                await _post(UpstreamPool(), base)
            trusting = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
            pool = UpstreamPool(ssl_context=trusting)
            assert await _post(pool, base) == (200, b"secret")
            pool.close()

    asyncio.run(main())
