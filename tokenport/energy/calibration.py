"""Calibrate alpha (what a computed prompt token costs relative to a generated one) from measured
windows: the dynamic energy of a window (its energy less idle power x its length) regressed on the
prompt tokens computed and the tokens generated in it, by least squares without intercept.
Plain Python."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sample:
    dynamic_mj: int
    prefill_milli: int
    decode_milli: int


@dataclass(frozen=True)
class Calibration:
    windows: int
    alpha: float  # prefill token cost / decode token cost
    j_per_prefill_token: float
    j_per_decode_token: float
    r2: float


def calibrate(samples: list[Sample]) -> Calibration | None:
    """None when the windows cannot separate the two costs (too few, or no variation)."""
    xs = [(s.prefill_milli / 1000, s.decode_milli / 1000, s.dynamic_mj / 1000) for s in samples]
    xs = [x for x in xs if x[0] > 0 or x[1] > 0]
    if len(xs) < 3:
        return None
    s11 = sum(p * p for p, _, _ in xs)
    s12 = sum(p * d for p, d, _ in xs)
    s22 = sum(d * d for _, d, _ in xs)
    s1y = sum(p * y for p, _, y in xs)
    s2y = sum(d * y for _, d, y in xs)
    det = s11 * s22 - s12 * s12
    if det <= 1e-12 * max(s11 * s22, 1.0):
        return None
    a = (s1y * s22 - s2y * s12) / det  # joules per prompt token
    b = (s2y * s11 - s1y * s12) / det  # joules per generated token
    if b <= 0 or a < 0:
        return None
    ss_res = sum((y - a * p - b * d) ** 2 for p, d, y in xs)
    mean = sum(y for _, _, y in xs) / len(xs)
    ss_tot = sum((y - mean) ** 2 for _, _, y in xs) or 1.0
    return Calibration(len(xs), a / b, a, b, 1 - ss_res / ss_tot)
