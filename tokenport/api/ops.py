"""Operational endpoints: /, /health, /metrics, /v1/models (each answers HEAD as it does GET)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tokenport.tenancy.keys import KeyRecord

if TYPE_CHECKING:
    from tokenport.api.services import OpsServices

import time

import orjson
from prometheus_client import generate_latest
from starlette.requests import Request
from starlette.responses import Response

from tokenport import __version__
from tokenport.api.keyed import keyed


def _json(obj: object, status: int = 200) -> Response:
    return Response(orjson.dumps(obj), status, media_type="application/json")


async def root(request: Request) -> Response:
    """What answers here: clients probe the base URL (Claude Code sends `HEAD /` first)."""
    return _json({"service": "tokenport", "version": __version__, "health": "/health", "api": "/v1"})


async def health(request: Request) -> Response:
    svc: OpsServices = request.app.state.services
    backends = {b.name: {"zone": b.zone, "healthy": b.healthy} for b in svc.pool.backends}
    ready = svc.started and any(b.healthy for b in svc.pool.backends)
    body: dict = {"status": "ok" if ready else "unavailable", "backends": backends}
    if svc.engine is not None:
        body["engine"] = svc.engine.state()
        if not ready and body["engine"]["state"] != "failed":  # loaded, first health check pending
            body["status"] = "loading"
    return _json(body, 200 if ready else 503)


async def metrics(request: Request) -> Response:
    svc: OpsServices = request.app.state.services
    m = svc.metrics
    for b in svc.pool.backends:
        m.backend_healthy.labels(b.name, b.zone).set(1 if b.healthy else 0)
        m.backend_in_flight.labels(b.name).set(b.in_flight)
        m.backend_circuit_open.labels(b.name).set(1 if b.circuit_open else 0)
    m.in_flight.set(svc.gateway.in_flight if svc.gateway else 0)
    m.usage_pending.set(svc.writer.pending)
    m.usage_recovered.set(svc.writer.recovered)
    m.usage_written.set(svc.writer.written)
    return Response(generate_latest(m.registry), media_type="text/plain; version=0.0.4; charset=utf-8")


@keyed
async def models(request: Request, svc: OpsServices, key: KeyRecord) -> Response:
    created = int(time.time())
    data = [
        {"id": m, "object": "model", "created": created, "owned_by": "tokenport"}
        for m in svc.pool.models_in_zone(key.zone)
    ]
    return _json({"object": "list", "data": data})
