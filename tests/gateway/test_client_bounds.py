"""Bounds on the client's side (api/http_protocol.py): a request's headers and body arrive in
time or get 408, connections per address are capped (429), malformed HTTP gets JSON with a
request id, an idle keep-alive connection is closed. Every answer in the client's shape."""

from __future__ import annotations

import json
import socket
import time

import pytest
from support.live import ADMIN_TOKEN, mock_config, start_server

BOUNDS = {
    "header_timeout_s": 1.0,
    "body_timeout_s": 1.0,
    "read_timeout_s": 3.0,
    "keepalive_timeout_s": 1.0,
    "max_connections_per_client": 8,
}


@pytest.fixture(scope="module")
def bounded(tmp_path_factory, mock_engine):
    config = mock_config(mock_engine.url)
    server = start_server(
        tmp_path_factory.mktemp("bounds"), {**config, "server": {**BOUNDS, "admin_token": ADMIN_TOKEN}}
    )
    server.extra["key"] = server.new_key("bounds")[1]
    yield server
    server.stop()


def _connect(server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def _response(sock: socket.socket) -> tuple[int, dict[str, str], bytes, float]:
    """Status, headers, body of one answer, and how long after the call it came."""
    t0 = time.monotonic()
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body, time.monotonic() - t0


def _closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


@pytest.mark.parametrize(
    "path, anthropic",
    [
        ("/v1/chat/completions", False),
        ("/v1/responses", False),
        ("/v1/messages", True),
        ("/v1/messages/count_tokens", True),
        ("/admin/v1/tenants/nobody/retention", False),
    ],
)
def test_a_lying_content_length_gets_408_within_the_body_timeout(bounded, path, anthropic):
    """The routes read the body once the caller is known: an admin's, a key's."""
    sock = _connect(bounded)
    token = ADMIN_TOKEN if path.startswith("/admin") else bounded.extra["key"]
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {token}\r\nContent-Length: 1000\r\n\r\n"
    )
    sock.sendall(head.encode() + b'{"model"')  # 8 of the 1000 bytes promised
    status, headers, body, waited = _response(sock)
    assert status == 408
    assert 0.5 < waited < 3.0  # body_timeout_s = 1
    assert headers["x-request-id"].startswith("req_")
    err = json.loads(body)
    if anthropic:
        assert err["type"] == "error" and err["error"]["type"] == "timeout_error"
    else:
        assert err["error"]["code"] == "request_timeout"
    assert _closed(sock)


def test_headers_sent_a_byte_at_a_time_get_408_within_the_header_timeout(bounded):
    sock = _connect(bounded)
    t0 = time.monotonic()
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
    status = None
    for ch in b"X-Slow: " + b"a" * 100:  # one byte every 0.2 s: more than the 1 s allowed
        try:
            sock.sendall(bytes([ch]))
        except OSError:
            break
        sock.settimeout(0.2)
        try:
            status, headers, body, _ = _response(sock)
            break
        except TimeoutError:
            continue
    assert status == 408, "the slow headers were never cut"
    assert time.monotonic() - t0 < 3.0
    assert json.loads(body)["error"]["code"] == "request_timeout"
    assert headers["x-request-id"].startswith("req_")


def test_a_body_that_trickles_is_cut_at_the_read_timeout(bounded):
    """Each gap shorter than body_timeout_s, the whole longer than read_timeout_s (3 s)."""
    sock = _connect(bounded)
    t0 = time.monotonic()
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
    sock.settimeout(0.5)
    while True:
        try:
            sock.sendall(b"x")
            status = _response(sock)[0]
            break
        except TimeoutError:
            assert time.monotonic() - t0 < 6, "the trickling body was never cut"
    assert status == 408 and 2.5 < time.monotonic() - t0 < 5


def test_a_connection_that_sends_nothing_is_closed(bounded):
    sock = _connect(bounded)
    t0 = time.monotonic()
    assert _closed(sock)
    assert 0.5 < time.monotonic() - t0 < 3.0


def test_an_idle_keep_alive_connection_is_closed(bounded):
    sock = _connect(bounded)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _, _, _ = _response(sock)
    assert status in (200, 503)
    t0 = time.monotonic()
    assert _closed(sock)
    assert time.monotonic() - t0 < 3.0  # keepalive_timeout_s = 1


def test_malformed_http_gets_json_with_a_request_id(bounded):
    sock = _connect(bounded)
    sock.sendall(b"THIS IS NOT HTTP\r\n\r\n")
    status, headers, body, _ = _response(sock)
    assert status == 400
    assert headers["x-request-id"].startswith("req_")
    assert json.loads(body)["error"]["code"] == "invalid_http"


def test_connections_per_address_are_capped(bounded):
    held = []
    try:
        for _ in range(8):  # the cap: each serves a request and stays open
            sock = _connect(bounded)
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _response(sock)[0] in (200, 503)
            held.append(sock)
        extra = _connect(bounded)
        extra.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body, _ = _response(extra)
        assert status == 429 and headers["retry-after"] == "1"
        assert json.loads(body)["error"]["code"] == "too_many_connections"
        assert _closed(extra)
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.2)
    again = _connect(bounded)
    again.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert _response(again)[0] in (200, 503)
    again.close()


def test_refusals_are_counted(bounded):
    sock = _connect(bounded)
    sock.sendall(b"NOT HTTP\r\n\r\n")
    _response(sock)
    sock.close()
    metrics = _get(bounded, "/metrics").decode()
    assert 'tokenport_client_refusals_total{reason="malformed"}' in metrics
    assert 'tokenport_client_refusals_total{reason="body_timeout"}' in metrics


def _get(server, path: str) -> bytes:
    sock = _connect(server)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    _, _, body, _ = _response(sock)
    sock.close()
    return body
