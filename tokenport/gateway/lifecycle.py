"""The request lifecycle, in one place:

    authenticate (a key, or a fleet's device) → resolve zone → admit (the device, limits)
    → route → fit (context) → admit (the device's quotas, money) → stream → settle
    → deliver the last bytes

Each step lives in its own module; this one only sequences them and makes sure every request
that got past authentication is settled exactly once, whatever happens. The answer's last bytes
(a whole JSON answer, a stream's end) are held back until the settlement is journaled: a client
never has an answer that a crash could leave unbilled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import partial

from tokenport.billing.admission import DeviceAsk
from tokenport.billing.prices import Price
from tokenport.config import Waits
from tokenport.energy.meter import EnergyMeter
from tokenport.engines.dialects import llamacpp_cleaner
from tokenport.gateway.auth import KeyCache
from tokenport.gateway.backends import Backend, BackendPool
from tokenport.gateway.charging import Charging
from tokenport.gateway.clones import CloneWatch
from tokenport.gateway.context import RequestContext
from tokenport.gateway.device_gate import REMAINING_HEADER, DeviceGate
from tokenport.gateway.devices import DEVICE_HEADER, DeviceDirectory, DeviceEntry, is_device_token
from tokenport.gateway.errors import ApiError, forbidden
from tokenport.gateway.ratelimit import RateLimiter
from tokenport.gateway.relay import ClientSink, Outcome, Relay, UpstreamCall, upstream_payload
from tokenport.gateway.request import ParsedRequest
from tokenport.gateway.settle import Settler
from tokenport.gateway.sse import Counts
from tokenport.gateway.usage_guard import UsageLimits
from tokenport.gateway.window import TEMPLATE_SLACK, ContextWindow, Fit
from tokenport.gateway.zone import ZONE_HEADER, resolve_zone
from tokenport.tenancy.keys import KeyRecord, extract_secret
from tokenport.usage_record import SOURCE_BOUNDED, opaque
from tokenport.zones.retention import retention_mode

# Every protocol reaches the engines as OpenAI: Anthropic messages and Responses requests are
# translated chat completions.
UPSTREAM_PATHS = {
    "chat": "/v1/chat/completions",
    "completions": "/v1/completions",
    "messages": "/v1/chat/completions",
    "responses": "/v1/chat/completions",
    "embeddings": "/v1/embeddings",
}


# The endpoints whose answers go to the client as the engine wrote them (the others are translated).
NATIVE = ("chat", "completions")
RETRYABLE = {"backend_unavailable", "backend_overloaded", "upstream_error"}
TIMED_OUT = "upstream_timeout"  # the engine took the request but ran past a bound: not retried
TOO_MANY_STREAMS = "device_concurrency_exceeded"  # a device over its streams: a clone?
MAX_RETRIES = 2
AFFINITY_HEADERS = (b"x-session-affinity", b"x-session-id")
AFFINITY_PREFIX = 512  # characters of each of the first two messages


def affinity_key(headers: dict[bytes, bytes], req: ParsedRequest) -> bytes | None:
    """What keeps a conversation on one engine (its prefix cache): a session header, or the
    conversation's leading text (no tokenizer: the first characters of its first messages)."""
    for name in AFFINITY_HEADERS:
        if headers.get(name):
            return b"s:" + headers[name][:256]
    body = req.body
    if isinstance(body.get("messages"), list):
        lead = [m.get("content") for m in body["messages"][:2] if isinstance(m, dict)]
        text = "\x00".join(c[:AFFINITY_PREFIX] for c in lead if isinstance(c, str))
    elif isinstance(body.get("prompt"), str):
        text = body["prompt"][:AFFINITY_PREFIX]
    else:
        return None
    return b"p:" + text.encode("utf-8", "surrogateescape") if text else None


def usage_limits(fit: Fit, context: int) -> UsageLimits:
    """What the engine's counts can be for this request: the prompt counted, or at most the
    body's bytes plus a chat template's tokens; the output limit asked for (lowered to fit), or
    the context; neither above the context."""
    completion = context if fit.max_output is None else min(fit.max_output, context)
    return UsageLimits(min(fit.prompt_bound + TEMPLATE_SLACK, context), completion)


def _usage_fields(price: Price | None, fit: Fit):
    """What the client's `usage` gains (its cost; the output limit, when it was lowered to fit),
    or None: the engine's usage goes out as it came."""
    if fit.clamped is None:
        return None if price is None else partial(Charging.usage_fields, price)
    clamped = {"clamped_max_tokens": fit.clamped}
    if price is None:
        return lambda counts: clamped
    return lambda counts: {**Charging.usage_fields(price, counts), **clamped}


class Gateway:
    def __init__(
        self,
        keys: KeyCache,
        limiter: RateLimiter,
        pool: BackendPool,
        charging: Charging,
        relay: Relay,
        settler: Settler,
        window: ContextWindow,
        energy: EnergyMeter | None = None,
        waits: Waits | None = None,
        devices: DeviceDirectory | None = None,
        device_gate: DeviceGate | None = None,
        clones: CloneWatch | None = None,
    ) -> None:
        self.keys = keys
        self.devices = devices  # None: no fleets served (a device header is still refused)
        self.device_gate = device_gate
        self.clones = clones  # flags a device seen from too many places, or too many streams
        self.waits = waits or Waits()  # each backend's bounds on waiting for it, unless its own
        self.window = window
        self.energy = energy
        self.charging = charging
        self.limiter = limiter
        self.pool = pool
        self.relay = relay
        self.settler = settler
        self.in_flight = 0  # read by /metrics

    # --- the first steps, also for what is not a completion (count_tokens) ---

    async def authenticate(
        self, headers: dict[bytes, bytes], client: str | None
    ) -> tuple[KeyRecord, DeviceEntry | None]:
        """The key that pays and the device calling, if any: a device token (`tpd_…`) is the
        device and its maker; a fleet key (`tpf_…`) may name one of its devices in
        `X-Tokenport-Device`; any other key is itself."""
        secret = extract_secret(headers.get(b"authorization"), headers.get(b"x-api-key"))  # once
        if self.devices is not None and secret is not None and is_device_token(secret):
            entry = await self.devices.from_token(secret)
            named = headers.get(DEVICE_HEADER)
            if named is not None and named.decode("latin-1").strip() != entry.device.serial:
                raise forbidden("A device token acts for its own device only", "device_header_not_allowed")
            return entry.maker, entry
        key = self.keys.authenticate_secret(secret, client)
        serial = headers.get(DEVICE_HEADER)
        if serial is None:
            return key, None
        if self.devices is None:
            raise forbidden(
                "This gateway serves no fleets: X-Tokenport-Device is refused", "device_header_not_allowed"
            )
        entry = await self.devices.from_header(key, serial)
        return entry.maker, entry

    @staticmethod
    def zone(key: KeyRecord, headers: dict[bytes, bytes]) -> str:
        return resolve_zone(key.zone, headers.get(ZONE_HEADER))

    def route(self, model: str, zone: str) -> Backend:
        return self.pool.route(model, zone)

    async def _relay(
        self,
        ctx: RequestContext,
        req: ParsedRequest,
        backend: Backend,
        usage_fields: Callable[[Counts], dict] | None,
        fit: Fit,
        sink: ClientSink,
        out: Outcome,
    ) -> None:
        kind = backend.config.kind
        payload = upstream_payload(req.body, req.stream, kind, req.reasoning)
        clean = llamacpp_cleaner(req.endpoint) if kind == "llamacpp" and req.endpoint in NATIVE else None
        path = UPSTREAM_PATHS[req.endpoint]
        limits = usage_limits(fit, backend.config.context)
        waits = backend.config.waits or self.waits
        if not req.stream:
            waits = waits.unary()
        n = req.body.get("n")
        call = UpstreamCall(
            backend,
            path,
            payload,
            ctx.request_id,
            usage_fields,
            clean,
            limits,
            waits,
            fit.prompt_estimate,
            n if isinstance(n, int) and not isinstance(n, bool) else 1,
        )
        backend.in_flight += 1
        if self.energy is not None:  # the engine works for it from now: its energy is metered
            self.energy.opened(ctx.request_id, backend.name, ctx.t0)
        try:
            if req.stream:
                await self.relay.stream(call, sink, req.include_usage, out, ctx)
            else:
                await self.relay.unary(call, sink, out, ctx)
        finally:
            backend.in_flight -= 1

    async def handle(
        self,
        ctx: RequestContext,
        headers: dict[bytes, bytes],
        raw_body: bytes,
        parsed: ParsedRequest | ApiError,
        sink: ClientSink,
    ) -> None:
        """`parsed`: the request as its protocol read it, or the error its parse raised (answered
        once the caller is authenticated and in its zone, so that it is recorded)."""
        out = Outcome()
        self.in_flight += 1
        try:
            key = await self._identify(ctx, headers, raw_body, sink)  # 1 authenticate, 2 zone
            if isinstance(parsed, ApiError):
                raise parsed
            await self._admit_and_serve(ctx, key, headers, len(raw_body), parsed, sink, out)  # 3-5
        except ApiError as err:
            out.status, out.error_code = err.status, err.code
            if err.code == TOO_MANY_STREAMS and ctx.device is not None and self.clones is not None:
                self.clones.too_many_streams(ctx.device, ctx.device.product.concurrency or 0)
            ctx.other_zone = err.other_zone
            if err.code == "model_not_found" and ctx.model is not None:
                ctx.model = opaque(ctx.model)  # not a model we serve: the client's text, not kept
            sink.hold()  # an error is an answer too: out once settled
            await sink.error(err)
        except Exception:  # a bug, not bad input: the client gets a 500, the record says so
            out.status, out.error_code = 500, "internal_error"
            raise
        except asyncio.CancelledError:
            if not ctx.client_disconnected:
                raise  # shutting down: settle (below) and let the cancellation through
            asyncio.current_task().uncancel()  # the client went away: settle what it had
        finally:
            self.in_flight -= 1
            ctx.response_sha256 = sink.response_sha256()
            if ctx.kept_request is not None:
                ctx.kept_response = sink.kept_body()
            try:
                self.settler.settle(ctx, out)  # 6 settle: journaled before the answer's last bytes
            finally:
                await sink.release()

    async def _identify(
        self, ctx: RequestContext, headers: dict[bytes, bytes], raw_body: bytes, sink: ClientSink
    ) -> KeyRecord:
        """Steps 1 and 2: who calls (and pays), what is kept of the request, and its zone."""
        key, ctx.device = await self.authenticate(headers, ctx.client)  # 1 authenticate
        ctx.key = key
        sink.receipted = True  # authenticated: settled, audited, and so receipted
        if key.retention_ttl_s:  # the tenant opted in: keep both bodies, sealed at settlement
            ctx.retention = retention_mode(key.retention_ttl_s)
            ctx.kept_request = raw_body
            sink.keep()
        ctx.zone = self.zone(key, headers)  # 2 resolve zone
        return key

    async def _admit_and_serve(
        self,
        ctx: RequestContext,
        key: KeyRecord,
        headers: dict[bytes, bytes],
        body_size: int,
        req: ParsedRequest,
        sink: ClientSink,
        out: Outcome,
    ) -> None:
        """Steps 3 to 5: admit, route, fit, admit the money, stream."""
        ctx.model, ctx.stream = req.model, req.stream
        device = ctx.device
        if device is not None:  # 3 admit: the device (state, models, output cap, rate)
            if self.clones is not None and device.by_token:  # its own address (not its maker's server)
                self.clones.seen(device, ctx.client)
            self._device_gate().check(device, req, ctx.started_at)
        if device is None or not device.by_token:  # a device's own token has the device's limits
            self.limiter.admit(key.id, key.rpm_limit)  # admit: rate limits
            self.limiter.admit_tokens(key.id, key.tpm_limit)
        affinity = partial(affinity_key, headers, req)  # computed only if several backends could serve
        backend = self.pool.route(
            req.model, ctx.zone or key.zone, req.endpoint == "embeddings", affinity=affinity
        )
        ctx.backend = backend.name  # 4 route
        fit = await self.window.fit(req, backend, body_size)  # fit the context
        # admit: the most the request can count against the device, and the money, together
        ask = None if device is None else self._device_ask(device, req, fit, backend.config.context, ctx)
        price, plan, left = await self.charging.admit(
            ctx.request_id,
            key,
            req.model,
            fit.max_output,
            fit.prompt_bound,
            backend.config.context,
            ctx.started_at,
            ask,
        )
        ctx.price, ctx.plan = price, plan
        if ask is not None:
            ctx.device_held = True  # settled with the request
            sink.header(REMAINING_HEADER.encode(), str(left).encode())
        usage_fields = _usage_fields(None if price.free or plan else price, fit)
        await self._serve(ctx, req, backend, affinity, usage_fields, fit, sink, out)  # 5 stream

    def _device_gate(self) -> DeviceGate:
        assert self.device_gate is not None, "a device was identified: the gate is wired with the directory"
        return self.device_gate

    def _device_ask(
        self, device: DeviceEntry, req: ParsedRequest, fit: Fit, context: int, ctx: RequestContext
    ) -> DeviceAsk:
        """The most the request can count against its device (its prompt's bound and its output
        limit), held by admission with the money."""
        most = fit.prompt_bound + TEMPLATE_SLACK + (fit.max_output if fit.max_output is not None else context)
        return self._device_gate().ask(device, req.model, most, ctx.started_at)

    async def _serve(
        self,
        ctx: RequestContext,
        req: ParsedRequest,
        backend: Backend,
        affinity: Callable[[], bytes | None],
        usage_fields: Callable[[Counts], dict] | None,
        fit: Fit,
        sink: ClientSink,
        out: Outcome,
    ) -> None:
        """Relay from `backend`; one that fails before any byte reached the client: the next
        backend of the same zone (never elsewhere), up to MAX_RETRIES. Each backend's circuit
        learns how it went."""
        tried: set[Backend] = set()
        while True:
            try:
                await self._relay(ctx, req, backend, usage_fields, fit, sink, out)
            except ApiError as err:
                if err.code == TIMED_OUT:
                    backend.failed(self.pool.mono())  # too slow: its circuit notes it
                if out.started or err.code not in RETRYABLE:
                    raise
                backend.failed(self.pool.mono())  # passive: enough in a row open its circuit
                tried.add(backend)
                if len(tried) > MAX_RETRIES:
                    raise
                try:
                    embeddings = req.endpoint == "embeddings"
                    backend = self.pool.route(req.model, ctx.zone, embeddings, tried, affinity)
                except ApiError:
                    raise err from None
                ctx.backend = backend.name
                continue
            if out.usage_source == SOURCE_BOUNDED or out.error_code == TIMED_OUT:
                backend.failed(self.pool.mono())  # wrong counts, or too slow: its circuit notes it
            else:
                backend.succeeded()
            return
