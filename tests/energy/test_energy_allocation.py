"""Energy attribution invariants, on random request timelines and window energies."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenport.energy.allocation import Span, allocate, apportion, units_in_window


@st.composite
def spans(draw) -> list[Span]:
    out = []
    for i in range(draw(st.integers(min_value=0, max_value=12))):
        start = draw(st.floats(min_value=0, max_value=30, allow_nan=False))
        length = draw(st.floats(min_value=0, max_value=20, allow_nan=False))
        ttft = draw(st.one_of(st.none(), st.floats(min_value=0, max_value=1)))
        first = None if ttft is None else start + length * ttft
        out.append(
            Span(
                f"req_{i}",
                start,
                first,
                start + length,
                draw(st.integers(min_value=0, max_value=5000)),
                draw(st.integers(min_value=0, max_value=2000)),
            )
        )
    return out


@settings(max_examples=300, deadline=None)
@given(
    spans(),
    st.lists(st.integers(min_value=0, max_value=10**9), min_size=1, max_size=8),
    st.floats(min_value=0, max_value=500),
    st.sampled_from([1.0, 2.5, 5.0, 10.0]),
    st.integers(min_value=0, max_value=1_000_000),
)
def test_every_window_is_shared_out_exactly(timeline, energies, idle_w, width, own_ppm) -> None:
    """Shares sum to the metered energy (idle and others' work included), none is negative, and
    over a run of windows nothing is created or lost."""
    metered = allotted = idle = 0
    for i, energy in enumerate(energies):
        lo, hi = i * width, (i + 1) * width
        a = allocate(energy, idle_w, lo, hi, timeline, own_ppm=own_ppm)
        assert a.total_mj() == energy
        assert a.idle_mj >= 0 and a.unattributed_mj >= 0
        assert all(s.static_mj >= 0 and s.dynamic_mj >= 0 for s in a.shares)
        in_window = {s.request_id for s in timeline if min(s.end, hi) > max(s.start, lo)}
        assert {s.request_id for s in a.shares} <= in_window
        if not a.shares:
            assert a.idle_mj == energy  # an idle window is kept whole for the period
        metered += energy
        allotted += sum(s.total_mj for s in a.shares)
        idle += a.idle_mj + a.unattributed_mj
    assert allotted + idle == metered


@settings(max_examples=200, deadline=None)
@given(
    st.integers(min_value=0, max_value=10**12), st.dictionaries(st.text(max_size=3), st.integers(0, 10**6))
)
def test_apportion_is_exact_and_proportional(total: int, weights: dict[str, int]) -> None:
    parts = apportion(total, weights)
    assert set(parts) == set(weights)
    if sum(weights.values()):
        assert sum(parts.values()) == total
        for k, w in weights.items():  # within one unit of the exact proportion
            assert abs(parts[k] - total * w / sum(weights.values())) < 1 + 1e-6 * total
    else:
        assert all(p == 0 for p in parts.values())


def test_dynamic_energy_follows_work_and_static_follows_time() -> None:
    # Two requests in flight the whole window; one generated three times the tokens.
    a = Span("a", 0, 0, 10, 0, 300)
    b = Span("b", 0, 0, 10, 0, 100)
    alloc = allocate(40_000, 1.0, 0, 10, [a, b])  # 10 J idle (1 W x 10 s), 30 J dynamic
    shares = {s.request_id: s for s in alloc.shares}
    assert shares["a"].static_mj == shares["b"].static_mj == 5_000
    assert (shares["a"].dynamic_mj, shares["b"].dynamic_mj) == (22_500, 7_500)
    assert alloc.idle_mj == 0


def test_static_energy_of_an_empty_stretch_is_idle() -> None:
    alloc = allocate(10_000, 1.0, 0, 10, [Span("a", 0, 0, 4, 0, 10)])  # busy 4 s of 10
    (share,) = alloc.shares
    assert share.static_mj == 4_000 and alloc.idle_mj == 6_000 and share.dynamic_mj == 0


def test_prefill_counts_before_the_first_token_and_decode_after() -> None:
    span = Span("a", 0.0, 2.0, 10.0, 400, 80)  # prefill 400 x 0.25 = 100 units, decode 80
    assert units_in_window(span, 0, 2) == 100_000
    assert units_in_window(span, 2, 6) == 40_000
    assert units_in_window(span, 0, 10) == 180_000
    assert units_in_window(span, 10, 20) == 0
    with pytest.raises(ValueError):
        allocate(-1, 1.0, 0, 1, [span])


def test_work_the_engine_did_for_others_is_not_ours() -> None:
    a = allocate(40_000, 1.0, 0, 10, [Span("a", 0, 0, 10, 0, 100)], own_ppm=250_000)
    (share,) = a.shares
    assert a.unattributed_mj == 30_000 and share.total_mj == 10_000  # a quarter of the work
    assert (a.prefill_milli, a.decode_milli, a.static_mj) == (0, 100_000, 10_000)


def test_alpha_is_recovered_from_measured_windows() -> None:
    import random

    from tokenport.energy.calibration import Sample, calibrate

    rng = random.Random(7)
    samples = []
    for _ in range(200):  # 0.02 J per prompt token, 0.08 J per generated token: alpha 0.25
        p, d = rng.randint(0, 5000), rng.randint(0, 800)
        noise = rng.gauss(0, 2.0)
        samples.append(Sample(int((0.02 * p + 0.08 * d + noise) * 1000), p * 1000, d * 1000))
    c = calibrate(samples)
    assert c is not None and c.windows == 200 and c.r2 > 0.95
    assert abs(c.alpha - 0.25) < 0.02 and abs(c.j_per_decode_token - 0.08) < 0.005
    assert calibrate(samples[:2]) is None  # too few
    same_mix = [Sample(1000 * k, 2000 * k, 1000 * k) for k in range(1, 10)]  # no variation in the mix
    assert calibrate(same_mix) is None
