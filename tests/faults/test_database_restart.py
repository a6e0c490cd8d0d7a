"""PostgreSQL and Redis restarted under load in shared mode: while one is down, admission answers
503 at once (no request hangs, nothing is charged); when it is back the gateway recovers by
itself; every answer given has its usage record, none twice, and the money adds up."""

from __future__ import annotations

import time
from collections import Counter

import pytest
from support.live import mock_config, start_server, wait_until
from support.load import Load
from support.postgres import start_postgres
from support.redis import start_redis

WORKERS = 8
GRANT_USD = 1000
pytestmark = pytest.mark.postgres


def _check(server, load: Load, down: float, up: float) -> str:
    statuses = Counter((a.status, a.code) for a in load.answers)
    during = [a for a in load.answers if down + 0.5 < a.at < up]
    assert during and {a.status for a in during} == {503}, Counter(a.status for a in during)
    assert {a.code for a in during} == {"admission_unavailable"}
    last = max(a.at for a in load.answers)
    settled_again = [a.status for a in load.answers if a.at > last - 1]
    assert settled_again and set(settled_again) == {200}, f"not recovered: {Counter(settled_again)}"
    answered = {a.request_id for a in load.answers}
    ids: set[str] = set()

    def written() -> bool:
        ids.clear()
        ids.update(r["request_id"] for r in server.usage("restart")["data"])
        return answered <= ids

    wait_until(written, 60, 0.5, "a usage record for every answer")
    rows = server.usage("restart")["data"]
    assert len(rows) == len(ids), "a record written twice"
    by_id = {r["request_id"]: r for r in rows}
    for a in load.answers:
        record = by_id[a.request_id]
        if a.whole:
            assert record["status"] == 200 and record["cost_nano_usd"] > 0
        elif a.status == 503:
            assert record["status"] == 503 and not record["cost_nano_usd"]
    charged = sum(r["cost_nano_usd"] or 0 for r in rows)
    assert _balance(server) == GRANT_USD * 10**9 - charged
    server.verify_ledger()
    whole = sum(a.whole for a in load.answers)
    return f"{whole} answers billed, {statuses[(503, 'admission_unavailable')]} refused with 503 while down"


def _restart_under_load(server, crash, restart) -> tuple[Load, float, float]:
    """Load on the server; `crash` the service after 2 s, `restart` it 4 s later; 2 s more."""
    _, key = server.new_key("restart")
    server.cli("credits", "grant", "restart", str(GRANT_USD))
    server.wait_key_accepted(key, timeout=5)
    wait_until(lambda: _balance(server) == GRANT_USD * 10**9, 10, 0.1, "the grant")
    with Load(server.base_url + "/v1/chat/completions", key, WORKERS) as load:
        time.sleep(2)
        down = time.monotonic()
        crash()
        time.sleep(4)
        up = time.monotonic()
        restart()
        wait_until(lambda: any(a.status == 200 for a in load.since(up)), 30, 0.2, "recovery")
        time.sleep(2)
    return load, down, up


def test_postgresql_restarted_under_load(tmp_path, mock_engine):
    pg = start_postgres(tmp_path / "pg")
    try:
        url = pg.create_database("restart")
        config = {**mock_config(mock_engine.url), "cluster": {"shared": True}}
        server = start_server(tmp_path / "home", config, {"TOKENPORT_DATABASE_URL": url})
        load, down, up = _restart_under_load(server, pg.crash, pg.restart)
        print("PostgreSQL restarted under load:", _check(server, load, down, up))
        assert server.stop() == 0
    finally:
        pg.stop()


@pytest.mark.redis
def test_redis_restarted_under_load(tmp_path, mock_engine, postgres_server):
    """Admission state in Redis, lost with it (no persistence): rebuilt from the database."""
    redis_server = start_redis(tmp_path / "redis")
    try:
        url = postgres_server.create_database(f"redis_restart_{int(time.time() * 1000)}")
        cluster = {"shared": True, "redis_url": redis_server.url + "/1"}
        config = {**mock_config(mock_engine.url), "cluster": cluster}
        server = start_server(tmp_path / "home", config, {"TOKENPORT_DATABASE_URL": url})
        load, down, up = _restart_under_load(server, redis_server.crash, redis_server.restart)
        print("Redis restarted under load:", _check(server, load, down, up))
        assert server.stop() == 0
    finally:
        redis_server.stop()


def _balance(server) -> int:
    return server.cli_json("balance", "restart")["available_nano_usd"]
