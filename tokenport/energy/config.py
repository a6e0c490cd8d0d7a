"""The `[energy]` configuration: the window, alpha, PUE, carbon factors, and the nodes whose energy
is measured (or estimated). Integers where figures are stored: PUE and alpha in thousandths,
carbon factors in milligrams CO2e per kWh."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

# Ministry of Ecology and Environment (2023 factors, as reported; docs/energy.md):
GRID_MG_PER_KWH = 530_600  # national grid average, 0.5306 kgCO2/kWh (location-based)
RESIDUAL_MG_PER_KWH = 609_600  # national excluding market-traded non-fossil power (residual mix proxy)
SOURCES = ("auto", "model", "rapl", "nvml", "prometheus")


class EnergyConfigError(ValueError):
    pass


@dataclass(frozen=True)
class NodeConfig:
    name: str
    source: str = "auto"  # auto: RAPL where readable, else the power model
    backends: tuple[str, ...] = ()  # () on the default node: the embedded engine
    idle_w: float = 20.0  # the power model's idle watts (also the static part of a window)
    dynamic_w: float = 30.0  # the power model's extra watts at full utilisation
    gpus: tuple[int, ...] = ()  # nvml: which GPUs (default all)
    url: str | None = None  # prometheus: the exporter's /metrics URL
    metric: str = "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"
    scale_mj: int = 1  # prometheus: millijoules per counter unit (1 for DCGM's mJ, 1000 for J)


@dataclass(frozen=True)
class EnergyConfig:
    enabled: bool = True
    window_s: float = 5.0
    settle_delay_s: float = 30.0  # shared mode: a reading is allocated once this old
    alpha_milli: int = 250
    pue_milli: int = 1200  # the default PUE; a period may have its own (`tokenport energy pue`)
    grid_mg_per_kwh: int = GRID_MG_PER_KWH
    residual_mg_per_kwh: int = RESIDUAL_MG_PER_KWH
    zone_factors: dict[str, tuple[int, int]] = field(default_factory=dict)  # zone -> (grid, residual)
    nodes: tuple[NodeConfig, ...] = ()

    def factors(self, zone: str) -> tuple[int, int]:
        return self.zone_factors.get(zone, (self.grid_mg_per_kwh, self.residual_mg_per_kwh))


def milli(value: object, what: str, low: int, high: int) -> int:
    """A decimal figure as an integer count of thousandths, within [low, high]."""
    try:
        n = int((Decimal(str(value)) * 1000).to_integral_value())
    except (InvalidOperation, ValueError):
        raise EnergyConfigError(f"{what} must be a number, not {value!r}") from None
    if not low <= n <= high:
        raise EnergyConfigError(f"{what} is out of range: {value}")
    return n


def energy_config(data: dict) -> EnergyConfig:
    window = float(data.get("window_s", 5.0))
    if not 1.0 <= window <= 10.0:
        raise EnergyConfigError("energy.window_s must be between 1 and 10 seconds")
    zones = {
        z: (
            milli(
                f.get("grid_g_per_kwh", GRID_MG_PER_KWH / 1000), f"energy.zones.{z}.grid_g_per_kwh", 0, 10**7
            ),
            milli(
                f.get("residual_g_per_kwh", RESIDUAL_MG_PER_KWH / 1000),
                f"energy.zones.{z}.residual_g_per_kwh",
                0,
                10**7,
            ),
        )
        for z, f in data.get("zones", {}).items()
    }
    nodes = tuple(_node(n) for n in data.get("nodes", []))
    names = [n.name for n in nodes]
    if len(set(names)) != len(names):
        raise EnergyConfigError("energy node names must be unique")
    return EnergyConfig(
        enabled=bool(data.get("enabled", True)),
        window_s=window,
        settle_delay_s=float(data.get("settle_delay_s", 30.0)),
        alpha_milli=milli(data.get("alpha", 0.25), "energy.alpha", 0, 100_000),
        pue_milli=milli(data.get("pue", 1.2), "energy.pue", 1000, 5000),
        grid_mg_per_kwh=milli(
            data.get("grid_g_per_kwh", GRID_MG_PER_KWH / 1000), "energy.grid_g_per_kwh", 0, 10**7
        ),
        residual_mg_per_kwh=milli(
            data.get("residual_g_per_kwh", RESIDUAL_MG_PER_KWH / 1000), "energy.residual_g_per_kwh", 0, 10**7
        ),
        zone_factors=zones,
        nodes=nodes,
    )


def _node(d: dict) -> NodeConfig:
    name, source = d.get("name"), d.get("source", "auto")
    if not isinstance(name, str) or not name:
        raise EnergyConfigError("every [[energy.nodes]] needs a name")
    if source not in SOURCES:
        raise EnergyConfigError(f"energy node {name}: source must be one of {', '.join(SOURCES)}")
    if source == "prometheus" and not d.get("url"):
        raise EnergyConfigError(f"energy node {name}: a prometheus source needs a url")
    return NodeConfig(
        name=name,
        source=source,
        backends=tuple(d.get("backends", ())),
        idle_w=float(d.get("idle_w", 20.0)),
        dynamic_w=float(d.get("dynamic_w", 30.0)),
        gpus=tuple(int(g) for g in d.get("gpus", ())),
        url=d.get("url"),
        metric=d.get("metric", "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"),
        scale_mj=int(d.get("scale_mj", 1)),
    )
