"""A device's quotas in shared mode (several gateway processes): its local day and month, its
streams at once and its requests per minute are decided in the same admission as the maker's
money, on the shared state (the database, or Redis with the database as the ledger), exactly as
every other limit is.

- the rule: `_decide`'s device part, on a view (no store);
- the stores: the real `Charging` over the real stores, each `process()` another gateway
  process (SQLite / PostgreSQL, with the state in the database or in a real Redis);
- live: two `tokenport serve` processes on one PostgreSQL (and Redis), a device activated by
  challenge and response, the official `openai` SDK.
"""

from __future__ import annotations

import asyncio
import csv
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from types import SimpleNamespace

import httpx
import openai
import pytest
from sqlalchemy import Engine, create_engine, func, select, text
from support.admission import HOLD, MAX_OUTPUT, Harness
from support.live import LiveServer, MockProcess, mock_config, two_gateways, wait_until
from support.rows import usage_row

from tokenport.billing.accountant import Accountant
from tokenport.billing.admission import Grant, View
from tokenport.billing.budgets import KeyBudgets
from tokenport.billing.ledger import Ledger, Lot, grant_tx
from tokenport.billing.prices import Price, PriceBook
from tokenport.clock import FakeClock
from tokenport.fleets.identity import activation_mac
from tokenport.fleets.quotas import DeviceQuotas, device_ask
from tokenport.fleets.records import ACTIVE, Device, Fleet, Product
from tokenport.gateway.charging import Charging, _decide, charging_for
from tokenport.gateway.context import RequestContext
from tokenport.gateway.device_gate import REMAINING_HEADER, DeviceGate
from tokenport.gateway.devices import DeviceEntry
from tokenport.gateway.errors import ApiError
from tokenport.gateway.metrics import Metrics
from tokenport.gateway.ratelimit import RateLimiter
from tokenport.gateway.relay import Outcome
from tokenport.gateway.request import ParsedRequest
from tokenport.gateway.settle import Settler
from tokenport.gateway.sse import Counts
from tokenport.store.redis_keys import Keys
from tokenport.store.schema import device_days, device_holds, holds
from tokenport.tenancy.keys import KeyRecord

TZ = "Asia/Tokyo"
SERIAL = "TOY-0001"


def ask(clock: FakeClock, units: int = 100, day: int = 1000, month: int = 5000, **kw):
    return device_ask(SERIAL, units, day, month, clock.now(), TZ, **kw)


def key() -> KeyRecord:
    return KeyRecord("flt_1", "ten_1", "maker", "overseas", "", None, False)


# --- the rule: `_decide`'s device part ---------------------------------------------------


def decide(view: View, clock: FakeClock, device, amount: int = 0) -> Grant:
    return _decide(view, key(), None, amount, clock.now(), 0, False, device)


def refusal(fn, *args) -> ApiError:
    with pytest.raises(ApiError) as exc:
        fn(*args)
    return exc.value


def test_decide_grants_the_device_hold_with_what_is_left(clock: FakeClock) -> None:
    view = View(device_day_used=300, device_month_used=4500)
    grant = decide(view, clock, ask(clock, units=100))
    assert grant.device_hold == 100 and grant.hold == 0
    assert grant.expires_at == clock.now() + timedelta(minutes=30), "a device hold expires like money's"
    assert grant.device_left == 400  # the month is the tighter: 5000 - 4500 - 100
    assert grant.device_bucket is None  # no rpm on the product
    assert grant.holds


def test_decide_refuses_the_day_then_the_month_with_their_resets(clock: FakeClock) -> None:
    a = ask(clock, units=100)
    err = refusal(decide, View(device_day_used=901, device_month_used=4901), clock, a)
    assert (err.status, err.code, err.type) == (429, "device_quota_exceeded", "insufficient_quota")
    assert err.headers[REMAINING_HEADER] == "99"  # the day's: checked first
    wait = (a.day_resets_at - clock.now()).total_seconds()
    assert int(err.headers["retry-after"]) == int(wait)
    err = refusal(decide, View(device_day_used=0, device_month_used=4901), clock, a)
    assert err.headers[REMAINING_HEADER] == "99"
    assert int(err.headers["retry-after"]) == int((a.month_resets_at - clock.now()).total_seconds())
    assert decide(View(device_day_used=900, device_month_used=4900), clock, a).device_left == 0


def test_decide_counts_streams_and_the_devices_rate(clock: FakeClock) -> None:
    a = ask(clock, concurrency=2, rpm=2)
    err = refusal(decide, View(device_streams=2), clock, a)
    assert (err.status, err.code) == (429, "device_concurrency_exceeded")
    first = decide(View(device_streams=1), clock, a)
    assert first.device_bucket is not None
    second = decide(View(device_bucket=first.device_bucket), clock, a)
    err = refusal(decide, View(device_bucket=second.device_bucket), clock, a)
    assert (err.status, err.code) == (429, "rate_limit_exceeded")
    # the quota comes first: a device out of quota is told so, not to slow down
    err = refusal(
        decide, View(device_day_used=1000, device_streams=2, device_bucket=second.device_bucket), clock, a
    )
    assert err.code == "device_quota_exceeded"


def test_decide_refuses_the_device_before_the_money_and_the_money_holds_nothing_of_the_device(
    clock: FakeClock,
) -> None:
    view = View(device_day_used=1000)  # no lots: the credit would refuse too
    err = refusal(decide, view, clock, ask(clock), 150_000)
    assert err.code == "device_quota_exceeded"
    err = refusal(decide, View(), clock, ask(clock), 150_000)
    assert err.code == "insufficient_quota"  # refused: no grant, so no device hold either


# --- the stores ------------------------------------------------------------------------


@pytest.fixture(params=["database", pytest.param("redis", marks=pytest.mark.redis)])
def h(request, engine: Engine, clock: FakeClock) -> Harness:
    if request.param == "database":
        return Harness(engine, clock)
    return Harness(engine, clock, request.getfixturevalue("redis_url"))


def admit(h: Harness, rid: str, k: KeyRecord, charging: Charging, device, model: str = "m") -> str:
    async def run() -> str:
        try:
            _, _, left = await charging.admit(rid, k, model, MAX_OUTPUT, 100, 1000, h.clock.now(), device)
            return f"ok {left}"
        except ApiError as exc:
            return exc.code or str(exc.status)

    return asyncio.run(run())


def settle(h: Harness, rid: str, k: KeyRecord, device, units: int = 30) -> None:
    """What the settler hands the usage writer for a device's finished request."""
    now = h.clock.now()
    price = h.state.accountant.quote("m", now)
    counts = Counts(prompt=10, completion=20)
    cost, _ = h.charging.settle(rid, k, price, counts, now, now)
    charge = h.charging.charge(rid, k, price, cost, counts, now, now, device.serial)
    row = usage_row(
        rid, h.tenant.id, now, key_id=k.id, cost_nano_usd=cost.nano, device_serial=device.serial,
        product_id="prd_1", device_units=units, device_day=device.day,
    )  # fmt: skip
    h.item = {"usage": row, "tx": None, "charge": charge}
    h.usage.write_settlements([h.item])


def device_holds_of(h: Harness) -> int:
    if h.redis is not None:
        return h.redis.sync.hlen(Keys(h.tenant.id).dholds)
    with h.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(device_holds)).scalar_one()


def money_holds_of(h: Harness) -> int:
    if h.redis is not None:
        return h.redis.sync.hlen(Keys(h.tenant.id).holds)
    with h.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(holds)).scalar_one()


def test_processes_at_once_hold_exactly_what_the_devices_day_allows(h: Harness) -> None:
    """20 processes at once, one request each from one device whose day fits five."""
    h.billing.grant("acme", "1")
    k, device = h.key(), ask(h.clock, units=200)
    processes = [h.process() for _ in range(20)]
    results: list[str] = []
    go = threading.Barrier(20)

    def one(i: int) -> None:
        go.wait()
        results.append(admit(h, f"req_{i}", k, processes[i], device))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    granted = [r for r in results if r.startswith("ok")]
    assert len(granted) == 5 and results.count("device_quota_exceeded") == 15, results
    assert sorted(int(r.split()[1]) for r in granted) == [0, 200, 400, 600, 800]  # what each left
    assert device_holds_of(h) == 5 and h.held() == 5 * HOLD  # each granted request holds both


def test_one_processs_batch_counts_each_devices_hold_in_turn(h: Harness) -> None:
    h.billing.grant("acme", "1")
    k, device, charging = h.key(), ask(h.clock, units=300, concurrency=2), h.process()

    async def storm() -> list[str]:
        async def one(i: int) -> str:
            try:
                await charging.admit(f"req_{i}", k, "m", MAX_OUTPUT, 100, 1000, h.clock.now(), device)
                return "ok"
            except ApiError as exc:
                return exc.code

        return await asyncio.gather(*(one(i) for i in range(6)))

    results = asyncio.run(storm())
    assert results == ["ok", "ok"] + ["device_concurrency_exceeded"] * 4  # in arrival order
    assert device_holds_of(h) == 2


def test_a_devices_requests_per_minute_are_counted_once_across_processes(h: Harness) -> None:
    h.billing.grant("acme", "1")
    k, device = h.key(), ask(h.clock, units=10, rpm=2)
    assert admit(h, "req_1", k, h.process(), device).startswith("ok")
    assert admit(h, "req_2", k, h.process(), device).startswith("ok")
    assert admit(h, "req_3", k, h.process(), device) == "rate_limit_exceeded"
    assert device_holds_of(h) == 2 and h.held() == 2 * HOLD, "the refused one holds nothing"
    h.clock.advance(30)  # a minute refills 2: half a minute, one
    later = device_ask(SERIAL, 10, 1000, 5000, h.clock.now(), TZ, rpm=2)
    assert admit(h, "req_3", k, h.process(), later).startswith("ok")
    assert admit(h, "req_4", k, h.process(), later) == "rate_limit_exceeded"


def test_settlement_counts_the_units_and_releases_the_device_hold(h: Harness) -> None:
    h.billing.grant("acme", "1")
    k, device = h.key(), ask(h.clock, units=400)
    assert admit(h, "req_1", k, h.process(), device) == "ok 600"
    assert admit(h, "req_2", k, h.process(), device) == "ok 200"
    settle(h, "req_1", k, device, units=30)
    assert device_holds_of(h) == 1 and money_holds_of(h) == 1, "only req_1's holds went"
    h.usage.write_settlements([h.item])  # a retried batch: counted once
    with h.engine.connect() as conn:
        counted = conn.execute(select(device_days.c.units).where(device_days.c.serial == SERIAL)).scalar_one()
    assert counted == 30
    # what is left: 1000 - 30 settled - 400 held (req_2) - 400 (this one)
    assert admit(h, "req_3", k, h.process(), device) == "ok 170"
    assert admit(h, "req_4", k, h.process(), device) == "device_quota_exceeded"
    if h.redis is not None:  # the mirror has the device's day and month, as the database says
        mirror = h.redis.sync.hgetall(Keys(h.tenant.id).device(SERIAL))
        assert mirror[f"u:{device.day}".encode()] == b"30" and mirror[f"m:{device.day[:7]}".encode()] == b"30"


def test_a_device_refusal_holds_no_money_and_a_money_refusal_no_device(h: Harness) -> None:
    h.billing.grant("acme", "0.00015")  # one money hold
    k = h.key()
    tight = ask(h.clock, units=2000)  # more than the device's day
    assert admit(h, "req_1", k, h.process(), tight) == "device_quota_exceeded"
    assert h.held() == 0 and money_holds_of(h) == 0 and device_holds_of(h) == 0
    device = ask(h.clock, units=100)
    assert admit(h, "req_2", k, h.process(), device) == "ok 900"
    assert admit(h, "req_3", k, h.process(), device) == "insufficient_quota"
    assert device_holds_of(h) == 1 and h.held() == HOLD, "req_3 left no device hold"


def test_a_redis_restart_loads_the_devices_usage_again(
    engine: Engine, clock: FakeClock, redis_url: str
) -> None:
    """Redis's state lost: the device's day and month are loaded from `device_days` again."""
    h = Harness(engine, clock, redis_url)
    h.billing.grant("acme", "1")
    k, device = h.key(), ask(clock, units=400, month=1100)
    for i in range(2):
        assert admit(h, f"req_{i}", k, h.process(), device).startswith("ok")
        settle(h, f"req_{i}", k, device, units=350)
    assert h.redis is not None
    h.redis.sync.flushdb()  # a restart without persistence
    fresh = h.process()
    assert admit(h, "req_2", k, fresh, device) == "device_quota_exceeded", "700 settled + 400 > 1000"
    assert fresh.fast.device_loads == 1
    clock.advance(24 * 3600)  # the next local day: loaded again, the month carried
    nxt = device_ask(SERIAL, 400, 1000, 1100, clock.now(), TZ)
    assert nxt.day != device.day and nxt.month_first == device.month_first
    assert admit(h, "req_3", k, fresh, nxt) == "ok 0"  # the month's: 1100 - 700 - 400
    assert admit(h, "req_4", k, fresh, nxt) == "device_quota_exceeded"
    assert fresh.fast.device_loads == 2


def test_device_holds_expire_and_are_purged(h: Harness) -> None:
    h.billing.grant("acme", "1")
    k, device = h.key(), ask(h.clock, units=400, concurrency=1)
    assert admit(h, "req_1", k, h.process(), device) == "ok 600"  # and never settled (a crash)
    assert admit(h, "req_2", k, h.process(), device) == "device_concurrency_exceeded"
    h.clock.advance(31 * 60)  # past HOLD_TTL: the device is free again
    later = device_ask(SERIAL, 400, 1000, 5000, h.clock.now(), TZ, concurrency=1)
    assert admit(h, "req_2", k, h.process(), later) == "ok 600"
    h.clock.advance(31 * 60)
    h.shared.purge(h.clock.now())
    if h.redis is not None:
        h.redis.purge(h.clock.now())
    assert device_holds_of(h) == 0 and money_holds_of(h) == 0


def test_a_request_gone_during_admission_leaves_no_device_hold(h: Harness) -> None:
    """No money (a free request) but a device: its hold is released at once, not in 30 minutes."""
    h.billing.grant("acme", "1")
    k, charging = h.key(), h.process()
    device = ask(h.clock, units=100, concurrency=1)

    async def scenario() -> None:
        task = asyncio.create_task(charging.hold("req_gone", k, None, 0, h.clock.now(), device))
        await asyncio.sleep(0)  # queued: its admission runs, and then nobody waits for it
        task.cancel()
        for _ in range(200):
            if device_holds_of(h) == 0 and not charging._queue._tasks:
                break
            await asyncio.sleep(0.01)

    asyncio.run(scenario())
    assert device_holds_of(h) == 0
    assert admit(h, "req_next", k, charging, device).startswith("ok"), "the device's one stream is free"


# --- live: two gateway processes on one PostgreSQL (and Redis) ---------------------------

FREE, PAID = "mock-model", "paid-model"  # the mock answers 10 prompt + 20 completion tokens
UNITS = 30  # what each answer counts against its device


@pytest.fixture(
    scope="module",
    params=[
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("redis", marks=[pytest.mark.postgres, pytest.mark.redis]),
    ],
)
def pair(request, tmp_path_factory, mock_engine: MockProcess) -> Iterator[tuple[LiveServer, LiveServer]]:
    root = tmp_path_factory.mktemp("device-pair")
    pg = request.getfixturevalue("postgres_server")
    url = pg.create_database(f"devices_{request.param}_{int(time.time() * 1000)}")
    cluster: dict = {"shared": True}
    if request.param == "redis":
        cluster["redis_url"] = request.getfixturevalue("redis_server").fresh_url()
    config = {
        **mock_config(mock_engine.url),
        "cluster": cluster,
        "metering": {"flush_interval_ms": 20},  # holds go soon after each answer
        # one deployment: the zones' keys (batch keys sealed, device tokens signed) shared
        "audit": {"keys_dir": str(root / "keys")},
    }
    env = {"TOKENPORT_DATABASE_URL": url}
    yield from two_gateways(root, config, env, request.param)


class Toy:
    """A maker with one product (as `tokenport products create` is given it) and one device,
    activated by challenge and response; the device's token works on either process."""

    def __init__(
        self, gw: LiveServer, name: str, daily: int, *options: str, credit: str | None = "50"
    ) -> None:
        self.gw, self.name, self.serial = gw, name, f"{name.upper()}-0001"
        gw.cli("tenants", "create", name)
        if credit:
            gw.cli("credits", "grant", name, credit)
        fleet = f"{name}-fleet"
        gw.cli("fleets", "create", name, fleet)
        gw.cli(
            "products", "create", fleet, "TOY", "--entitlement-days", "365", "--daily-tokens", str(daily),
            "--monthly-tokens", "10000000", "--models", f"{FREE},{PAID}", "--max-output", "50",
            "--reset-tz", TZ, *options,
        )  # fmt: skip
        folder = gw.home / name
        folder.mkdir()
        (folder / "serials.csv").write_text(f"serial\n{self.serial}\n")
        gw.cli(
            "devices", "import", fleet, "--sku", "TOY", "--batch", "B1", "--csv", str(folder / "serials.csv"),
            "--secrets-out", str(folder / "secrets.csv"),
        )  # fmt: skip
        with (folder / "secrets.csv").open(newline="") as f:
            secret = bytes.fromhex(list(csv.reader(f))[1][1])
        http = httpx.Client(base_url=gw.base_url, timeout=10)
        nonce = http.post("/v1/devices/challenge", json={"serial": self.serial}).json()["nonce"]
        mac = activation_mac(secret, self.serial, nonce)
        r = http.post("/v1/devices/activate", json={"serial": self.serial, "nonce": nonce, "mac": mac})
        assert r.status_code == 200, r.text
        self.token = r.json()["device_token"]

    def chat(self, server: LiveServer, model: str = FREE, delay_ms: int = 0) -> httpx.Response:
        return httpx.post(
            f"{server.base_url}/v1/chat/completions",
            headers={"authorization": f"Bearer {self.token}"},
            json={
                "model": model,
                "messages": [{"role": "user", "content": "hi"}],
                "stream": True,
                "mock_chunk_delay_ms": delay_ms,
            },
            timeout=60,
        )

    def records(self) -> list[dict]:
        return self.gw.usage(self.name)["data"]


def _left(r: httpx.Response) -> int:
    return int(r.headers[REMAINING_HEADER])


def _db(server: LiveServer) -> Engine:
    return create_engine(
        server.env["TOKENPORT_DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://")
    )


def _counted(server: LiveServer, serial: str) -> int:
    """What the quota counted: the device's `device_days` (the usage writer's counter)."""
    db = _db(server)
    try:
        with db.connect() as conn:
            q = text("SELECT COALESCE(SUM(units), 0) FROM device_days WHERE serial = :s")
            return int(conn.execute(q, {"s": serial}).scalar_one())
    finally:
        db.dispose()


def _device_holds(server: LiveServer, serial: str) -> int:
    """The device's holds left in the shared state (the database's, or Redis's)."""
    if server.extra.get("mode") == "redis":
        import redis as redis_client

        url = _server_redis_url(server)
        r = redis_client.Redis.from_url(url)
        try:
            return sum(
                1
                for k in r.scan_iter(match="tp:{*}:dholds")
                for v in r.hvals(k)
                if v.startswith(serial.encode())
            )
        finally:
            r.close()
    db = _db(server)
    try:
        with db.connect() as conn:
            q = text("SELECT COUNT(*) FROM device_holds WHERE serial = :s")
            return int(conn.execute(q, {"s": serial}).scalar_one())
    finally:
        db.dispose()


def _server_redis_url(server: LiveServer) -> str:
    toml = (server.home / "tokenport.toml").read_text()
    return next(line.split("=", 1)[1].strip().strip('"') for line in toml.splitlines() if "redis_url" in line)


def test_fifty_streams_from_one_device_never_exceed_its_daily_quota(pair, mock_engine: MockProcess):
    """50 streams at once from one device (its token), half to each process; each client goes
    on while it is admitted. The device's day is counted once for both processes: never more
    than its quota is settled, the records' units are what the quota counted, and afterwards
    both processes give the same remaining tokens."""
    a, b = pair
    quota = 3000
    toy = Toy(a, f"storm-{a.extra['mode']}", quota)
    before = mock_engine.stats()["requests"]
    probe = toy.chat(a)
    assert probe.status_code == 200, probe.text
    hold = quota - _left(probe)  # the most one request can count (its prompt's bound + 50 + slack)
    assert 50 < hold < quota // 4

    sent, granted, refused = [1], [1], []
    lock = threading.Lock()
    go = threading.Barrier(50)

    def client(i: int) -> None:
        server, misses = (a, b)[i % 2], 0
        go.wait()
        for _ in range(200):
            r = toy.chat(server, delay_ms=5)
            with lock:
                sent[0] += 1
                if r.status_code == 200:
                    granted[0] += 1
                else:
                    refused.append((r.status_code, r.json()["error"]["code"], _left(r)))
            if r.status_code == 200:
                misses = 0
                continue
            misses += 1  # refused: perhaps only while others hold, so again a little later
            if misses == 3:
                return
            time.sleep(0.2)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert {(status, code) for status, code, _ in refused} == {(429, "device_quota_exceeded")}
    assert all(0 <= left < quota for _, _, left in refused)

    def settled() -> list[dict] | None:
        rows = toy.records()
        return rows if len(rows) == sent[0] else None

    rows = wait_until(settled, 30, 0.2, "every request's usage record")
    used = sum(r["device_units"] or 0 for r in rows)
    assert used == UNITS * granted[0] <= quota, "the device's day was never exceeded"
    assert all(r["device_units"] is None for r in rows if r["status"] != 200)
    assert mock_engine.stats()["requests"] - before == granted[0], "refused requests never reached the engine"
    assert _counted(a, toy.serial) == used, "the settled units are what the quota counted"

    # whatever is left that fits one more hold, one request at a time (nothing else in flight)
    def idle(used: int) -> bool:
        return _counted(a, toy.serial) == used and _device_holds(a, toy.serial) == 0

    wait_until(lambda: idle(used), 10, 0.05, "every hold released")
    server = a
    while toy.chat(server).status_code == 200:
        used += UNITS
        wait_until(lambda used=used: idle(used), 10, 0.05, "the request settled")
        server = b if server is a else a
    assert quota - hold < used <= quota, "the quota was used up, never more"
    print(
        f"{a.extra['mode']}: {granted[0]} of {sent[0]} requests served, {used} of {quota} units, "
        f"{len(refused)} refusals (a hold: {hold} units)"
    )
    for server in (a, b):  # both processes: the same remaining, once nothing is held
        wait_until(lambda server=server: _left(toy.chat(server)) == quota - used, 5, 0.05, "remaining agrees")
        r = toy.chat(server)
        assert (r.status_code, r.json()["error"]["code"]) == (429, "device_quota_exceeded")
        assert _left(r) == quota - used
    assert _device_holds(a, toy.serial) == 0


def test_a_devices_streams_at_once_are_counted_across_processes(pair):
    a, b = pair
    toy = Toy(a, f"streams-{a.extra['mode']}", 100_000, "--concurrency", "2")
    started = [threading.Event(), threading.Event()]
    results: list[int] = []

    def slow(server: LiveServer, event: threading.Event) -> None:
        client = openai.OpenAI(base_url=server.base_url + "/v1", api_key=toy.token, max_retries=0)
        stream = client.chat.completions.create(
            model=FREE, messages=[{"role": "user", "content": "hi"}], stream=True,
            extra_body={"mock_chunk_delay_ms": 150},
        )  # fmt: skip
        for n, _ in enumerate(stream):
            if n == 0:
                event.set()
        results.append(200)

    threads = [threading.Thread(target=slow, args=(s, e)) for s, e in zip((a, b), started, strict=True)]
    for t in threads:
        t.start()
    try:
        for e in started:
            assert e.wait(20), "both streams under way"
        for server in (a, b):  # a third, on either process
            r = toy.chat(server)
            assert (r.status_code, r.json()["error"]["code"]) == (429, "device_concurrency_exceeded"), r.text
            assert r.headers["retry-after"] == "1"
    finally:
        for t in threads:
            t.join(60)
    assert results == [200, 200]
    wait_until(lambda: toy.chat(b).status_code == 200, 5, 0.05, "a stream free again")


def test_a_device_refused_holds_no_money(pair):
    a, b = pair
    toy = Toy(a, f"tiny-{a.extra['mode']}", 100)  # less than any request's hold
    _, key = a.new_key(toy.name)
    before = a.cli_json("balance", toy.name)["available_nano_usd"]
    for server in (a, b, a, b):
        r = toy.chat(server, model=PAID)
        assert (r.status_code, r.json()["error"]["code"]) == (429, "device_quota_exceeded"), r.text
        assert _left(r) == 100
        for other in (a, b):
            balance = httpx.get(
                other.base_url + "/v1/account/balance", headers={"authorization": f"Bearer {key}"}, timeout=10
            ).json()
            assert balance["held_usd"] == "0.000000000"
    assert a.cli_json("balance", toy.name)["available_nano_usd"] == before
    assert _device_holds(a, toy.serial) == 0


def test_the_makers_money_refused_leaves_no_device_hold(pair, mock_engine: MockProcess):
    a, b = pair
    toy = Toy(a, f"broke-{a.extra['mode']}", 100_000, "--concurrency", "1", credit=None)
    before = mock_engine.stats()["requests"]
    r = toy.chat(a, model=PAID)
    assert (r.status_code, r.json()["error"]["code"]) == (429, "insufficient_quota"), r.text
    assert r.headers["x-should-retry"] == "false"
    assert mock_engine.stats()["requests"] == before
    assert _device_holds(a, toy.serial) == 0
    # its one stream is free and nothing of the refused request is counted: on the other process
    free = toy.chat(b)
    assert free.status_code == 200, free.text
    hold = 100_000 - _left(free)
    assert 50 < hold < 2000


class _Writer:
    def submit(self, item: dict) -> None:
        raise AssertionError("a failed settlement hands the writer nothing")


def _entry(h: Harness) -> DeviceEntry:
    product = Product("prd_1", "flt_1", "TOY", 365, 1000, 5000, concurrency=1, reset_tz=TZ)
    fleet = Fleet("flt_1", h.tenant.id, "toys", "overseas")
    device = Device(
        SERIAL, fleet.id, product.id, "bat_1", ACTIVE, h.clock.now(), h.clock.now() + timedelta(days=9)
    )
    return DeviceEntry(device, product, fleet, h.key())


def test_a_failed_settlement_releases_the_device_hold(h: Harness) -> None:
    """A settlement that fails (a bug) drops the device's hold at once, as it does the money's."""
    h.billing.grant("acme", "1")
    k, charging, entry = h.key(), h.process(), _entry(h)
    device = ask(h.clock, units=100, concurrency=1)
    now = h.clock.now()

    async def admit_then_fail() -> None:
        price, plan, left = await charging.admit("req_s", k, "m", MAX_OUTPUT, 100, 1000, now, device)
        assert left == 900 and device_holds_of(h) == 1
        settler = Settler(_Writer(), Metrics(), h.clock, charging, RateLimiter(h.clock, local=False))
        ctx = RequestContext("req_s", "chat", now, h.clock.monotonic(), key=k, price=price, model="m")
        ctx.device, ctx.device_held, ctx.plan = entry, True, plan
        out = Outcome(status=200, counts=Counts(prompt=-10, completion=5), usage_source="engine")
        assert settler.settle(ctx, out) is None
        for _ in range(100):  # released in the background, on this loop
            if not charging._releasing:
                break
            await asyncio.sleep(0.02)

    asyncio.run(admit_then_fail())
    assert device_holds_of(h) == 0 and h.held() == 0
    assert admit(h, "req_next", k, charging, device) == "ok 900", "the device's one stream is free"


def test_one_process_holds_the_device_with_the_money_or_not_at_all(clock: FakeClock) -> None:
    """The same rule in one process (`LocalCharging`, in memory): a money refusal leaves no device
    hold; a failed settlement releases it; the device step sees the same streams."""
    ledger = Ledger()
    lot = Lot("lot", "ten_1", 150_000, False, clock.now() - timedelta(days=1), None)
    ledger.add_lot(lot)
    ledger.post(grant_tx("g", lot))
    price = Price("m", clock.now() - timedelta(days=1), input=300_000, output=1_200_000, cached=30_000)
    state = SimpleNamespace(
        accountant=Accountant(ledger, PriceBook([price])),
        budgets=KeyBudgets(),
        plan_for=lambda tenant_id: None,
    )
    quotas = DeviceQuotas()
    charging = charging_for(state, quotas=quotas)
    gate = DeviceGate(quotas, RateLimiter(clock), clock)
    device, k = ask(clock, units=100, concurrency=1), key()

    async def run(rid: str) -> str:
        try:
            _, _, left = await charging.admit(rid, k, "m", MAX_OUTPUT, 100, 1000, clock.now(), device)
            return f"ok {left}"
        except ApiError as exc:
            return exc.code

    assert asyncio.run(run("req_1")) == "ok 900"
    assert quotas.streams(SERIAL) == 1
    assert asyncio.run(run("req_2")) == "device_concurrency_exceeded"
    charging.release("req_1", k, clock.now())
    charging.release_device("req_1", k, SERIAL)
    assert quotas.streams(SERIAL) == 0 and charging.held("ten_1", clock.now()) == 0
    assert asyncio.run(run("req_3")) == "ok 900"
    assert asyncio.run(run("req_4")) == "device_concurrency_exceeded"  # the device step agrees:
    refused = refusal(gate.check, _local_entry(clock), _chat(), clock.now())
    assert refused.code == "device_concurrency_exceeded"
    charging.settle_device("req_3", SERIAL, 30)
    assert asyncio.run(run("req_5")) == "insufficient_quota"  # the credit: one hold, still held
    assert quotas.streams(SERIAL) == 0, "the money refused: no device hold"
    assert quotas.left(device) == 1000 - 30  # req_3's units settled, nothing held


def _local_entry(clock: FakeClock) -> DeviceEntry:
    product = Product("prd_1", "flt_1", "TOY", 365, 1000, 5000, concurrency=1, reset_tz=TZ)
    fleet = Fleet("flt_1", "ten_1", "toys", "overseas")
    device = Device(
        SERIAL, fleet.id, product.id, "bat_1", ACTIVE, clock.now(), clock.now() + timedelta(days=9)
    )
    return DeviceEntry(device, product, fleet, key())


def _chat() -> ParsedRequest:
    return ParsedRequest("chat", "m", True, True, {"model": "m", "messages": []})
