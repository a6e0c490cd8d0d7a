"""Engine fleets: three mock engines in two zones behind one gateway. A conversation sticks to one
engine (prefix affinity); a request that fails before any byte is retried in its zone, never
elsewhere; a failing engine's circuit opens, and closes once it answers again."""

from __future__ import annotations

import contextlib
import json
import threading
import urllib.request

import httpx
import pytest
from support.live import start_mock, start_server, wait_until


@pytest.fixture
def fleet(tmp_path):
    mocks = {name: start_mock() for name in ("a", "b", "c")}
    cfg = {
        "engine": {"enabled": False},
        "backends": [
            {"name": "a", "url": mocks["a"].url, "models": ["fleet-model"], "kind": "llamacpp"},
            {"name": "b", "url": mocks["b"].url, "models": ["fleet-model"], "kind": "llamacpp"},
            {
                "name": "c",
                "url": mocks["c"].url,
                "zone": "domestic",
                "models": ["fleet-model"],
                "kind": "llamacpp",
            },
        ],
    }
    server = start_server(tmp_path / "home", cfg, prices={"fleet-model": ["--free"]})
    _, secret = server.new_key("fleet-user")
    for name, zone in (("a", "overseas"), ("b", "overseas"), ("c", "domestic")):
        wait_until(
            lambda n=name, z=zone: (
                _metric(server, f'tokenport_backend_healthy{{backend="{n}",zone="{z}"}}') == 1
            ),
            5,
        )
    yield server, mocks, secret
    server.stop()
    server.verify_ledger()
    for m in mocks.values():
        if m.proc.poll() is None:
            m.stop()


def _metric(server, series: str) -> float | None:
    text = httpx.get(server.base_url + "/metrics").text
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return None


def _ask(server, secret: str, conversation: str, **headers) -> httpx.Response:
    body = {"model": "fleet-model", "messages": [{"role": "user", "content": conversation}], "max_tokens": 2}
    return httpx.post(
        server.base_url + "/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {secret}", **headers},
        timeout=10,
    )


def _backend(server, r: httpx.Response) -> str:
    return server.record(r.headers["x-request-id"])["backend"]


def _set_failing(mock, failing: bool) -> None:
    req = urllib.request.Request(
        mock.url + "/mock/fail", data=json.dumps({"failing": failing}).encode(), method="POST"
    )
    urllib.request.urlopen(req, timeout=2).read()


def test_conversations_stick_and_a_dead_engine_is_routed_around_in_zone(fleet) -> None:
    server, mocks, secret = fleet
    homes = {}
    for i in range(6):
        conversation = f"conversation {i}: please help"
        got = {_backend(server, _ask(server, secret, conversation)) for _ in range(3)}
        assert len(got) == 1 and got <= {"a", "b"}, got  # the same engine each time, in its zone
        homes[conversation] = got.pop()
    assert set(homes.values()) == {"a", "b"}, "rendezvous hashing spreads conversations"
    session = {
        _backend(server, _ask(server, secret, f"turn {i}", **{"x-session-affinity": "s1"})) for i in range(4)
    }
    assert len(session) == 1  # a session header keeps different turns together

    victim = next(c for c, home in homes.items() if home == "a")
    mocks["a"].stop()  # the engine dies between two requests
    for _ in range(3):
        r = _ask(server, secret, victim)
        assert r.status_code == 200 and _backend(server, r) == "b"  # retried before any byte, in zone
    assert mocks["c"].stats()["requests"] == 0, "never another zone"


def test_a_failing_engine_opens_its_circuit_and_closes_it_when_it_recovers(fleet) -> None:
    server, mocks, secret = fleet
    _set_failing(mocks["b"], True)  # its health check still passes: only requests show it
    answers = [_ask(server, secret, f"question {i}") for i in range(12)]  # well within the 1 s open
    for r in answers:
        assert r.status_code == 200 and _backend(server, r) == "a"
    assert _metric(server, 'tokenport_backend_circuit_open{backend="b"}') == 1
    tried = mocks["b"].stats()["requests"]
    assert 3 <= tried <= 4  # three failures open it; at most one try once it half-opens
    assert mocks["c"].stats()["requests"] == 0

    _set_failing(mocks["b"], False)

    def closed() -> bool:
        for i in range(4):
            _ask(server, secret, f"later {i}")
        return _metric(server, 'tokenport_backend_circuit_open{backend="b"}') == 0

    wait_until(closed, 40, 0.5, "the circuit closed again")
    assert mocks["b"].stats()["requests"] > tried


def test_backends_registered_at_run_time(fleet) -> None:
    """`tokenport backends add` reaches the running gateway within a second; `remove` too."""
    server, mocks, secret = fleet
    server.cli("prices", "set", "late-model", "--free")
    server.cli(
        "backends", "add", "late", "--url", mocks["a"].url, "--models", "late-model", "--kind", "llamacpp"
    )
    listed = {b["name"]: b for b in server.cli_json("backends", "list")}
    assert listed["late"]["source"] == "registered" and listed["a"]["source"] == "config"
    body = {"model": "late-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    auth = {"Authorization": f"Bearer {secret}"}

    def served() -> bool:
        r = httpx.post(server.base_url + "/v1/chat/completions", json=body, headers=auth, timeout=10)
        return r.status_code == 200 and _backend(server, r) == "late"

    wait_until(served, 10, 0.2, "the registered backend serving")
    dup = server.cli("backends", "add", "late", "--url", mocks["a"].url, "--models", "x", check=False)
    assert dup.returncode == 2 and "already exists" in dup.stderr
    bad = server.cli(
        "backends",
        "add",
        "elsewhere",
        "--url",
        mocks["a"].url,
        "--models",
        "x",
        "--zone",
        "nowhere",
        check=False,
    )
    assert bad.returncode == 2 and "no zone" in bad.stderr
    server.cli("backends", "remove", "late")
    wait_until(
        lambda: (
            httpx.post(server.base_url + "/v1/chat/completions", json=body, headers=auth).status_code == 404
        ),
        10,
        0.2,
        "the removed backend gone",
    )


def test_an_engine_busy_with_other_clients_gives_way(fleet) -> None:
    """Routing reads the engines' own load (/metrics): an engine busy with requests from
    elsewhere loses even the conversations that prefer it."""
    server, mocks, secret = fleet
    prefers_b = next(
        c for c in (f"topic {i}" for i in range(50)) if _backend(server, _ask(server, secret, c)) == "b"
    )
    hang = {"model": "fleet-model", "messages": [{"role": "user", "content": "x"}], "mock_scenario": "hang"}

    def occupy() -> None:
        with contextlib.suppress(httpx.HTTPError):  # ends when the test no longer needs it
            httpx.post(mocks["b"].url + "/v1/chat/completions", json=hang, timeout=8)

    workers = [threading.Thread(target=occupy, daemon=True) for _ in range(6)]
    for w in workers:
        w.start()
    wait_until(lambda: _backend(server, _ask(server, secret, prefers_b)) == "a", 10, 0.3, "b gives way")
