"""Green share, certificates and carbon. Plain Python, integers throughout: energy in millijoules
(mJ) or watt-hours (Wh), shares in parts per million, carbon in micrograms CO2e (factors in mg per kWh).

- A period's green share is min(1, retired green Wh / consumed Wh).
- Certificates go to tenants in proportion to their energy; the green Wh allocated never exceed
  what was retired, and no certificate gives more than its volume.
- Carbon both ways (GHG Protocol Scope 2): location-based = energy x grid factor; market-based =
  the non-green remainder x a residual-mix factor.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenport.energy.allocation import apportion

MJ_PER_WH = 3_600_000
MJ_PER_KWH = 3_600_000_000
PPM = 1_000_000


def facility_mj(it_mj: int, pue_milli: int) -> int:
    """The facility's energy behind `it_mj` at the node (cooling, power conversion: x PUE)."""
    return (it_mj * pue_milli + 500) // 1000


def green_share_ppm(retired_wh: int, consumed_wh: int) -> int:
    if consumed_wh <= 0:
        return 0
    return min(PPM, retired_wh * PPM // consumed_wh)


def carbon_ug(energy_mj: int, mg_per_kwh: int) -> int:
    """Micrograms CO2e: a small request's share of a window is a fraction of a milligram."""
    return (energy_mj * mg_per_kwh * 1000 + MJ_PER_KWH // 2) // MJ_PER_KWH


@dataclass(frozen=True)
class Figures:
    """One request's (or one tenant's) energy, green energy and carbon."""

    it_mj: int
    facility_mj: int
    green_mj: int
    co2_location_ug: int
    co2_market_ug: int


def figures(it_mj: int, pue_milli: int, share_ppm: int, grid_mg: int, residual_mg: int) -> Figures:
    total = facility_mj(it_mj, pue_milli)
    green = total * share_ppm // PPM
    return Figures(it_mj, total, green, carbon_ug(total, grid_mg), carbon_ug(total - green, residual_mg))


@dataclass(frozen=True)
class Grant:
    certificate_id: str
    tenant_id: str
    wh: int


def allocate_certificates(certificates: list[tuple[str, int]], demand_wh: dict[str, int]) -> list[Grant]:
    """Give each tenant green Wh in proportion to its energy, from the certificates in id order,
    never more in all than they hold. `demand_wh`: each tenant's green entitlement (its energy x
    the green share); scaled down together if the certificates hold less."""
    available = sum(wh for _, wh in certificates)
    wanted = sum(demand_wh.values())
    give = demand_wh if wanted <= available else apportion(available, demand_wh)
    grants: list[Grant] = []
    stock = [[cid, wh] for cid, wh in sorted(certificates)]
    i = 0
    for tenant in sorted(give):
        need = give[tenant]
        while need > 0 and i < len(stock):
            take = min(need, stock[i][1])
            grants.append(Grant(stock[i][0], tenant, take))
            stock[i][1] -= take
            need -= take
            if stock[i][1] == 0:
                i += 1
    return grants
