"""Where a node's energy comes from, window by window. Every reading says whether it was measured
or estimated.

- `NvmlSource`: NVIDIA GPUs' cumulative energy counters (`nvmlDeviceGetTotalEnergyConsumption`,
  millijoules, Volta and newer), via `nvidia-ml-py`; measured.
- `RaplSource`: CPU package counters under `/sys/class/powercap/intel-rapl:*` (microjoules,
  wrapping at `max_energy_range_uj`; usually root-only, hidden in VMs); measured.
- `PrometheusCounterSource`: an energy counter another process exports, e.g. NVIDIA DCGM
  exporter's `DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION` (mJ) on a remote GPU node or node_exporter's
  `node_rapl_package_joules_total` (J); measured.
- `EngineTokens`: not energy but the engine's own token counters (vLLM, SGLang, llama.cpp), so
  that work an engine did for requests this process did not send is not charged to its requests.
- `PowerModelSource`: idle watts + dynamic watts x utilisation, where utilisation is the share of
  the window the node's engine was busy (a request in flight); estimated. The embedded engine on a
  CPU-only machine uses this.

A source's `read(busy_s, window_s)` returns the energy since its previous read, in integer
millijoules; the first read only sets the baseline (None).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tokenport.prometheus_text import parse_counter

MEASURED = "measured"
ESTIMATED = "estimated"


@dataclass(frozen=True)
class Reading:
    energy_mj: int
    method: str  # MEASURED or ESTIMATED


class EnergySource(Protocol):
    method: str

    def read(self, busy_s: float, window_s: float) -> Reading | None: ...


class _Counter:
    """Deltas of a cumulative counter (or several, summed), with wrap-around."""

    def __init__(self) -> None:
        self._last: dict[str, int] | None = None

    def delta(self, now: dict[str, int], wrap: dict[str, int] | None = None) -> int | None:
        last, self._last = self._last, now
        if last is None:
            return None
        total = 0
        for name, value in now.items():
            before = last.get(name)
            if before is None:  # a new series: this read is its baseline
                continue
            if value >= before:
                total += value - before
            elif wrap is not None and name in wrap:  # wrapped around (RAPL)
                total += wrap[name] - before + value
            else:  # reset (a restarted exporter): counted from zero
                total += value
        return total


class NvmlSource:
    method = MEASURED

    def __init__(self, indexes: list[int] | None = None, nvml: Any = None) -> None:
        if nvml is None:
            import pynvml as nvml  # nvidia-ml-py; fails without an NVIDIA driver
        self.nvml = nvml
        nvml.nvmlInit()
        count = nvml.nvmlDeviceGetCount()
        self.handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in (indexes or range(count))]
        self._counter = _Counter()

    def read(self, busy_s: float, window_s: float) -> Reading | None:
        now = {
            str(i): int(self.nvml.nvmlDeviceGetTotalEnergyConsumption(h)) for i, h in enumerate(self.handles)
        }
        mj = self._counter.delta(now)
        return None if mj is None else Reading(mj, MEASURED)


class RaplSource:
    method = MEASURED

    def __init__(self, root: Path = Path("/sys/class/powercap")) -> None:
        # Top-level packages only (intel-rapl:0, intel-rapl:1): their sub-zones are inside them.
        self.zones = sorted(p for p in root.glob("intel-rapl:*") if p.name.count(":") == 1)
        if not self.zones:
            raise OSError(f"no RAPL zones under {root}")
        self.wrap = {z.name: int((z / "max_energy_range_uj").read_text()) for z in self.zones}
        self._counter = _Counter()

    def read(self, busy_s: float, window_s: float) -> Reading | None:
        now = {z.name: int((z / "energy_uj").read_text()) for z in self.zones}
        uj = self._counter.delta(now, self.wrap)
        return None if uj is None else Reading(uj // 1000, MEASURED)


class PrometheusCounterSource:
    """A counter scraped from an exporter; `fetch()` returns its /metrics text (the caller does
    the HTTP, off the event loop). `scale_mj`: millijoules per counter unit (DCGM: 1, joules: 1000)."""

    method = MEASURED

    def __init__(self, fetch: Callable[[], str], metric: str, scale_mj: int = 1) -> None:
        self.fetch = fetch
        self.metric = metric
        self.scale_mj = scale_mj
        self._counter = _Counter()

    def read(self, busy_s: float, window_s: float) -> Reading | None:
        series = parse_counter(self.fetch(), self.metric)
        if series is None:
            raise ValueError(f"the exporter has no metric {self.metric}")
        delta = self._counter.delta(series)
        return None if delta is None else Reading(delta * self.scale_mj, MEASURED)


class PowerModelSource:
    method = ESTIMATED

    def __init__(self, idle_w: float, dynamic_w: float) -> None:
        self.idle_w = idle_w
        self.dynamic_w = dynamic_w

    def read(self, busy_s: float, window_s: float) -> Reading | None:
        utilisation = min(1.0, max(0.0, busy_s / window_s)) if window_s > 0 else 0.0
        return Reading(round((self.idle_w + self.dynamic_w * utilisation) * window_s * 1000), ESTIMATED)


# The engines' cumulative token counters: (prompt tokens, generated tokens).
TOKEN_COUNTERS = {
    "llamacpp": ("llamacpp:prompt_tokens_total", "llamacpp:tokens_predicted_total"),
    "vllm": ("vllm:prompt_tokens_total", "vllm:generation_tokens_total"),
    "sglang": ("sglang:prompt_tokens_total", "sglang:generation_tokens_total"),
}


class EngineTokens:
    """Tokens an engine processed since the previous read, from its /metrics (`fetch()` returns
    the text; the caller's thread does the HTTP). None when unknown (first read, engine down)."""

    def __init__(self, fetch: Callable[[], str], kind: str) -> None:
        self.fetch = fetch
        self.names = TOKEN_COUNTERS[kind]
        self._last: tuple[int, int] | None = None

    def read(self) -> tuple[int, int] | None:
        try:
            text = self.fetch()
        except OSError:
            return None  # the next good read covers this window too
        found = [parse_counter(text, name) for name in self.names]
        if found[0] is None or found[1] is None:
            return None
        now = (sum(found[0].values()), sum(found[1].values()))
        last, self._last = self._last, now
        if last is None:
            return None
        # A counter that went down was reset (the engine restarted): count from zero.
        return tuple(n - b if n >= b else n for n, b in zip(now, last, strict=True))  # type: ignore[return-value]
