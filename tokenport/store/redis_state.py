"""Admission state in Redis (shared mode with `[cluster] redis_url`): the fast path.

PostgreSQL stays the ledger. Redis holds what admission reads, so that an admission is a few
Redis round trips and no database transaction:

- the holds of requests in flight and each key's requests-per-minute bucket: in Redis only;
- a mirror of the database's counters: the credit lots' balances, each key's spend in its budget
  periods, the plan units per minute and each key's tokens per second (tokens per minute);
- for a fleet's devices: their quota holds and rate buckets (Redis only), and a mirror of each
  device's `device_days` for its local day and month, loaded on the device's first request of a
  local day (a load per device, not per tenant: a maker may have a million devices).

The mirror is written with absolute values read from the database under the tenant's lock (the
usage writer's transaction, or a load), so it is never ahead of or behind the database by more
than a transaction that is committing, and a retried write changes nothing. A settlement writes
the lots' new balances before its commit and deletes the holds after it: in between, a charge
is counted twice (held and spent), never zero times.

Admission reads a tenant's state and its version in one script, decides each request with the
same rules as every other mode (`gateway/charging.py`), and writes the holds and buckets in a
second script only if the version has not moved (every writer of the tenant's state bumps it);
otherwise it reads and decides again. A tenant not in Redis yet is loaded first, and so is a
device (its day) not in Redis yet; state lost with Redis is loaded again the same way.

The keys and their encodings: `redis_keys.py`; the mirror's reads of the database:
`redis_mirror.py`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime

import orjson
import redis
import redis.asyncio
from redis.client import Pipeline
from sqlalchemy import Connection, Engine

from tokenport.billing.admission import Ask, Charge, Grant, Unavailable, View
from tokenport.billing.budgets import period_start
from tokenport.billing.ledger import Lot
from tokenport.billing.plans import SEVEN_DAYS, minute_of
from tokenport.store.billing import lock_tenants
from tokenport.store.redis_keys import (
    DEVICE_RPM_TTL_S,
    PLAN_TTL_S,
    TOKENS_TTL_S,
    Keys,
    device_fields,
    device_hold_value,
    from_us,
    lot_value,
    parse_device_hold,
    spend_field,
    ts,
    us,
)
from tokenport.store.redis_mirror import (
    device_usage,
    lots_of,
    plan_of,
    read_tenant,
    spend_of,
    tokens_of,
    write_device,
    write_mirror,
)

log = logging.getLogger("tokenport.redis")

Decide = Callable[[View], Grant]
TRIES = 50  # optimistic writes before giving up; each retry means another process wrote the tenant


class Busy(Unavailable):
    """A tenant's state kept changing between admission's read and its write."""


# Admission's read: the version and the keys the batch needs (ARGV[1]: a flag for each, in
# `Keys.read` order after the version and the loaded flag, then two per device: 0 skip, 1 a hash,
# 2 a string), in one round trip, from one instant.
READ = """
local out = {redis.call('GET', KEYS[1]) or false, redis.call('GET', KEYS[2]) or false}
for i = 3, #KEYS do
    local flag = string.sub(ARGV[1], i - 2, i - 2)
    out[i] = {}
    if flag == '1' then out[i] = redis.call('HGETALL', KEYS[i])
    elseif flag == '2' then out[i] = redis.call('GET', KEYS[i]) or false end
end
return out
"""

# Admission's write, if nothing moved since the read. KEYS = version, holds, buckets, device
# holds, then the devices' rate buckets to set; ARGV = version, then for each of the three hashes
# n and n (field, value) pairs, then a value per device bucket, then e and the e expired holds to
# drop, then the expired device holds to drop.
WRITE = """
if (redis.call('GET', KEYS[1]) or '') ~= ARGV[1] then return 0 end
local i = 2
for k = 2, 4 do
    local n = tonumber(ARGV[i])
    for j = 1, n do redis.call('HSET', KEYS[k], ARGV[i + 2 * j - 1], ARGV[i + 2 * j]) end
    i = i + 2 * n + 1
end
for k = 5, #KEYS do
    redis.call('SET', KEYS[k], ARGV[i], 'EX', RPM_TTL)
    i = i + 1
end
local e = tonumber(ARGV[i])
for j = i + 1, i + e do redis.call('HDEL', KEYS[2], ARGV[j]) end
for j = i + e + 1, #ARGV do redis.call('HDEL', KEYS[4], ARGV[j]) end
redis.call('INCR', KEYS[1])
return 1
""".replace("RPM_TTL", str(DEVICE_RPM_TTL_S))


# --- encodings ---


def _lot(tenant_id: str, lot_id: bytes, value: bytes) -> tuple[Lot, int]:
    amount, promo, created, expires, remaining = orjson.loads(value)
    expires_at = from_us(expires) if expires is not None else None
    return Lot(lot_id.decode(), tenant_id, amount, promo, from_us(created), expires_at), remaining


def _hold_value(ask: Ask, grant: Grant) -> str:
    period, start = ask.budget or ("", None)
    assert grant.expires_at is not None
    return f"{grant.hold}|{ask.key_id}|{period}|{ts(start) if start else ''}|{us(grant.expires_at)}"


def _pairs(flat: list) -> list[tuple[bytes, bytes]]:
    return list(zip(flat[::2], flat[1::2], strict=True))


class Snapshot:
    """One tenant's state as read by READ, updated by the grants of a batch as it goes.
    `serials`: the devices of the batch, whose two keys each follow the tenant's in `raw`."""

    def __init__(self, tenant_id: str, raw: list, serials: list[str] | None = None) -> None:
        fixed, per_device = raw[:8], raw[8:]
        _, lots, spend, plan, tokens, holds, buckets, dholds = (fixed[0], *(_pairs(h) for h in fixed[1:]))
        self.lots = [_lot(tenant_id, k, v) for k, v in lots]
        self.holds: list[tuple[str, int, str, str, str, int]] = []  # (rid, amount, key, period, start, exp)
        for rid, v in holds:
            amount, key_id, period, start, exp = v.decode().split("|")
            self.holds.append((rid.decode(), int(amount), key_id, period, start, int(exp)))
        self.spend = {k.decode(): int(v) for k, v in spend}
        self.plan = [(int(m), int(u)) for m, u in plan]
        self.tokens: dict[str, list[tuple[int, int]]] = {}
        for k, v in tokens:
            key_id, second = k.decode().split("|")
            self.tokens.setdefault(key_id, []).append((int(second), int(v)))
        self.buckets = {}
        for k, v in buckets:
            micro, at_us = v.decode().split("|")
            self.buckets[k.decode()] = (int(micro), int(at_us))
        # the devices': (rid, serial, units, day, expires µs); serial -> mirror fields; buckets
        self.dholds = [(rid.decode(), *parse_device_hold(v)) for rid, v in dholds]
        self.devices: dict[str, dict[str, int]] = {}
        self.rpm: dict[str, tuple[int, int]] = {}
        for i, serial in enumerate(serials or []):
            fields, rpm = per_device[2 * i], per_device[2 * i + 1]
            self.devices[serial] = {k.decode(): int(v) for k, v in _pairs(fields)}
            if rpm:
                micro, at_us = rpm.decode().split("|")
                self.rpm[serial] = (int(micro), int(at_us))

    def unloaded(self, asks: list[Ask]) -> dict[str, set[str]]:
        """The devices some ask needs whose local day is not in Redis: serial -> every day the
        batch asks of it (loaded together, so that one load serves the whole batch)."""
        days: dict[str, set[str]] = {}
        missing = set()
        for ask in asks:
            if (d := ask.device) is not None:
                days.setdefault(d.serial, set()).add(d.day)
                if device_fields(d.day)[0] not in self.devices.get(d.serial, {}):
                    missing.add(d.serial)
        return {serial: days[serial] for serial in missing}

    def view(self, ask: Ask) -> View:
        view = View()
        now = us(ask.at)
        active = [h for h in self.holds if h[5] > now]
        if ask.money:
            view.lots = self.lots
            view.held = sum(h[1] for h in active)
        if ask.budget is not None:
            period, start = ask.budget
            spent = self.spend.get(spend_field(ask.key_id, period, start), 0)
            start_s = str(ts(start))
            view.key_used = spent + sum(
                h[1] for h in active if h[2] == ask.key_id and h[3] == period and h[4] == start_s
            )
        if ask.rpm:
            view.bucket = self.buckets.get(ask.key_id)
        if ask.tpm:
            view.tokens = self.tokens.get(ask.key_id, [])
        if ask.plan:
            view.plan_minutes = self.plan
        if ask.device is not None:
            self._device_view(view, ask)
        return view

    def _device_view(self, view: View, ask: Ask) -> None:
        device, now = ask.device, us(ask.at)
        assert device is not None
        fields = self.devices.get(device.serial, {})
        _, day_field, month_field = device_fields(device.day)
        mine = [h for h in self.dholds if h[1] == device.serial and h[4] > now]
        month = device.day[:7]
        view.device_day_used = fields.get(day_field, 0) + sum(h[2] for h in mine if h[3] == device.day)
        view.device_month_used = fields.get(month_field, 0) + sum(h[2] for h in mine if h[3][:7] == month)
        view.device_streams = len(mine)
        view.device_bucket = self.rpm.get(device.serial)

    def take(self, ask: Ask, grant: Grant) -> None:
        if grant.hold > 0:
            period, start = ask.budget or ("", None)
            assert grant.expires_at is not None
            start_s = str(ts(start)) if start else ""
            self.holds.append((ask.request_id, grant.hold, ask.key_id, period, start_s, us(grant.expires_at)))
        if grant.bucket is not None:
            self.buckets[ask.key_id] = grant.bucket
        if (d := ask.device) is not None and grant.device_hold is not None:
            assert grant.expires_at is not None
            self.dholds.append((ask.request_id, d.serial, grant.device_hold, d.day, us(grant.expires_at)))
            if grant.device_bucket is not None:
                self.rpm[d.serial] = grant.device_bucket


class Writes:
    """What a batch's grants write (WRITE's arguments)."""

    def __init__(self) -> None:
        self.holds: list[str] = []  # field, value, ...
        self.buckets: list[str] = []
        self.dholds: list[str] = []
        self.rpm: dict[str, str] = {}  # serial -> its bucket

    def add(self, ask: Ask, grant: Grant) -> None:
        if grant.hold > 0:
            self.holds += [ask.request_id, _hold_value(ask, grant)]
        if grant.bucket is not None:
            self.buckets += [ask.key_id, "{}|{}".format(*grant.bucket)]
        if (d := ask.device) is not None and grant.device_hold is not None:
            assert grant.expires_at is not None
            value = device_hold_value(d.serial, grant.device_hold, d.day, us(grant.expires_at))
            self.dholds += [ask.request_id, value]
            if grant.device_bucket is not None:
                self.rpm[d.serial] = "{}|{}".format(*grant.device_bucket)

    def __bool__(self) -> bool:
        return bool(self.holds or self.buckets or self.dholds or self.rpm)

    def script(self, keys: Keys, version: bytes | None, snap: Snapshot, now: int) -> tuple[list, list]:
        """WRITE's keys and arguments; the expired holds (money's, devices') are dropped too."""
        expired = [h[0] for h in snap.holds if h[5] <= now]
        expired_devices = [h[0] for h in snap.dholds if h[4] <= now]
        serials = sorted(self.rpm)
        args = [version or b""]
        for pairs in (self.holds, self.buckets, self.dholds):
            args += [len(pairs) // 2, *pairs]
        args += [self.rpm[s] for s in serials]
        args += [len(expired), *expired, *expired_devices]
        script_keys = [keys.version, keys.holds, keys.buckets, keys.dholds]
        return script_keys + [keys.device_rpm(s) for s in serials], args


class RedisState:
    def __init__(self, url: str, engine: Engine) -> None:
        self.url = url
        self.engine = engine
        self.sync = redis.Redis.from_url(url)  # the usage writer's and loaders' threads
        self._aio: redis.asyncio.Redis | None = None  # made on the event loop that uses it
        self._loop: asyncio.AbstractEventLoop | None = None
        self.loads = 0  # tenants loaded from the database (for tests and metrics)
        self.conflicts = 0  # admissions read again because another process wrote the tenant
        self.device_loads = 0  # devices loaded from the database (for tests and metrics)

    @property
    def aio(self) -> redis.asyncio.Redis:
        loop = asyncio.get_running_loop()
        if self._aio is None or self._loop is not loop:  # a client's connections belong to one loop
            self._aio, self._loop = redis.asyncio.Redis.from_url(self.url), loop
            self._read_script = self._aio.register_script(READ)
            self._write_script = self._aio.register_script(WRITE)
        return self._aio

    # --- admission (on the event loop) ---

    async def admit_many(self, items: list[tuple[Ask, Decide]]) -> list[Grant | Exception]:
        """Admit one tenant's requests: each decided in turn on the state the ones before it
        left, all written at once if the tenant's version has not moved since the read (two
        round trips), else read and decided again. `decide` grants or raises to refuse."""
        try:
            return await self._admit_many(items)
        except redis.RedisError as exc:
            raise Unavailable(type(exc).__name__) from exc

    async def _admit_many(self, items: list[tuple[Ask, Decide]]) -> list[Grant | Exception]:
        tenant_id = items[0][0].tenant_id
        keys = Keys(tenant_id)
        aio = self.aio
        asks = [ask for ask, _ in items]
        serials = sorted({ask.device.serial for ask in asks if ask.device is not None})
        read = keys.read + [k for serial in serials for k in (keys.device(serial), keys.device_rpm(serial))]
        wanted = _wanted(asks) + "12" * len(serials)
        for _ in range(TRIES):
            version, *raw = await self._read_script(keys=read, args=[wanted])
            if not raw[0]:
                await asyncio.to_thread(self.load, [tenant_id], items[0][0].at)
                continue
            snap = Snapshot(tenant_id, raw, serials)
            if missing := snap.unloaded(asks):
                await asyncio.to_thread(self.load_devices, tenant_id, missing)
                continue
            out, writes = _decide_all(snap, items)
            if not writes:
                return out
            script_keys, args = writes.script(keys, version, snap, us(items[0][0].at))
            if await self._write_script(keys=script_keys, args=args, client=aio):
                return out
            self.conflicts += 1
        raise Busy(tenant_id)

    async def release(self, tenant_id: str, request_ids: list[str]) -> None:
        """Drop the requests' holds, the money's and their devices' (one round trip)."""
        keys = Keys(tenant_id)
        pipe = self.aio.pipeline(transaction=False)
        pipe.hdel(keys.holds, *request_ids)
        pipe.hdel(keys.dholds, *request_ids)
        await pipe.execute()

    def held(self, tenant_id: str, at: datetime) -> int:
        now = us(at)
        total = 0
        for v in self.sync.hvals(Keys(tenant_id).holds):
            amount, _, _, _, exp = v.decode().split("|")
            if int(exp) > now:
                total += int(amount)
        return total

    # --- loading: the database's counters for a tenant, under its lock ---

    def load(self, tenant_ids: list[str], at: datetime) -> None:
        """Replace the tenants' mirror with what the database says now (blocking); `at` is now."""
        with self.engine.begin() as conn:
            lock_tenants(conn, tenant_ids)
            pipe = self.sync.pipeline(transaction=True)
            for tenant_id in sorted(set(tenant_ids)):
                keys = Keys(tenant_id)
                pipe.delete(*keys.mirrored)
                write_mirror(pipe, keys, *read_tenant(conn, tenant_id, at))
                pipe.set(keys.loaded, "1")
                pipe.incr(keys.version)
                self.loads += 1
            pipe.execute()  # before the commit: the lock is still held

    def load_devices(self, tenant_id: str, wanted: dict[str, set[str]]) -> None:
        """Replace the devices' mirror with what `device_days` says now, for the local days asked
        (serial -> days), under the tenant's lock (blocking)."""
        keys = Keys(tenant_id)
        with self.engine.begin() as conn:
            lock_tenants(conn, [tenant_id])
            usage = device_usage(conn, {(serial, day) for serial, days in wanted.items() for day in days})
            pipe = self.sync.pipeline(transaction=True)
            for serial, days in sorted(wanted.items()):
                pipe.delete(keys.device(serial))  # older days' fields go with it
                write_device(pipe, keys, serial, {day: usage[(serial, day)] for day in days}, loaded=True)
            pipe.incr(keys.version)
            pipe.execute()  # before the commit: the lock is still held
            self.device_loads += len(wanted)

    def forget(self) -> None:
        """Make every tenant load again at its next admission (holds and buckets stay). Devices'
        mirrors stay: only settlement (mirrored here) and loads write them, never the feed."""
        for key in self.sync.scan_iter(match="tp:{*}:loaded", count=500):
            self.sync.delete(key)

    # --- settlement, inside the usage writer's database transaction ---

    def settle(self, conn: Connection, rows: list[dict], charges: list[Charge]) -> Callable[[], None]:
        """Mirror what the transaction changed (the caller holds the tenants' locks and has
        written the records, their counters and charges); returns what to do once it commits:
        release the holds."""
        tenants = {r["tenant_id"] for r in rows if r.get("cost_nano_usd") or r.get("plan_units")}
        money = {c.tenant_id for c in charges if c.tx_id is not None}
        spend = {
            (r["key_id"], p, period_start(p, r["started_at"]))
            for r in rows
            if r.get("cost_nano_usd")
            for p in ("day", "month")
        }
        minutes = {(r["tenant_id"], minute_of(r["started_at"])) for r in rows if r.get("plan_units")}
        seconds = {(c.key_id, ts(c.finished_at)): c.tenant_id for c in charges if c.tokens}
        devices = {
            (r["tenant_id"], r["device_serial"], r["device_day"])
            for r in rows
            if r.get("device_serial") and r.get("device_day") and r.get("device_units")
        }
        pipe = self.sync.pipeline(transaction=True)
        _mirror_lots(pipe, conn, money)
        _mirror_spend(pipe, conn, spend, rows)
        _mirror_plan(pipe, conn, minutes)
        _mirror_tokens(pipe, conn, seconds)
        _mirror_devices(pipe, conn, devices)
        for tenant_id in tenants | money | set(seconds.values()) | {t for t, _, _ in devices}:
            pipe.incr(Keys(tenant_id).version)  # an admission that read before this reads again
        if len(pipe):
            pipe.execute()
        return self._releaser(charges)

    def _releaser(self, charges: list[Charge]) -> Callable[[], None]:
        """What releases the charges' holds (money's, devices'), once their transaction has
        committed."""
        holds: dict[str, list[str]] = {}
        dholds: dict[str, list[str]] = {}
        for c in charges:
            holds.setdefault(c.tenant_id, []).append(c.request_id)
            if c.device_serial is not None:
                dholds.setdefault(c.tenant_id, []).append(c.request_id)

        def release() -> None:
            if holds:
                release_pipe = self.sync.pipeline(transaction=False)
                for tenant_id, ids in holds.items():
                    release_pipe.hdel(Keys(tenant_id).holds, *ids)
                for tenant_id, ids in dholds.items():
                    release_pipe.hdel(Keys(tenant_id).dholds, *ids)
                release_pipe.execute()

        return release

    # --- upkeep ---

    def purge(self, at: datetime) -> int:
        """Drop expired holds (money's and devices') and plan minutes no window can see; returns
        holds dropped. Devices' mirrors and rate buckets expire by themselves."""
        now, floor, dropped = us(at), minute_of(at) - SEVEN_DAYS, 0
        for pattern in ("tp:{*}:holds", "tp:{*}:dholds"):
            for key in self.sync.scan_iter(match=pattern, count=500):
                items = self.sync.hgetall(key).items()
                gone = [rid for rid, v in items if int(v.rsplit(b"|", 1)[1]) <= now]  # expiry last
                if gone:
                    dropped += self.sync.hdel(key, *gone)
        for key in self.sync.scan_iter(match="tp:{*}:plan", count=500):
            old = [m for m in self.sync.hkeys(key) if int(m) <= floor]
            if old:
                self.sync.hdel(key, *old)
        return dropped

    async def aclose(self) -> None:
        if self._aio is not None:
            await self._aio.aclose()
        self.sync.close()


# --- settlement's mirror: the database's new values, as the transaction wrote them ---


def _mirror_lots(pipe: Pipeline, conn: Connection, tenant_ids: set[str]) -> None:
    for tenant_id, lots in lots_of(conn, sorted(tenant_ids)).items():
        pipe.hset(Keys(tenant_id).lots, mapping={lot.id: lot_value(lot, n) for lot, n in lots})


def _mirror_spend(
    pipe: Pipeline, conn: Connection, wanted: set[tuple[str, str, datetime]], rows: list[dict]
) -> None:
    tenant_of = {r["key_id"]: r["tenant_id"] for r in rows}
    for (key_id, period, start), spent in spend_of(conn, wanted).items():
        pipe.hset(Keys(tenant_of[key_id]).spend, spend_field(key_id, period, start), spent)


def _mirror_plan(pipe: Pipeline, conn: Connection, minutes: set[tuple[str, int]]) -> None:
    for (tenant_id, minute), units in plan_of(conn, minutes).items():
        pipe.hset(Keys(tenant_id).plan, str(minute), units)
        pipe.expire(Keys(tenant_id).plan, PLAN_TTL_S)


def _mirror_tokens(pipe: Pipeline, conn: Connection, seconds: dict[tuple[str, int], str]) -> None:
    """`seconds`: (key, second) -> the key's tenant."""
    for (key_id, second), n in tokens_of(conn, set(seconds)).items():
        k = Keys(seconds[(key_id, second)])
        pipe.hset(k.tokens, f"{key_id}|{second}", n)
        pipe.expire(k.tokens, TOKENS_TTL_S)


def _mirror_devices(pipe: Pipeline, conn: Connection, devices: set[tuple[str, str, str]]) -> None:
    """`devices`: (tenant, serial, local day) settled: their day's and month's units, as now."""
    usage = device_usage(conn, {(serial, day) for _, serial, day in devices})
    for tenant_id, serial, day in sorted(devices):
        write_device(pipe, Keys(tenant_id), serial, {day: usage[(serial, day)]}, loaded=False)


def _decide_all(snap: Snapshot, items: list[tuple[Ask, Decide]]) -> tuple[list[Grant | Exception], Writes]:
    """Each request decided in turn on the state the ones before it left."""
    out: list[Grant | Exception] = []
    writes = Writes()
    for ask, decide in items:
        try:
            grant = decide(snap.view(ask))
        except Exception as exc:  # refused: this request only
            out.append(exc)
            continue
        snap.take(ask, grant)
        writes.add(ask, grant)
        out.append(grant)
    return out, writes


def _wanted(asks: list[Ask]) -> str:
    """READ's flags: lots, spend, plan, tokens, holds, buckets, devices' holds."""
    money = any(a.money for a in asks)
    budget = any(a.budget is not None for a in asks)
    flags = (
        money,
        budget,
        any(a.plan for a in asks),
        any(a.tpm for a in asks),
        money or budget,
        any(a.rpm for a in asks),
        any(a.device is not None for a in asks),
    )
    return "".join("1" if f else "0" for f in flags)
