"""Attribute a node's metered energy to the requests that used it, window by window.

Per window (1-10 s) the node's energy is split into a static part (idle power x the window's
length, capped at what was metered) and a dynamic part (the rest):

- dynamic energy is shared by work units: alpha x prefill tokens actually computed (cache hits
  excluded) + decode tokens, counted inside the window (prefill between a request's start and
  its first token, decode evenly between its first token and its end);
- static energy is shared by time in flight inside the window; the static energy of the part of
  the window when no request was in flight, and all of a window with none, is idle: kept aside
  and spread over the period's requests in the reports.

Energy is integer millijoules; shares are apportioned by largest remainder, so the shares of a
window always sum to its energy exactly. Plain Python.
"""

from __future__ import annotations

from dataclasses import dataclass

ALPHA_MILLI = 250  # a computed prompt token costs a quarter of a generated one (docs/energy.md)


@dataclass(frozen=True)
class Span:
    """One request's time on a node (monotonic seconds) and the work it asked of it."""

    request_id: str
    start: float
    first_token: float | None  # None: no token came (prefill only, or nothing)
    end: float
    prefill_tokens: int  # prompt tokens actually computed (cached ones excluded)
    decode_tokens: int


@dataclass(frozen=True)
class Share:
    request_id: str
    static_mj: int
    dynamic_mj: int

    @property
    def total_mj(self) -> int:
        return self.static_mj + self.dynamic_mj


@dataclass(frozen=True)
class Allocation:
    shares: tuple[Share, ...]
    idle_mj: int  # nobody was in flight: spread over the period later
    unattributed_mj: int = 0  # the engine's work for others (not this process's requests)
    static_mj: int = 0  # the window's static part: idle power x its length, capped at its energy
    prefill_milli: int = 0  # prompt tokens computed in the window (thousandths; for calibration)
    decode_milli: int = 0  # tokens generated in the window (thousandths)

    def total_mj(self) -> int:
        return self.idle_mj + self.unattributed_mj + sum(s.total_mj for s in self.shares)


def apportion(total: int, weights: dict[str, int]) -> dict[str, int]:
    """Split `total` in proportion to non-negative integer weights; the parts sum to `total`
    exactly (largest remainder, ties broken by key)."""
    weight_sum = sum(weights.values())
    if total == 0 or weight_sum == 0:
        return dict.fromkeys(weights, 0)
    parts = {k: total * w // weight_sum for k, w in weights.items()}
    left = total - sum(parts.values())
    by_remainder = sorted(weights, key=lambda k: (-(total * weights[k] % weight_sum), k))
    for k in by_remainder[:left]:
        parts[k] += 1
    return parts


def _overlap(a: float, b: float, lo: float, hi: float) -> float:
    return max(0.0, min(b, hi) - max(a, lo))


def _fraction(a: float, b: float, lo: float, hi: float) -> float:
    """The share of [a, b) inside [lo, hi); an instant counts whole where it falls."""
    return _overlap(a, b, lo, hi) / (b - a) if b > a else float(lo <= a < hi)


def work_in_window(span: Span, lo: float, hi: float) -> tuple[int, int]:
    """(prompt tokens computed, tokens generated) inside [lo, hi), in thousandths of a token."""
    first = span.first_token if span.first_token is not None else span.end
    prefill = 1000 * span.prefill_tokens * _fraction(span.start, first, lo, hi) if span.prefill_tokens else 0
    decode = 1000 * span.decode_tokens * _fraction(first, span.end, lo, hi) if span.decode_tokens else 0
    return int(prefill), int(decode)


def units_in_window(span: Span, lo: float, hi: float, alpha_milli: int = ALPHA_MILLI) -> int:
    """The span's work units (in thousandths) done inside [lo, hi)."""
    prefill, decode = work_in_window(span, lo, hi)
    return (alpha_milli * prefill + 1000 * decode) // 1000


def allocate(
    energy_mj: int,
    idle_w: float,
    lo: float,
    hi: float,
    spans: list[Span],
    alpha_milli: int = ALPHA_MILLI,
    own_ppm: int = 1_000_000,
) -> Allocation:
    """Share one window's energy among the spans that overlap it. `own_ppm`: the part of the
    engine's work these spans account for (from its token counters; less when the engine also
    served requests this process did not send): the rest is `unattributed`, not theirs."""
    if energy_mj < 0:
        raise ValueError("a window's energy cannot be negative")
    static_all = min(energy_mj, int(idle_w * (hi - lo) * 1000))
    time_us = {s.request_id: int(_overlap(s.start, s.end, lo, hi) * 1_000_000) for s in spans}
    time_us = {k: v for k, v in time_us.items() if v > 0}
    if not time_us:
        return Allocation((), energy_mj, 0, static_all)
    inside = [s for s in spans if s.request_id in time_us]
    work = [work_in_window(s, lo, hi) for s in inside]
    prefill, decode = sum(p for p, _ in work), sum(d for _, d in work)
    own = energy_mj * min(own_ppm, 1_000_000) // 1_000_000
    static = static_all * own // energy_mj if energy_mj else 0
    dynamic = own - static
    busy = _union_length([(max(s.start, lo), min(s.end, hi)) for s in inside])
    idle = static - static * int(busy * 1_000_000) // max(1, int((hi - lo) * 1_000_000))
    units = {
        s.request_id: (alpha_milli * p + 1000 * d) // 1000 for s, (p, d) in zip(inside, work, strict=True)
    }
    static_parts = apportion(static - idle, time_us)
    dynamic_parts = apportion(dynamic, units if sum(units.values()) else time_us)
    shares = tuple(Share(k, static_parts[k], dynamic_parts[k]) for k in sorted(time_us))
    return Allocation(shares, idle, energy_mj - own, static_all, prefill, decode)


def _union_length(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total
