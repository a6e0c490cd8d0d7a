"""Wiring: build every component of a gateway process, start its background tasks, stop cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
from collections.abc import Callable
from datetime import timedelta
from functools import partial

import aiohttp

from tokenport.audit.service import AuditService
from tokenport.billing.service import BillingService
from tokenport.clock import Clock, SystemClock
from tokenport.config import ConfigError, Settings
from tokenport.energy.config import EnergyConfigError
from tokenport.energy.meter import EnergyMeter
from tokenport.energy.nodes import build_nodes
from tokenport.energy.request_figures import RequestFigures
from tokenport.energy.service import EnergyService
from tokenport.energy.shared_meter import SharedEnergyMeter
from tokenport.engines.embedded import EmbeddedEngine
from tokenport.engines.scrape import text_fetcher
from tokenport.fleets.quotas import DeviceQuotas, local_day
from tokenport.fleets.service import FleetService
from tokenport.gateway.auth import KeyCache
from tokenport.gateway.auth_throttle import AuthThrottle
from tokenport.gateway.backends import Backend, BackendPool
from tokenport.gateway.billing import BillingState, MirrorReloads
from tokenport.gateway.changes import ChangeFeed
from tokenport.gateway.charging import charging_for
from tokenport.gateway.clones import CloneWatch
from tokenport.gateway.device_gate import DeviceGate
from tokenport.gateway.devices import DeviceDirectory, DeviceEntry
from tokenport.gateway.lifecycle import Gateway
from tokenport.gateway.metrics import Metrics
from tokenport.gateway.ratelimit import RateLimiter
from tokenport.gateway.registry import BackendRegistry
from tokenport.gateway.relay import Relay
from tokenport.gateway.settle import Settler
from tokenport.gateway.token_count import count_request_tokens
from tokenport.gateway.upstream_http import UpstreamPool
from tokenport.gateway.window import ContextWindow
from tokenport.keyfiles import device_token_key
from tokenport.store.admins import AdminStore
from tokenport.store.audit import AuditStore
from tokenport.store.backends import BackendStore
from tokenport.store.billing import BillingStore
from tokenport.store.broadcast import announce_changes, listen
from tokenport.store.db import open_database
from tokenport.store.energy import EnergyStore
from tokenport.store.feed import FeedStore
from tokenport.store.fleets import FleetStore
from tokenport.store.journal import Journal
from tokenport.store.meter_store import MeterStore
from tokenport.store.redis_state import RedisState
from tokenport.store.repositories import billing_repositories
from tokenport.store.retention import RetentionStore
from tokenport.store.shared import SharedStore
from tokenport.store.tenants import TenantStore
from tokenport.store.usage import UsageStore
from tokenport.store.writer import BatchWriter
from tokenport.store.writer_process import WriterProcess, WriterSpec
from tokenport.store.writer_process import is_transient as writer_died
from tokenport.tenancy.service import TenancyService
from tokenport.zones.vault import Vault

log = logging.getLogger("tokenport")

# Credit is expired this long after its date: requests that started before it (a hold lives 30
# minutes) settle first. The CLI's `credits expire --grace-minutes` defaults to the same.
EXPIRY_GRACE = timedelta(minutes=31)
SWITCH_INTERVAL_S = 0.0005


class Runtime:
    def __init__(
        self, settings: Settings, clock: Clock | None = None, say: Callable[[str], None] = print
    ) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.say = say
        self.db = open_database(settings.database_url)
        self.tenant_store = TenantStore(self.db)
        self.usage_store = UsageStore(self.db)
        self.tenancy = TenancyService(self.tenant_store, settings.default_zone, self.clock)
        # The zones this configuration declares: the default zone and those of its backends.
        declared = {settings.default_zone, *(b.zone for b in settings.backends)}
        if settings.engine.enabled:
            declared.add(settings.engine.zone or settings.default_zone)
        for name in self.tenancy.ensure_zones(declared):
            log.info("zone %s registered (declared by the configuration)", name)
        self._admission()
        self._settlement()
        self._fleets()
        self._backends()
        self._energy()
        self.session: aiohttp.ClientSession | None = None  # health checks, token counts
        self.upstream = UpstreamPool(settings.waits)  # the requests themselves
        self.gateway: Gateway | None = None
        self.started = False
        self._tasks: list[asyncio.Task] = []

    def _admission(self) -> None:
        """Keys, balances and the charging strategy of this mode (local, shared, Redis)."""
        settings = self.settings
        self.metrics = Metrics()
        throttle = AuthThrottle(
            settings.auth_failures_per_minute, self.clock.monotonic, self.metrics.auth_failed
        )
        self.keys = KeyCache(self.tenant_store, throttle)
        self.billing = BillingState(BillingStore(self.db), self.usage_store, self.clock)
        self.billing_service = BillingService(billing_repositories(self.db), self.tenancy, self.clock)
        self.feed = ChangeFeed(FeedStore(self.db), [self.keys, self.billing], settings.key_refresh_ms / 1000)
        self.shared = SharedStore(self.db) if settings.shared else None
        # Shared mode with Redis: admission state there, settlements mirrored, changes announced.
        self.redis = RedisState(settings.redis_url, self.db) if settings.redis_url else None
        self._unannounce = None
        if self.redis is not None:
            self.feed.subscribers.append(MirrorReloads(self.redis, BillingStore(self.db), self.clock))
            self._unannounce = announce_changes(self.db, settings.redis_url)
        # Devices' quotas: in this process's memory (read by the device step too), or shared.
        self.device_quotas = None if settings.shared else DeviceQuotas()
        self.charging = charging_for(
            self.billing, self.shared, settings.default_rpm, self.redis, self.device_quotas
        )

    def _settlement(self) -> None:
        """The journal, the batched writer and its process; audit and retention."""
        settings = self.settings
        # The settlement side's database work (usage, ledger, audit entries, energy windows) runs
        # in a child process (store/writer_process.py); this process only batches and pickles.
        self.writer_process = WriterProcess(
            WriterSpec(
                settings.database_url,
                settings.redis_url,
                settings.home / "usage-dead-letter.jsonl",
                settings.log_level,
            )
        )
        # Each settlement is journaled before the client's last bytes (store/journal.py).
        self.journal = Journal(settings.home / "journal", settings.journal_fsync_ms / 1000)
        self.writer = BatchWriter(
            self.writer_process.write,
            settings.usage_flush_ms / 1000,
            settings.usage_batch_size,
            is_transient=writer_died,
            journal=self.journal,
        )
        self.audit = AuditService(AuditStore(self.db), settings.keys_dir, self.clock)
        self.admins = AdminStore(self.db)
        self.vault = Vault(RetentionStore(self.db), settings.keys_dir, self.audit, self.clock)
        for zone, _ in self.tenancy.list_zones():  # key files read now, not on the request path
            self.vault.zone_key(zone)

    def _fleets(self) -> None:
        """Device fleets: the service behind the CLI and activation, and the directory of devices
        the gateway reads (kept current by the change feed)."""
        token_key = device_token_key(self.settings.keys_dir)
        self.fleet_store = FleetStore(self.db)
        self.fleets = FleetService(self.fleet_store, self.tenancy, self.vault.zone_key, token_key, self.clock)
        self.device_gate: DeviceGate | None = None  # built with the rate limiter, at start
        self.devices = DeviceDirectory(
            self.fleet_store,
            self.tenant_store.tenant_by_id,
            token_key,
            self.clock,
            # one process: what a device used before it counted (shared mode reads it per admission)
            usage_of=None if self.settings.shared else self._device_usage,
            on_load=lambda entry, used: self.device_gate and self.device_gate.restore(entry, used),
        )
        self.feed.subscribers.append(self.devices)
        # Activation is throttled per client address: wrong answers as failed authentications,
        # and challenges (each stores a nonce) beyond `limits.device_challenges_per_minute`.
        self.activation_throttle = self.keys.throttle or AuthThrottle(
            0, self.clock.monotonic, lambda over: None
        )
        self.challenge_throttle = AuthThrottle(
            self.settings.device_challenges_per_minute, self.clock.monotonic, lambda over: None
        )

    def _flag_device(self, entry: DeviceEntry, kind: str, detail: str) -> None:
        """A possible clone (gateway/clones.py): counted now, recorded and audited in a thread."""
        self.metrics.device_flags.labels(kind).inc()
        log.warning("device %s flagged: %s", entry.device.serial, detail)

        def record() -> None:
            try:
                self.fleets.flag(entry.device.serial, entry.fleet.id, kind, detail)
            except Exception:
                log.exception("recording the flag of device %s failed", entry.device.serial)

        asyncio.get_running_loop().run_in_executor(None, record)

    def _device_usage(self, entry: DeviceEntry) -> tuple[int, int]:
        """What a device used on its local day and month so far, from the database's counters."""
        day = local_day(self.clock.now(), entry.product.reset_tz)
        return self.fleet_store.used(entry.device.serial, day, day[:8] + "01")

    def _backends(self) -> None:
        """Configured and registered backends, and the embedded engine."""
        settings = self.settings
        self.pool = BackendPool([Backend(cfg) for cfg in settings.backends], self.clock.monotonic)
        configured = {b.name for b in settings.backends} | {"embedded"}
        registered = BackendStore(self.db, settings.waits)
        self.feed.subscribers.append(BackendRegistry(registered, self.pool, configured))
        self.engine: EmbeddedEngine | None = None
        if settings.engine.enabled:
            zone = settings.engine.zone or settings.default_zone
            self.engine = EmbeddedEngine(settings.engine, zone, self.say)
            self.embedded = Backend(self.engine.backend_config, ready=self.engine.ready)
            self.pool.add(self.embedded)

    def _energy(self) -> None:
        """The meter (per process, or one per node in shared mode) and the energy service."""
        settings = self.settings
        try:
            nodes = build_nodes(settings.energy, {b.name: b.config for b in self.pool.backends}, text_fetcher)
        except EnergyConfigError as exc:
            raise ConfigError(str(exc)) from None
        self.energy_store = EnergyStore(self.db)
        e = settings.energy
        self.meter = (  # several processes: one meters each node, from every process's records
            SharedEnergyMeter(nodes, MeterStore(self.db), e.window_s, e.alpha_milli, e.settle_delay_s)
            if settings.shared
            else EnergyMeter(nodes, e.alpha_milli)
        )
        self.energy = EnergyService(self.energy_store, settings.energy, self.clock)
        self.request_energy = RequestFigures(self.energy)
        self.audit.sections = self.request_energy.receipt_section

    async def start(self) -> None:
        self.feed.start()  # keys, prices and balances, from one snapshot
        self.journal.open()
        self.writer_process.hold_fds = (self.journal.lock_fd,)  # the journal stays locked while it writes
        self.writer_process.start()
        self.writer.start()
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=60),
            auto_decompress=False,
        )
        relay = Relay(self.upstream, self.clock.monotonic)
        limiter = RateLimiter(self.clock, self.settings.default_rpm, local=not self.settings.shared)
        self.device_gate = DeviceGate(self.device_quotas, limiter, self.clock)
        self.devices.on_evict = self.device_gate.forget  # memory bounded by the directory's size
        settler = Settler(
            self.writer,
            self.metrics,
            self.clock,
            self.charging,
            limiter,
            self.vault,
            self.meter,
        )
        window = ContextWindow(partial(count_request_tokens, self.session))
        self.gateway = Gateway(
            self.keys,
            limiter,
            self.pool,
            self.charging,
            relay,
            settler,
            window,
            self.meter,
            self.settings.waits,
            self.devices,
            self.device_gate,
            CloneWatch(self.clock.monotonic, self._flag_device),
        )
        s = self.settings
        self._tasks = [
            asyncio.create_task(self.feed.run(), name="change-feed"),
            asyncio.create_task(self._expire_holds(), name="hold-expiry"),
            asyncio.create_task(
                self._every(s.expire_credits_every_s, self._expire_due_credits, "credit expiry", True),
                name="credit-expiry",
            ),
            asyncio.create_task(
                self._every(s.audit_sign_every_s, self.audit.sign_heads, "signing audit tree heads"),
                name="audit-heads",
            ),
            asyncio.create_task(
                self._every(s.retention_purge_every_s, self.vault.purge_expired, "retention purge"),
                name="retention-purge",
            ),
            asyncio.create_task(
                self._every(s.energy.window_s, self._meter_energy, "energy metering", True),
                name="energy-meter",
            ),
            asyncio.create_task(
                self.pool.check_health(self.session, self.settings.health_interval_s), name="health"
            ),
        ]
        if self.engine is not None:
            self._tasks.append(asyncio.create_task(self._start_engine(), name="engine"))
        if self.settings.redis_url:
            listener = listen(self.settings.redis_url, self.feed.wake)
            self._tasks.append(asyncio.create_task(listener, name="change-broadcast"))
        self.started = True
        settle_heap()
        # What threads remain here (writer hand-off, change feed, energy windows) hold the GIL for
        # at most this long when the event loop wants it back (default 5 ms): at 500 req/s the
        # added p99 fell from +2.1..+3.7 ms to +1.4..+1.6 ms, for no measurable CPU.
        sys.setswitchinterval(SWITCH_INTERVAL_S)

    async def _expire_holds(self) -> None:
        while True:
            await asyncio.sleep(60)
            if self.shared is not None:
                with contextlib.suppress(Exception):  # retried next round
                    await asyncio.to_thread(self.shared.purge, self.clock.now())
                    if self.redis is not None:
                        await asyncio.to_thread(self.redis.purge, self.clock.now())
            else:
                self.billing.accountant.expire_holds(self.clock.now())

    async def _every(
        self, seconds: float, job: Callable[[], object], what: str, first_now: bool = False
    ) -> None:
        """Run a blocking `job` in a thread every `seconds` (0: never); a failure is logged (its
        type only) and retried next round."""
        if seconds <= 0:
            return
        if not first_now:
            await asyncio.sleep(seconds)
        while True:
            try:
                await asyncio.to_thread(job)
            except Exception as exc:
                log.warning("%s failed: %s", what, type(exc).__name__)
            await asyncio.sleep(seconds)

    def _meter_energy(self) -> None:
        """Close a window on every node; the windows whose requests have all finished go to the
        writer (retried there while the database is unavailable)."""
        for allocated in self.meter.tick(self.clock.monotonic(), self.clock.now()):
            self.writer.submit({"energy": allocated})  # written by the writer process

    def _expire_due_credits(self) -> None:
        """What `tokenport credits expire` does: each lot's expiry has a fixed id, so several
        processes doing this post it once."""
        posted = self.billing_service.expire_due(EXPIRY_GRACE)
        if posted:
            log.info("expired %d credit lots", len(posted))

    async def _start_engine(self) -> None:
        assert self.engine is not None and self.session is not None
        await self.engine.start()
        if self.engine.ready.is_set():  # check now rather than at the next health round
            await self.pool.check(self.session, self.embedded)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.upstream.close()
        if self.session is not None:
            await self.session.close()
        self.charging.close()
        try:  # the last window: every request has finished, so it can be allocated now
            await asyncio.to_thread(self._meter_energy)
        except Exception as exc:
            log.warning("energy metering failed: %s", type(exc).__name__)
        await asyncio.to_thread(self.writer.close)  # drain: graceful shutdown loses no usage
        await asyncio.to_thread(self.writer_process.close)
        self.journal.close()
        try:  # the last entries get a signed head too
            await asyncio.to_thread(self.audit.sign_heads)
        except Exception as exc:
            log.warning("signing audit tree heads failed: %s", type(exc).__name__)
        self.say(f"stopped: {self.writer.written} usage records written, {self.writer.pending} pending")
        if self.engine is not None:
            self.engine.stop()
        if self.redis is not None:
            await self.redis.aclose()
        if self._unannounce is not None:
            self._unannounce()
        self.db.dispose()


def settle_heap() -> None:
    """Hide what start-up built (modules, the ORM, caches: it lives as long as the process) from
    the cyclic collector, so that a full collection scans only what requests allocate: under
    load those scans stopped the event loop for 70-90 ms. A larger first generation (10,000
    objects, not 700) makes the young collections rarer; most request objects die by reference
    counting before one runs."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)
