"""Two gateway processes on one database, in shared mode: credit, key budgets, rate limits and
plan windows hold across both (on PostgreSQL, and on SQLite for processes on one machine), with
the admission state in the database or in a real Redis (`redis`: PostgreSQL for the ledger,
Redis for holds, rate limits, plan windows and the change broadcast)."""

from __future__ import annotations

import itertools
import json
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator

import openai
import pytest
from support.live import TOKENPORT, LiveServer, mock_config, two_gateways, wait_until

MESSAGES = [{"role": "user", "content": "hi"}]
COST_NANO = 27_000  # the mock's 10 prompt + 20 completion tokens at $0.30 / $1.20 per M


@pytest.fixture(
    scope="module",
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("redis", marks=[pytest.mark.postgres, pytest.mark.redis]),
    ],
)
def pair(request, tmp_path_factory, mock_engine) -> Iterator[tuple[LiveServer, LiveServer]]:
    root = tmp_path_factory.mktemp("shared")
    if request.param == "sqlite":
        url = f"sqlite:///{root}/shared.db"
    else:
        url = request.getfixturevalue("postgres_server").create_database(f"shared_{int(time.time() * 1000)}")
    cluster: dict = {"shared": True}
    metering: dict = {}
    if request.param == "redis":
        cluster["redis_url"] = request.getfixturevalue("redis_server").fresh_url()
        # Changes must arrive by the broadcast: the feed's own poll is too slow for these tests.
        metering["key_refresh_ms"] = 10_000
    # One deployment: one database, and the zones' audit signing keys shared, like a TLS key.
    config = {
        **mock_config(mock_engine.url),
        "cluster": cluster,
        "metering": metering,
        "audit": {"keys_dir": str(root / "keys")},
        "energy": {
            "window_s": 1,
            "settle_delay_s": 2,
            "nodes": [
                {"name": "box", "source": "model", "idle_w": 10, "dynamic_w": 90, "backends": ["mock"]}
            ],
        },
    }
    env = {"TOKENPORT_DATABASE_URL": url}
    yield from two_gateways(root, config, env, request.param)


def _available(server: LiveServer, tenant: str) -> int:
    return server.cli_json("balance", tenant)["available_nano_usd"]


def _key(a: LiveServer, b: LiveServer, tenant: str, *extra: str) -> str:
    if not any(t["name"] == tenant for t in a.cli_json("tenants", "list")):
        a.cli("tenants", "create", tenant)
    secret = a.cli_json("keys", "create", "--tenant", tenant, *extra)["key"]
    for server in (a, b):
        server.wait_key_accepted(secret)
    return secret


def _storm(servers: list[LiveServer], secret: str, n: int, retries: int = 2, **kwargs) -> list[str]:
    """n requests at once, alternating between the servers; each outcome: 'ok' or the error code.
    The SDK's default retries are on unless `retries` says otherwise."""
    clients = [
        openai.OpenAI(base_url=s.base_url + "/v1", api_key=secret, max_retries=retries) for s in servers
    ]
    results: list[str] = []
    lock = threading.Lock()
    go = threading.Barrier(n)

    def one(i: int) -> None:
        go.wait()
        try:
            stream = clients[i % len(clients)].chat.completions.create(
                model="paid-model", messages=MESSAGES, max_tokens=20, stream=True, **kwargs
            )
            outcome = "ok" if list(stream) else "empty"
        except openai.RateLimitError as exc:
            outcome = exc.code or "429"
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == n
    return results


def _database_holds(server: LiveServer) -> int:
    from sqlalchemy import create_engine, text

    db = create_engine(server.env["TOKENPORT_DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://"))
    try:
        with db.connect() as conn:
            return conn.execute(text("SELECT COUNT(*) FROM holds")).scalar_one()
    finally:
        db.dispose()


def _verify(server: LiveServer) -> None:
    res = subprocess.run([TOKENPORT, "ledger", "verify"], env=server.env, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_two_processes_never_overdraw_a_small_balance(pair, mock_engine):
    """50 concurrent streams over two processes on a balance that covers about 10 of them."""
    a, b = pair
    secret = _key(a, b, "two-procs")
    a.cli("credits", "grant", "two-procs", "0.0006")  # each request holds ~60 micro-USD
    before = mock_engine.stats()["requests"]

    # Slow streams (1 s): every admission happens while the admitted ones are still running.
    results = _storm([a, b], secret, 50, extra_body={"mock_chunk_delay_ms": 50})

    ok = results.count("ok")
    assert results.count("insufficient_quota") == 50 - ok, results
    assert 1 <= ok <= 10, results  # a hold is the most a request can cost: at most 600 / 60 fit
    assert mock_engine.stats()["requests"] - before == ok, "refused requests never reached the engine"
    wait_until(lambda: a.usage("two-procs")["totals"]["requests"] == 50, 5, 0.1, "records")
    usage = a.usage("two-procs")
    assert usage["totals"]["requests"] == 50, "exactly one attempt per refused request"
    charged = sum(r["cost_nano_usd"] or 0 for r in usage["data"])
    assert charged == ok * COST_NANO
    assert _available(a, "two-procs") == 600_000 - charged >= 0  # all of it from the credit
    _verify(a)


def test_money_held_on_one_process_is_seen_by_the_other(pair):
    a, b = pair
    secret = _key(a, b, "seen-held")
    a.cli("credits", "grant", "seen-held", "1")

    def held() -> str:
        req = urllib.request.Request(
            b.base_url + "/v1/account/balance", headers={"Authorization": f"Bearer {secret}"}
        )
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read())["held_usd"]

    client = openai.OpenAI(base_url=a.base_url + "/v1", api_key=secret)
    slow = threading.Thread(
        target=lambda: list(
            client.chat.completions.create(
                model="paid-model",
                messages=MESSAGES,
                max_tokens=20,
                stream=True,
                extra_body={"mock_chunk_delay_ms": 100},
            )
        )
    )
    slow.start()
    try:
        assert wait_until(lambda: held() != "0.000000000", 2, 0.02, "the hold on the other process")
        if a.extra["mode"] == "redis":  # the hold is in Redis only: admission made no database write
            assert _database_holds(a) == 0
    finally:
        slow.join(30)
    wait_until(lambda: held() == "0.000000000", 3, 0.05, "the hold to be released")


def test_a_key_budget_holds_across_processes(pair):
    a, b = pair
    # Each request holds ~60 micro-USD of the key's budget, so $0.0003 admits at most 5 at once.
    secret = _key(a, b, "budget-pair", "--budget-usd", "0.0003", "--budget-period", "day")
    a.cli("credits", "grant", "budget-pair", "1")

    # Slow streams: every admission happens while the admitted ones are still running.
    results = _storm([a, b], secret, 20, extra_body={"mock_chunk_delay_ms": 50})

    ok = results.count("ok")
    assert results.count("budget_exceeded") == 20 - ok, results
    assert 1 <= ok <= 5, results
    wait_until(lambda: a.usage("budget-pair")["totals"]["requests"] == 20, 5, 0.1, "records")
    spent = sum(r["cost_nano_usd"] or 0 for r in a.usage("budget-pair")["data"])
    assert spent == ok * COST_NANO <= 300_000
    _verify(a)


def test_requests_per_minute_are_counted_once_across_processes(pair):
    a, b = pair
    secret = _key(a, b, "rpm-pair", "--rpm", "6")
    a.cli("credits", "grant", "rpm-pair", "1")

    # No retries: the SDK would wait out Retry-After (10 s) and find the bucket refilled.
    results = _storm([a, b], secret, 16, retries=0)  # within a second: at most one request refills

    ok = results.count("ok")
    assert results.count("rate_limit_exceeded") == 16 - ok, results
    assert 6 <= ok <= 7, results  # one process alone would let 6 through, two would let 12


def test_a_plan_window_fills_from_both_processes(pair):
    a, b = pair
    a.cli(
        *[
            "plans",
            "create",
            "pair-plan",
            "--fee-usd",
            "10",
            "--unit",
            "requests",
            "--five-hour",
            "4",
            "--weekly",
            "100",
        ]
    )
    secret = _key(a, b, "plan-pair")
    a.cli("plans", "assign", "plan-pair", "pair-plan")
    clients = [openai.OpenAI(base_url=s.base_url + "/v1", api_key=secret, max_retries=0) for s in (a, b)]

    def send(client) -> str:
        try:
            client.chat.completions.create(model="paid-model", messages=MESSAGES, max_tokens=20)
            return "ok"
        except openai.RateLimitError as exc:
            return exc.code or "429"

    def plan_units() -> int:
        return sum(r["plan_units"] or 0 for r in a.usage("plan-pair")["data"])

    for i in range(4):  # alternating; no credit at all, so until the plan is known: insufficient_quota
        client = clients[i % 2]
        outcome = wait_until(lambda c=client: (o := send(c)) != "insufficient_quota" and o, 2, 0.05, "plan")
        assert outcome == "ok"
        wait_until(lambda n=i + 1: plan_units() == n, 5, 0.05, "the plan units")
    for client in clients:  # each process sees all four, whichever served them
        with pytest.raises(openai.RateLimitError) as exc:
            client.chat.completions.create(model="paid-model", messages=MESSAGES, max_tokens=20)
        assert exc.value.code == "plan_quota_exceeded"
        assert exc.value.response.headers["x-ratelimit-remaining-plan"] == "0"
        assert int(exc.value.response.headers["retry-after"]) > 4 * 3600


def test_a_node_is_metered_once_for_both_processes(pair) -> None:
    """One process holds the node's lease and allocates its windows to the requests of both,
    from their usage records: no window twice, every request's share in, nothing lost."""
    from sqlalchemy import create_engine, text

    a, b = pair
    secret = _key(a, b, "energy-shared")
    ids = []
    for i in range(6):
        server = (a, b)[i % 2]
        r = urllib.request.Request(
            server.base_url + "/v1/chat/completions",
            data=json.dumps({"model": "mock-model", "messages": MESSAGES, "max_tokens": 5}).encode(),
            headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(r, timeout=10) as resp:
            ids.append(resp.headers["x-request-id"])
        time.sleep(0.3)
    db = create_engine(a.env["TOKENPORT_DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://"))

    def shared_out() -> bool:
        with db.connect() as conn:
            got = set(conn.execute(text("SELECT DISTINCT request_id FROM energy_shares")).scalars())
        return set(ids) <= got

    try:
        wait_until(shared_out, 20, 0.3, "both processes' requests allocated")
        with db.connect() as conn:
            windows = conn.execute(
                text(
                    "SELECT id, started_at, ended_at, energy_mj, idle_mj, unattributed_mj FROM energy_windows"
                    " WHERE node = 'box' ORDER BY started_at"
                )
            ).all()
            for w in windows:
                shared = conn.execute(
                    text(
                        "SELECT COALESCE(SUM(static_mj + dynamic_mj), 0) FROM energy_shares"
                        " WHERE window_id = :w"
                    ),
                    {"w": w.id},
                ).scalar_one()
                assert shared + w.idle_mj + w.unattributed_mj == w.energy_mj
            holders = conn.execute(text("SELECT COUNT(*) FROM energy_leases WHERE node = 'box'")).scalar_one()
        assert holders == 1
        for before, after in itertools.pairwise(windows):
            assert after.started_at >= before.ended_at, "a window metered twice"
    finally:
        db.dispose()


def test_a_key_revoked_on_one_process_is_refused_by_the_other_within_a_second(pair) -> None:
    from support.live import ADMIN_TOKEN

    a, b = pair
    secret = _key(a, b, "revoked-pair")
    key_id = next(k["id"] for k in a.cli_json("keys", "list", "--tenant", "revoked-pair"))
    req = urllib.request.Request(
        f"{a.base_url}/admin/v1/keys/{key_id}/revoke",
        data=b"{}",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"},
        method="POST",
    )
    urllib.request.urlopen(req, timeout=5).read()
    revoked_at = time.monotonic()
    wait_until(lambda: b.key_status(secret) == 403, 1.0, 0.02, "the other process refusing the key")
    assert time.monotonic() - revoked_at < 1.0
