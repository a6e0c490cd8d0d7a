"""What the lifecycle learns about one request as it goes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from tokenport.billing.plans import Plan
from tokenport.billing.prices import Price
from tokenport.gateway.devices import DeviceEntry
from tokenport.tenancy.keys import KeyRecord


@dataclass(slots=True)
class RequestContext:
    request_id: str
    endpoint: str
    started_at: datetime
    t0: float  # monotonic
    client: str | None = None  # the client's address (the peer of the connection)
    key: KeyRecord | None = None
    zone: str | None = None
    other_zone: str | None = None  # a refused cross-zone attempt: the zone(s) it reached for
    request_sha256: str | None = None  # of the request body as received
    response_sha256: str | None = None  # of the response body bytes as sent
    retention: str = "none"  # or "encrypted:<ttl seconds>" when the tenant opted in
    kept_request: bytes | None = None  # the bodies, held only until sealed, only when opted in
    kept_response: bytes | None = None
    model: str | None = None
    backend: str | None = None
    stream: bool = False
    client_disconnected: bool = False  # set by the HTTP layer's watcher: gone before the answer
    cancellable: bool = False  # the relay is waiting on the engine: a disconnect may cancel it now
    delivered: bool = False  # the whole answer has been handed to the client
    price: Price | None = None  # set once the request is admitted and money is held
    plan: Plan | None = None  # set when the tenant's plan covers the request instead
    device: DeviceEntry | None = None  # a fleet's device is calling (its token, or a fleet key's header)
    device_held: bool = False  # the device's quotas hold for this request (settled with it)
