"""The repositories the energy side needs (implemented by `store/energy.py`): the reports' and
the meter's."""

from __future__ import annotations

from datetime import datetime
from typing import Literal, Protocol

from tokenport.energy.allocation import Span
from tokenport.energy.green import Grant
from tokenport.energy.meter import Allocated, RequestMeta


class EnergyRepository(Protocol):
    """What the energy service (and the value-chain report) reads and records."""

    def request_energy(self, request_ids: list[str]) -> dict[str, dict]: ...

    def set_pue(self, period: str, pue_milli: int, at: datetime) -> None: ...

    def pue(self, period: str) -> int | None: ...

    def set_electricity(
        self, period: str, source: str, cny_micro: int, kwh_milli: int | None, at: datetime
    ) -> None: ...

    def electricity(self, period: str) -> list[dict]: ...

    def add_certificate(self, cert_id: str, source: str, wh: int, period: str, at: datetime) -> None: ...

    def certificates(self, period: str | None = None) -> list[dict]: ...

    def metered(self, start: datetime, end: datetime) -> dict: ...

    def metered_since(self, zone: str, at: datetime) -> bool: ...

    def tenant_energy(self, start: datetime, end: datetime) -> dict[str, int]: ...

    def model_energy(self, start: datetime, end: datetime) -> dict[str, int]: ...

    def tokens(self, start: datetime, end: datetime, by: Literal["tenant", "model"]) -> dict[str, int]: ...

    def revenue(self, start: datetime, end: datetime) -> list[tuple[str, str | None, int]]: ...

    def allocation(self, period: str) -> tuple[dict, list[Grant]] | None: ...

    def freeze_allocation(
        self, period: str, consumed_wh: int, retired_wh: int, grants: list[Grant], at: datetime
    ) -> bool: ...

    def grouped_energy(
        self, tenant_id: str, group_by: str, start: datetime | None, end: datetime | None
    ) -> list[tuple[str | None, str, str, int]]: ...


class MeterRepository(Protocol):
    """What the shared meter (several gateway processes, one meter per node) reads and writes."""

    def take_lease(self, node: str, holder: str, now: datetime, ttl_s: float) -> bool: ...

    def add_reading(self, row: dict) -> None: ...

    def due_readings(self, node: str, ended_before: datetime) -> list[dict]: ...

    def spans(self, backends: list[str], lo: datetime, hi: datetime) -> list[tuple[Span, RequestMeta]]: ...

    def write(self, allocated: list[Allocated], readings_done: list[str] = ()) -> None: ...


class MeteredBackend(Protocol):
    """What metering needs of a backend's configuration: its zone, and where and what kind of
    engine it is (to read its token counters)."""

    zone: str
    url: str
    kind: str
