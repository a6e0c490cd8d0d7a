"""Settle: turn a finished request into its charge, usage record and metrics, and seal what an
opted-in tenant retains. Never blocks: the record, its ledger transaction and the sealed bodies go
to the batched writer, which also appends the audit entry."""

from __future__ import annotations

import logging

from tokenport.clock import Clock
from tokenport.energy.allocation import Span
from tokenport.energy.meter import EnergyMeter, RequestMeta
from tokenport.gateway.charging import Charging
from tokenport.gateway.context import RequestContext
from tokenport.gateway.device_gate import counted
from tokenport.gateway.metrics import Metrics
from tokenport.gateway.ratelimit import RateLimiter
from tokenport.gateway.relay import Outcome
from tokenport.gateway.sse import Counts
from tokenport.store.writer import BatchWriter
from tokenport.usage_record import SOURCE_BOUNDED, SOURCE_NONE, UsageRecord
from tokenport.zones.vault import Vault

log = logging.getLogger("tokenport.settle")


class Settler:
    def __init__(
        self,
        writer: BatchWriter,
        metrics: Metrics,
        clock: Clock,
        charging: Charging,
        limiter: RateLimiter,
        vault: Vault | None = None,
        energy: EnergyMeter | None = None,
    ) -> None:
        self.writer = writer
        self.energy = energy
        self.vault = vault
        self.charging = charging
        self.limiter = limiter
        self.metrics = metrics
        self.clock = clock

    def settle(self, ctx: RequestContext, out: Outcome) -> UsageRecord | None:
        """Never raises: a settlement that fails (a bug) is logged and counted, and the request's
        holds are released rather than left to expire."""
        try:
            return self._settle(ctx, out)
        except Exception:
            log.exception("settling %s failed; its holds are released", ctx.request_id)
            self.metrics.settle_failed.inc()
            if ctx.key is not None and ctx.price is not None and ctx.plan is None:
                try:
                    self.charging.release(ctx.request_id, ctx.key, ctx.started_at)
                except Exception:
                    log.exception("releasing the holds of %s failed", ctx.request_id)
            self._release_device(ctx)
            return None

    def _release_device(self, ctx: RequestContext) -> None:
        """A failed settlement's device hold, dropped uncounted (not left to expire); also when it
        failed after counting it here, before the usage writer had it (a release is idempotent)."""
        if ctx.device is None or ctx.key is None or ctx.price is None:  # not admitted: no hold
            return
        ctx.device_held = False
        try:
            self.charging.release_device(ctx.request_id, ctx.key, ctx.device.device.serial)
        except Exception:
            log.exception("releasing the device hold of %s failed", ctx.request_id)

    def _device_counts(self, ctx: RequestContext, counts: Counts | None) -> tuple[int | None, str | None]:
        """A device's quota hold settled on what was used: (weighted units, local day), once (this
        mode counts them here, or with the usage record: the charge names the device)."""
        if not ctx.device_held or ctx.device is None:
            return None, None
        ctx.device_held = False
        tokens = counts.prompt + counts.completion if counts is not None else 0
        units, day = counted(ctx.device, ctx.model, tokens, ctx.started_at)
        self.charging.settle_device(ctx.request_id, ctx.device.device.serial, units)
        return units, day

    def _settle(self, ctx: RequestContext, out: Outcome) -> UsageRecord | None:
        now = self.clock.monotonic()
        counts = out.counts
        ttft = out.first_token_at - ctx.t0 if out.first_token_at is not None else None
        self.metrics.observe(
            ctx.endpoint,
            ctx.model if ctx.backend else "-",  # only routed (known) models: bounded labels
            out.status,
            now - ctx.t0,
            ttft if ctx.stream else None,
            (counts.prompt, counts.completion, counts.cached) if counts else None,
        )
        if ctx.backend is not None and out.status == 200:
            self.metrics.observe_backend(ctx.backend, now - ctx.t0, ttft if ctx.stream else None)
        if out.usage_source == SOURCE_BOUNDED:
            self.metrics.usage_bounded.labels(ctx.backend or "-").inc()
            log.warning(
                "backend %s reported token counts out of bounds for %s: settled on the bounds",
                ctx.backend,
                ctx.request_id,
            )
        if ctx.key is None:  # unauthenticated: nobody to meter
            return None
        finished_at = self.clock.now()
        cost = tx = plan_units = None
        money = ctx.price if ctx.plan is None else None
        if ctx.plan is not None:  # covered by the tenant's plan: counted, not charged
            plan_units = self.charging.settle_plan(ctx.key, ctx.plan, ctx.model or "", counts, ctx.started_at)
        elif money is not None:  # admitted: money was held; charge what was used, release the rest
            cost, tx = self.charging.settle(
                ctx.request_id, ctx.key, money, counts, ctx.started_at, finished_at
            )
        device = ctx.device.device.serial if ctx.device is not None and ctx.device_held else None
        charge = self.charging.charge(
            ctx.request_id, ctx.key, money, cost, counts, ctx.started_at, finished_at, device
        )
        if self.energy is not None:  # the span of engine work this request asked for
            span = None
            if counts is not None and counts.prompt + counts.completion > 0:
                first = out.first_token_at
                span = Span(
                    ctx.request_id, ctx.t0, first, now, counts.prompt - counts.cached, counts.completion
                )
            self.energy.closed(ctx.request_id, span, RequestMeta(ctx.key.tenant_id))
        if counts is not None and ctx.key.tpm_limit:
            self.limiter.record_tokens(ctx.key.id, counts.prompt + counts.completion)
        units, day = self._device_counts(ctx, counts)
        record = UsageRecord(
            request_id=ctx.request_id,
            tenant_id=ctx.key.tenant_id,
            key_id=ctx.key.id,
            zone=ctx.zone or ctx.key.zone,
            other_zone=ctx.other_zone,
            endpoint=ctx.endpoint,
            model=ctx.model,
            backend=ctx.backend,
            stream=ctx.stream,
            prompt_tokens=counts.prompt if counts else 0,
            cached_tokens=counts.cached if counts else 0,
            completion_tokens=counts.completion if counts else 0,
            usage_source=out.usage_source if counts else SOURCE_NONE,
            finish_reason=out.finish_reason,
            status=out.status,
            error_code=out.error_code,
            ttft_ms=round(ttft * 1000) if ttft is not None else None,
            duration_ms=round((now - ctx.t0) * 1000),
            client_disconnected=ctx.client_disconnected,
            cost_nano_usd=cost.nano if cost is not None else None,
            plan_units=plan_units,
            request_sha256=ctx.request_sha256,
            response_sha256=ctx.response_sha256,
            retention=ctx.retention,
            started_at=ctx.started_at,
            finished_at=finished_at,
            device_serial=ctx.device.device.serial if ctx.device is not None else None,
            product_id=ctx.device.product.id if ctx.device is not None else None,
            device_units=units,
            device_day=day,
        )
        item = {"usage": record.row(), "tx": tx, "charge": charge}
        if ctx.kept_request is not None and self.vault is not None and ctx.key.retention_ttl_s:
            item["retained"] = self.vault.sealed_row(  # sealed here: the writer never sees plaintext
                ctx.request_id,
                ctx.key.tenant_id,
                record.zone,
                ctx.key.retention_ttl_s,
                ctx.kept_request,
                ctx.kept_response or b"",
                finished_at,
            )
            ctx.kept_request = ctx.kept_response = None
        # One database transaction for the record, its charge, the counters and what is retained.
        self.writer.submit(item)
        return record
