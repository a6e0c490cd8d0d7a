"""Green share, certificate allocation and carbon: the invariants of unique green claims."""

from __future__ import annotations

from collections import defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st

from tokenport.energy.green import (
    MJ_PER_KWH,
    allocate_certificates,
    carbon_ug,
    facility_mj,
    figures,
    green_share_ppm,
)

certs = st.dictionaries(st.text(min_size=1, max_size=6), st.integers(1, 10**7), max_size=8)
demands = st.dictionaries(st.text(min_size=1, max_size=6), st.integers(0, 10**7), max_size=10)


@settings(max_examples=300, deadline=None)
@given(certs, demands)
def test_green_claims_never_exceed_the_certificates(certificates: dict, demand: dict) -> None:
    grants = allocate_certificates(list(certificates.items()), demand)
    per_cert: dict[str, int] = defaultdict(int)
    per_tenant: dict[str, int] = defaultdict(int)
    for g in grants:
        assert g.wh > 0 and g.certificate_id in certificates and g.tenant_id in demand
        per_cert[g.certificate_id] += g.wh
        per_tenant[g.tenant_id] += g.wh
    assert all(per_cert[c] <= wh for c, wh in certificates.items())  # no certificate given twice
    assert sum(per_tenant.values()) <= sum(certificates.values())
    assert all(per_tenant[t] <= d for t, d in demand.items())
    if sum(demand.values()) <= sum(certificates.values()):
        assert all(per_tenant[t] == d for t, d in demand.items())  # enough: everyone is covered
    else:
        assert sum(per_tenant.values()) == sum(certificates.values())  # short: all of it is used


def test_green_share_and_carbon() -> None:
    assert green_share_ppm(800, 1000) == 800_000
    assert green_share_ppm(5000, 1000) == 1_000_000  # capped at 100 %
    assert green_share_ppm(10, 0) == 0
    assert facility_mj(1000, 1250) == 1250
    assert carbon_ug(MJ_PER_KWH, 530_600) == 530_600_000  # 1 kWh on the national grid: 530.6 g
    assert carbon_ug(500, 530_600) == 74  # half a joule: 74 micrograms
    f = figures(MJ_PER_KWH, 1000, 800_000, 530_600, 609_600)
    assert (f.facility_mj, f.green_mj) == (MJ_PER_KWH, MJ_PER_KWH * 8 // 10)
    assert f.co2_location_ug == 530_600_000 and f.co2_market_ug == 121_920_000  # 20 % x 609.6 g
