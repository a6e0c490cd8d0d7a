"""Prometheus metrics. Labels carry ids and names only, never request content."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "tokenport_requests", "Requests handled", ["endpoint", "model", "status"], registry=r
        )
        self.tokens = Counter("tokenport_tokens", "Tokens metered", ["model", "kind"], registry=r)
        self.latency = Histogram(
            "tokenport_request_duration_seconds",
            "Time from request to last byte",
            ["endpoint", "model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "tokenport_time_to_first_token_seconds",
            "Time from request to first generated token (streaming)",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("tokenport_in_flight_requests", "Requests being processed", registry=r)
        self.backend_healthy = Gauge(
            "tokenport_backend_healthy",
            "1 when the backend passes health checks",
            ["backend", "zone"],
            registry=r,
        )
        self.backend_circuit_open = Gauge(
            "tokenport_backend_circuit_open",
            "1 while the backend's circuit is open (failing requests: tried again later)",
            ["backend"],
            registry=r,
        )
        self.backend_latency = Histogram(
            "tokenport_backend_request_duration_seconds",
            "Time from request to last byte, per backend",
            ["backend"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.backend_ttft = Histogram(
            "tokenport_backend_time_to_first_token_seconds",
            "Time from request to first generated token (streaming), per backend",
            ["backend"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.backend_in_flight = Gauge(
            "tokenport_backend_in_flight_requests", "Requests in flight per backend", ["backend"], registry=r
        )
        self.usage_pending = Gauge(
            "tokenport_usage_records_pending", "Usage records waiting for the batched writer", registry=r
        )
        self.usage_written = Gauge(
            "tokenport_usage_records_written", "Usage records committed since start", registry=r
        )
        self.usage_bounded = Counter(
            "tokenport_usage_bounded",
            "Requests whose engine reported token counts out of bounds (settled on the bounds)",
            ["backend"],
            registry=r,
        )
        self.settle_failed = Counter(
            "tokenport_settle_failures",
            "Requests whose settlement failed (a bug: logged; their holds released)",
            registry=r,
        )
        self.usage_recovered = Gauge(
            "tokenport_usage_records_recovered",
            "Records written since start from the journals of gateways that stopped (kill -9, crash)",
            registry=r,
        )
        self.client_refusals = Counter(
            "tokenport_client_refusals",
            "Connections ended by a client-side bound: idle, header_timeout, body_timeout, "
            "too_many_connections, malformed",
            ["reason"],
            registry=r,
        )
        self.device_flags = Counter(
            "tokenport_device_flags",
            "Devices flagged as possible clones: too many client addresses in an hour, too many streams",
            ["kind"],
            registry=r,
        )
        self.auth_failures = Counter(
            "tokenport_auth_failures",
            "Failed authentications (throttled: answered 429, over the per-address limit)",
            ["throttled"],
            registry=r,
        )
        self._auth_children = (self.auth_failures.labels("false"), self.auth_failures.labels("true"))
        self._children: dict[tuple[str, str, int], tuple] = {}
        self._backend_children: dict[str, tuple] = {}

    def auth_failed(self, throttled: bool) -> None:
        self._auth_children[throttled].inc()

    def observe_backend(self, backend: str, duration: float, ttft: float | None) -> None:
        children = self._backend_children.get(backend)
        if children is None:
            children = self._backend_children[backend] = (
                self.backend_latency.labels(backend),
                self.backend_ttft.labels(backend),
            )
        children[0].observe(duration)
        if ttft is not None:
            children[1].observe(ttft)

    def observe(
        self,
        endpoint: str,
        model: str,
        status: int,
        duration: float,
        ttft: float | None,
        tokens: tuple[int, int, int] | None,  # prompt, completion, cached
    ) -> None:
        """One finished request. Label children are cached: `labels()` is slow on the hot path."""
        key = (endpoint, model, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.requests.labels(endpoint, model, str(status)),
                self.latency.labels(endpoint, model),
                self.ttft.labels(model),
                self.tokens.labels(model, "prompt"),
                self.tokens.labels(model, "completion"),
                self.tokens.labels(model, "cached"),
            )
        requests, latency, ttft_hist, prompt, completion, cached = children
        requests.inc()
        latency.observe(duration)
        if ttft is not None:
            ttft_hist.observe(ttft)
        if tokens is not None:
            prompt.inc(tokens[0])
            completion.inc(tokens[1])
            cached.inc(tokens[2])
