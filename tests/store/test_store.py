"""Storage and tenancy against real databases: each test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import dataclasses
import types
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from uuid import uuid4

import orjson
import pytest
from sqlalchemy import Engine, String, Text, inspect, select, text, update
from support.rows import usage_row

from tokenport.api import admin
from tokenport.api.views import usage_view
from tokenport.clock import FakeClock
from tokenport.gateway.auth import KeyCache
from tokenport.gateway.changes import ChangeFeed
from tokenport.gateway.errors import ApiError
from tokenport.store import writer as writer_module
from tokenport.store.db import open_database
from tokenport.store.feed import FeedStore
from tokenport.store.schema import api_keys, changes, tenants
from tokenport.store.tenants import TenantStore
from tokenport.store.usage import DeadLetterFile, UsageStore, is_transient
from tokenport.store.writer import BatchWriter
from tokenport.tenancy.keys import KEY_PREFIX, hash_key
from tokenport.tenancy.service import Conflict, InvalidInput, NotFound, TenancyService

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def svc(engine: Engine, clock: FakeClock) -> TenancyService:
    """Tenancy with the default zone `overseas` and a second zone, `domestic`."""
    svc = TenancyService(TenantStore(engine), "overseas", clock)
    svc.create_zone("domestic")
    return svc


def is_utc(dt: datetime) -> bool:
    return dt.tzinfo is not None and dt.utcoffset() == timedelta(0)


# --- migrations -------------------------------------------------------------------------------


def test_migrations_are_idempotent(database_url: str) -> None:
    first = open_database(database_url)
    try:
        TenancyService(TenantStore(first), "overseas").create_tenant("survivor")
    finally:
        first.dispose()
    second = open_database(database_url)  # a second upgrade is a no-op and keeps the data
    third = open_database(database_url)
    try:
        names = set(inspect(second).get_table_names())
        assert {"tenants", "api_keys", "usage", "changes", "alembic_version"} <= names
        with second.connect() as conn:
            versions = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
        assert versions == [alembic_head()]
        assert [t.name for t in TenantStore(third).list_tenants()] == ["survivor"]
    finally:
        second.dispose()
        third.dispose()


# --- zones ------------------------------------------------------------------------------------


def test_zones_are_created_once_and_listed(svc: TenancyService, clock: FakeClock) -> None:
    svc.create_zone("overseas-sea")
    with pytest.raises(Conflict):
        svc.create_zone("overseas-sea")
    for bad in ("Overseas", "-x", "a_b", "z" * 65, "", None):
        with pytest.raises(InvalidInput):
            svc.create_zone(bad)
    assert [name for name, _ in svc.list_zones()] == ["domestic", "overseas-sea"]
    assert svc.ensure_zones({"domestic", "cn-north"}) == ["cn-north"]  # only what was missing


def test_a_tenant_can_only_be_created_in_a_zone_that_exists(svc: TenancyService) -> None:
    with pytest.raises(InvalidInput, match=r"no zone 'mars'.*tokenport zones create mars"):
        svc.create_tenant("acme", "mars")
    assert svc.list_tenants() == []
    assert svc.create_tenant("acme").zone == "overseas"  # the default zone is registered on first use
    assert "overseas" in [name for name, _ in svc.list_zones()]


# --- tenants ----------------------------------------------------------------------------------


def test_create_and_list_tenants(svc: TenancyService, clock: FakeClock) -> None:
    a = svc.create_tenant("acme")
    clock.advance(1)
    b = svc.create_tenant("globex", "domestic")
    assert a.id.startswith("ten_") and a.id != b.id
    assert (a.name, a.zone, a.created_at) == ("acme", "overseas", T0)
    listed = svc.list_tenants()
    assert [(t.id, t.name, t.zone) for t in listed] == [
        (a.id, "acme", "overseas"),
        (b.id, "globex", "domestic"),
    ]
    assert listed[0].created_at == T0 and is_utc(listed[0].created_at)
    assert svc.tenant("globex") == b
    with pytest.raises(NotFound):
        svc.tenant("nobody")


def test_duplicate_tenant_name_conflicts(svc: TenancyService) -> None:
    svc.create_tenant("acme")
    with pytest.raises(Conflict):
        svc.create_tenant("acme")
    with pytest.raises(Conflict):  # nor can a tenant be re-created to move it to another zone
        svc.create_tenant("acme", "domestic")
    assert [t.zone for t in svc.list_tenants()] == ["overseas"]


@pytest.mark.parametrize(
    "name",
    ["", "-acme", ".acme", "a b", "acme/x", "ac\u00e9me", "x" * 129, None, 42, "acme\n", "acme\r\n"],
)
def test_invalid_tenant_names(svc: TenancyService, name) -> None:
    with pytest.raises(InvalidInput):
        svc.create_tenant(name)
    assert svc.list_tenants() == []


@pytest.mark.parametrize("zone", ["Overseas", "-eu", "eu_west", "eu west", "z" * 65, 7, "overseas\n"])
def test_invalid_zones(svc: TenancyService, zone) -> None:
    with pytest.raises(InvalidInput):
        svc.create_tenant("acme", zone)
    assert svc.list_tenants() == []


def test_longest_valid_name_and_zone(svc: TenancyService) -> None:
    svc.create_zone("z" * 64)
    t = svc.create_tenant("n" * 128, "z" * 64)
    assert svc.tenant("n" * 128).zone == "z" * 64 == t.zone


def test_default_zone_applies_when_omitted(engine: Engine, clock: FakeClock) -> None:
    svc = TenancyService(TenantStore(engine), "eu-central", clock)
    svc.create_zone("domestic")
    assert svc.create_tenant("a").zone == "eu-central"  # the default zone is registered on first use
    assert svc.create_tenant("b", None).zone == "eu-central"
    assert svc.create_tenant("c", "domestic").zone == "domestic"
    assert {t.name: t.zone for t in svc.list_tenants()} == {
        "a": "eu-central",
        "b": "eu-central",
        "c": "domestic",
    }


def test_tenant_zone_is_immutable_and_keys_inherit_it(svc: TenancyService, engine: Engine) -> None:
    tenant = svc.create_tenant("acme", "domestic")
    # No way to change a zone: the record is frozen, and no service/store/HTTP operation updates tenants.
    with pytest.raises(dataclasses.FrozenInstanceError):
        tenant.zone = "overseas"  # type: ignore[misc]
    zone_objects = {
        "create_zone",
        "ensure_zones",
        "list_zones",
        "insert_zone",
        "zone_exists",
        "key_zone",  # reads a key's zone (for zone-scoped admins)
    }  # zones themselves
    for cls in (TenancyService, TenantStore):
        public = [n for n in dir(cls) if not n.startswith("_") and n not in zone_objects]
        assert not [n for n in public if any(w in n for w in ("update", "zone", "rename", "move", "edit"))]
    for route in admin.routes:
        if route.path.startswith("/admin/v1/tenants"):
            assert route.methods <= {"GET", "HEAD", "POST"}
            # no per-tenant resource to PUT/PATCH: only the retention actions name a tenant
            assert "{" not in route.path or route.path.rsplit("/", 1)[1] in ("retention", "purge")

    info, _ = svc.create_key("acme", "k1")
    assert info.zone == "domestic"
    assert [k.zone for k in svc.list_keys("acme")] == ["domestic"]
    with engine.connect() as conn:
        assert (
            conn.execute(select(api_keys.c.zone).where(api_keys.c.id == info.id)).scalar_one() == "domestic"
        )
    with engine.connect() as conn:
        records = svc.store.load_key_records(conn)
    assert [(r.zone, r.tenant_name) for r in records] == [("domestic", "acme")]


# --- keys -------------------------------------------------------------------------------------


def all_text_values(engine: Engine) -> list[tuple[str, str, str]]:
    """(table, column, value) for every string value in every table of the database."""
    out = []
    insp = inspect(engine)
    with engine.connect() as conn:
        for table in insp.get_table_names():
            cols = insp.get_columns(table)
            names = [c["name"] for c in cols if isinstance(c["type"], String | Text)]
            assert names, f"{table} has no text columns?"
            for row in conn.execute(text(f'SELECT * FROM "{table}"')).mappings():
                for col, value in row.items():
                    if isinstance(value, str):
                        out.append((table, col, value))
    return out


def test_key_secret_is_never_stored(svc: TenancyService, engine: Engine, database_url: str) -> None:
    svc.create_tenant("acme")
    info, secret = svc.create_key("acme", "laptop", rpm_limit=60)
    assert secret.startswith(KEY_PREFIX)
    assert info.id.startswith("key_")
    assert info.prefix == secret[:12]
    assert (info.tenant, info.label, info.rpm_limit, info.revoked_at) == ("acme", "laptop", 60, None)

    values = all_text_values(engine)
    tables = {t for t, _, _ in values}
    assert {"tenants", "api_keys", "changes", "alembic_version"} <= tables
    hidden = secret[12:]  # the part not shown as the prefix
    leaks = [(t, c) for t, c, v in values if secret in v or hidden in v]
    assert leaks == []
    with engine.connect() as conn:
        stored = conn.execute(select(api_keys.c.key_hash).where(api_keys.c.id == info.id)).scalar_one()
    assert stored == hash_key(secret)
    assert len(stored) == 64

    if database_url.startswith("sqlite"):  # not even in the file's bytes (pages, WAL)
        path = Path(database_url.split("///", 1)[1])
        for f in (path, path.with_name(path.name + "-wal")):
            if f.exists():
                assert hidden.encode() not in f.read_bytes()


def test_create_key_validation(svc: TenancyService) -> None:
    svc.create_tenant("acme")
    with pytest.raises(NotFound):
        svc.create_key("nobody")
    for bad in (0, -1, 10**7 + 1, True, "60", 1.5):
        with pytest.raises(InvalidInput):
            svc.create_key("acme", rpm_limit=bad)
    with pytest.raises(InvalidInput):
        svc.create_key("acme", label="x" * 257)
    with pytest.raises(InvalidInput):
        svc.create_key("acme", label=5)  # type: ignore[arg-type]
    assert svc.list_keys("acme") == []
    info, _ = svc.create_key("acme", label="x" * 256, rpm_limit=10**7)
    assert svc.list_keys("acme")[0].label == "x" * 256 and info.rpm_limit == 10**7


def test_list_keys_by_tenant(svc: TenancyService) -> None:
    svc.create_tenant("acme")
    svc.create_tenant("globex")
    a, _ = svc.create_key("acme", "a")
    g, _ = svc.create_key("globex", "g")
    assert [k.id for k in svc.list_keys("acme")] == [a.id]
    assert {k.id for k in svc.list_keys()} == {a.id, g.id}
    with pytest.raises(NotFound):
        svc.list_keys("nobody")


def test_revoke_key_keeps_first_timestamp(svc: TenancyService, clock: FakeClock) -> None:
    svc.create_tenant("acme")
    info, _ = svc.create_key("acme")
    other, _ = svc.create_key("acme")
    clock.advance(60)
    first = clock.now()
    svc.revoke_key(info.id)
    clock.advance(3600)
    svc.revoke_key(info.id)  # a second revoke succeeds and changes nothing
    keys = {k.id: k for k in svc.list_keys("acme")}
    assert keys[info.id].revoked_at == first
    assert is_utc(keys[info.id].revoked_at)
    assert keys[other.id].revoked_at is None


def test_revoke_unknown_key(svc: TenancyService) -> None:
    with pytest.raises(NotFound):
        svc.revoke_key("key_doesnotexist")


def alembic_head() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from tokenport.store.db import MIGRATIONS

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(cfg).get_current_head()


# --- key cache --------------------------------------------------------------------------------


class CountingStore(TenantStore):
    loads = 0
    key_loads = 0

    def load_key_records(self, conn):
        self.loads += 1
        return super().load_key_records(conn)

    def load_keys(self, key_ids, tenant_ids=frozenset()):
        self.key_loads += 1
        return super().load_keys(key_ids, tenant_ids)


def bearer(secret: str) -> bytes:
    return f"Bearer {secret}".encode()


def following(store: TenantStore) -> tuple[KeyCache, ChangeFeed]:
    cache = KeyCache(store)
    feed = ChangeFeed(FeedStore(store.engine), [cache])
    feed.start()
    return cache, feed


def test_key_cache_follows_the_change_feed(engine: Engine, clock: FakeClock) -> None:
    store = CountingStore(engine)
    svc = TenancyService(store, "overseas", clock)
    svc.create_zone("domestic")
    cache, feed = following(store)  # first load, even of an empty database
    feed.poll_now()
    assert (store.loads, store.key_loads) == (1, 0)

    svc.create_tenant("acme", "domestic")
    info, secret = svc.create_key("acme", rpm_limit=5)
    with pytest.raises(ApiError) as exc:  # not seen before a poll
        cache.authenticate(bearer(secret), None)
    assert exc.value.status == 401

    feed.poll_now()
    assert store.loads == 1, "a new key must not reload the whole key table"
    assert store.key_loads == 1
    rec = cache.authenticate(bearer(secret), None)
    assert (rec.id, rec.tenant_name, rec.zone, rec.rpm_limit, rec.revoked) == (
        info.id,
        "acme",
        "domestic",
        5,
        False,
    )
    assert cache.authenticate(None, secret.encode()).id == info.id  # x-api-key works too

    with pytest.raises(ApiError) as exc:
        cache.authenticate(bearer(secret + "x"), None)
    assert (exc.value.status, exc.value.code) == (401, "invalid_api_key")
    with pytest.raises(ApiError) as exc:
        cache.authenticate(None, None)
    assert exc.value.status == 401

    # Nothing moved in the feed: nothing reloaded, even if a row changed behind the feed's back.
    with engine.begin() as conn:
        conn.execute(update(api_keys).where(api_keys.c.id == info.id).values(rpm_limit=99))
    feed.poll_now()
    assert (store.loads, store.key_loads) == (1, 1)
    assert cache.authenticate(bearer(secret), None).rpm_limit == 5

    svc.revoke_key(info.id)
    assert cache.authenticate(bearer(secret), None).id == info.id  # still the old table
    feed.poll_now()
    with pytest.raises(ApiError) as exc:
        cache.authenticate(bearer(secret), None)
    assert (exc.value.status, exc.value.code) == (403, "key_revoked")
    feed.poll_now()
    assert (store.loads, store.key_loads) == (1, 2), "each change is applied exactly once"


@pytest.mark.postgres
def test_key_cache_sees_changes_committed_out_of_id_order(postgres_server, clock: FakeClock) -> None:
    """Two admin writers at once (CLI and admin API, two CLIs...): PostgreSQL hands out change ids
    when a row is inserted, not when it commits. A change whose transaction commits after a
    later-numbered one must still reach running servers. (SQLite serialises writers, so there ids
    always commit in order.)"""
    engine = open_database(postgres_server.create_database(f"t_{uuid4().hex[:12]}"))
    try:
        store = CountingStore(engine)
        svc = TenancyService(store, "overseas", clock)
        tenant = svc.create_tenant("acme")
        cache, feed = following(store)

        slow_secret = "tpk_" + "S" * 40
        with engine.connect() as slow:  # writer 1: takes its change id first, commits last
            tx = slow.begin()
            slow.execute(
                api_keys.insert().values(
                    id="key_slow",
                    tenant_id=tenant.id,
                    zone=tenant.zone,
                    label=None,
                    prefix=slow_secret[:12],
                    key_hash=hash_key(slow_secret),
                    rpm_limit=None,
                    created_at=clock.now(),
                    revoked_at=None,
                )
            )
            slow.execute(changes.insert().values(kind="key", ref="key_slow", at=clock.now()))
            _, fast_secret = svc.create_key("acme")  # writer 2: a later id, committed first
            feed.poll_now()
            cache.authenticate(bearer(fast_secret), None)
            tx.commit()

        feed.poll_now()
        try:
            rec = cache.authenticate(bearer(slow_secret), None)
        except ApiError as err:
            pytest.fail(f"a key committed after a later-numbered change is never loaded ({err.status})")
        assert rec.id == "key_slow"
        assert store.loads == 1, "found in the look-back window, without reloading the whole table"
        feed.poll_now()
        assert store.key_loads == 2, "each change is applied exactly once"
    finally:
        engine.dispose()


# --- usage ------------------------------------------------------------------------------------


def test_insert_many_is_idempotent_on_request_id(svc: TenancyService, engine: Engine) -> None:
    t = svc.create_tenant("acme")
    store = UsageStore(engine)
    batch = [usage_row(f"req_{i}", t.id, T0 + timedelta(seconds=i), completion_tokens=i) for i in range(5)]
    store.insert_many(batch)
    before = store.query()
    store.insert_many(batch)
    assert store.count() == 5
    assert store.query() == before
    # a retry carrying different numbers for a known request changes nothing either
    store.insert_many([usage_row("req_3", t.id, T0, completion_tokens=999), usage_row("req_5", t.id, T0)])
    assert store.count() == 6
    rows = {r["request_id"]: r for r in store.query()}
    assert rows["req_3"]["completion_tokens"] == 3
    assert rows["req_3"]["started_at"] == T0 + timedelta(seconds=3)
    store.insert_many([])  # nothing to do
    assert store.count() == 6


def test_batch_writer_writes_everything_once(svc: TenancyService, engine: Engine) -> None:
    t = svc.create_tenant("acme")
    store = UsageStore(engine)
    w = BatchWriter(store.insert_many, flush_interval=0.01, batch_size=7)
    w.start()
    n = 103
    for i in range(n):
        w.submit(usage_row(f"req_{i:04d}", t.id, T0 + timedelta(milliseconds=i)))
    w.close(timeout=30)
    assert w.pending == 0
    assert w.written == n
    ids = [r["request_id"] for r in store.query()]
    assert sorted(ids) == [f"req_{i:04d}" for i in range(n)]
    assert store.count() == n


@pytest.mark.parametrize("failure", ["before_commit", "after_commit"])
def test_batch_writer_retries_a_failed_batch(
    svc: TenancyService, engine: Engine, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    """The first two writes fail (either nothing was written, or the commit happened but the answer
    was lost): the writer keeps the batch and retries it; nothing is lost, nothing duplicated."""
    monkeypatch.setattr(writer_module, "time", types.SimpleNamespace(sleep=lambda s: None))
    t = svc.create_tenant("acme")
    store = UsageStore(engine)
    calls: list[list[str]] = []

    def flaky(batch: list[dict]) -> None:
        calls.append([r["request_id"] for r in batch])
        if len(calls) <= 2:
            if failure == "after_commit":
                store.insert_many(batch)
            raise ConnectionError("database went away")
        store.insert_many(batch)

    w = BatchWriter(flaky, flush_interval=0.01, batch_size=1000)
    n = 40
    for i in range(n):  # queued before the thread starts: one batch
        w.submit(usage_row(f"req_{i:03d}", t.id, T0))
    w.start()
    w.close(timeout=30)
    assert len(calls) >= 3
    assert calls[0] == calls[1] == calls[2]  # the very same batch, retried
    assert w.written == n and w.pending == 0
    assert store.count() == n
    assert sorted(r["request_id"] for r in store.query()) == [f"req_{i:03d}" for i in range(n)]


def test_usage_query_and_totals_filter(svc: TenancyService, engine: Engine) -> None:
    a = svc.create_tenant("acme")
    b = svc.create_tenant("globex")
    store = UsageStore(engine)
    cet = timezone(timedelta(hours=1))
    store.insert_many(
        [
            usage_row("a0", a.id, T0, prompt_tokens=1, cached_tokens=0, completion_tokens=10),
            usage_row(
                "a1", a.id, T0 + timedelta(hours=1), prompt_tokens=2, cached_tokens=1, completion_tokens=20
            ),
            # written in another zone offset: same instant as T0 + 2 h
            usage_row(
                "a2",
                a.id,
                (T0 + timedelta(hours=2)).astimezone(cet),
                prompt_tokens=4,
                cached_tokens=3,
                completion_tokens=40,
            ),
            usage_row(
                "b0",
                b.id,
                T0 + timedelta(minutes=30),
                prompt_tokens=100,
                cached_tokens=50,
                completion_tokens=1000,
            ),
        ]
    )

    everything = store.query()
    assert [r["request_id"] for r in everything] == ["a0", "b0", "a1", "a2"]  # by start time
    assert {r["request_id"]: r["tenant"] for r in everything} == {
        "a0": "acme",
        "a1": "acme",
        "a2": "acme",
        "b0": "globex",
    }
    for r in everything:
        assert is_utc(r["started_at"]) and is_utc(r["finished_at"])
        # the admin API serialises these rows with orjson, which takes only exact-str keys
        assert orjson.loads(orjson.dumps(usage_view(r)))["request_id"] == r["request_id"]
    by_id = {r["request_id"]: r for r in everything}
    assert by_id["a2"]["started_at"] == T0 + timedelta(hours=2)
    assert by_id["a2"]["started_at"].hour == 14  # stored and returned as UTC
    assert by_id["a1"]["finished_at"] == T0 + timedelta(hours=1, milliseconds=50)
    assert by_id["a0"]["stream"] is True and by_id["a0"]["client_disconnected"] is False

    assert [r["request_id"] for r in store.query("acme")] == ["a0", "a1", "a2"]
    assert [r["request_id"] for r in store.query("globex")] == ["b0"]
    assert store.query("nobody") == []

    since = T0 + timedelta(hours=1)  # inclusive
    assert [r["request_id"] for r in store.query(since=since)] == ["a1", "a2"]
    assert [r["request_id"] for r in store.query(since=since.astimezone(cet))] == ["a1", "a2"]
    assert [r["request_id"] for r in store.query(since=since + timedelta(microseconds=1))] == ["a2"]
    assert [r["request_id"] for r in store.query("globex", since=since)] == []
    assert [r["request_id"] for r in store.query(limit=2)] == ["a0", "b0"]

    assert store.totals() == {
        "requests": 4,
        "prompt_tokens": 107,
        "cached_tokens": 54,
        "completion_tokens": 1070,
    }
    assert store.totals("acme") == {
        "requests": 3,
        "prompt_tokens": 7,
        "cached_tokens": 4,
        "completion_tokens": 70,
    }
    assert store.totals("acme", since) == {
        "requests": 2,
        "prompt_tokens": 6,
        "cached_tokens": 4,
        "completion_tokens": 60,
    }
    assert store.totals(since=since.astimezone(cet)) == store.totals("acme", since)
    assert store.totals("globex", T0 + timedelta(days=1)) == {
        "requests": 0,
        "prompt_tokens": 0,
        "cached_tokens": 0,
        "completion_tokens": 0,
    }
    assert all(type(v) is int for v in store.totals().values())


def test_timestamps_come_back_utc(svc: TenancyService, engine: Engine) -> None:
    t = svc.create_tenant("acme")
    info, _ = svc.create_key("acme")
    svc.revoke_key(info.id)
    with engine.connect() as conn:
        stamps = [
            conn.execute(select(tenants.c.created_at)).scalar_one(),
            *conn.execute(select(api_keys.c.created_at, api_keys.c.revoked_at)).one(),
            *conn.execute(select(changes.c.at)).scalars(),
        ]
    assert all(is_utc(s) and s == T0 for s in stamps)
    assert svc.tenant("acme").created_at == t.created_at == T0
    with pytest.raises(Exception, match="naive"):
        UsageStore(engine).insert_many([usage_row("naive", t.id, datetime(2026, 1, 1))])


def test_writer_dead_letters_only_the_row_the_database_refuses(
    svc: TenancyService, engine: Engine, tmp_path: Path
) -> None:
    """A row the database will never accept must not block the others, nor vanish silently."""
    t = svc.create_tenant("acme")
    store = UsageStore(engine)
    dead = tmp_path / "dead.jsonl"
    writer = BatchWriter(
        store.insert_many, 0.05, 100, is_transient=is_transient, dead_letter=DeadLetterFile(dead)
    )
    writer.start()
    good = [usage_row(f"req_good{i}", t.id, T0 + timedelta(seconds=i)) for i in range(5)]
    bad = usage_row("req_bad", t.id, T0, status=None)  # NOT NULL: refused by both databases
    for row in [*good[:2], bad, *good[2:]]:
        writer.submit(row)
    writer.close()
    assert {r["request_id"] for r in store.query()} == {r["request_id"] for r in good}
    lines = dead.read_text().splitlines()
    assert len(lines) == 1 and '"req_bad"' in lines[0] and "IntegrityError" in lines[0]


def test_usage_grouped_by_day_model_and_key(svc: TenancyService, engine: Engine) -> None:
    t = svc.create_tenant("acme")
    other = svc.create_tenant("other")
    store = UsageStore(engine)
    rows = [
        usage_row("req_a", t.id, T0, model="m1", key_id="k1", cost_nano_usd=100),
        usage_row("req_b", t.id, T0 + timedelta(hours=1), model="m2", key_id="k1", cost_nano_usd=None),
        usage_row("req_c", t.id, T0 + timedelta(days=1), model="m1", key_id="k2", cost_nano_usd=50),
        usage_row("req_d", other.id, T0, model="m1", key_id="k9", cost_nano_usd=7),
    ]
    store.insert_many(rows)
    by_day = store.grouped(t.id, "day")
    assert [(r["day"], r["requests"], r["cost_nano_usd"]) for r in by_day] == [
        (T0.date().isoformat(), 2, 100),
        ((T0 + timedelta(days=1)).date().isoformat(), 1, 50),
    ]
    assert [(r["model"], r["requests"]) for r in store.grouped(t.id, "model")] == [("m1", 2), ("m2", 1)]
    assert [(r["key"], r["completion_tokens"]) for r in store.grouped(t.id, "key")] == [
        ("k1", 40),
        ("k2", 20),
    ]
    window = store.grouped(t.id, "model", T0 + timedelta(minutes=30), T0 + timedelta(days=1))
    assert [(r["model"], r["requests"]) for r in window] == [("m2", 1)]  # [start, end)
