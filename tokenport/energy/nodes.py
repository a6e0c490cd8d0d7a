"""Build the meter's nodes from the configuration: each node's source, zone and backends."""

from __future__ import annotations

import logging
import urllib.request

from tokenport.energy.config import EnergyConfig, EnergyConfigError, NodeConfig
from tokenport.energy.meter import Node
from tokenport.energy.sources import (
    EnergySource,
    NvmlSource,
    PowerModelSource,
    PrometheusCounterSource,
    RaplSource,
)

log = logging.getLogger("tokenport.energy")


def _fetcher(url: str):
    def fetch() -> str:  # runs in the meter's thread
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.read().decode()

    return fetch


def make_source(cfg: NodeConfig) -> EnergySource:
    if cfg.source == "nvml":
        return NvmlSource(list(cfg.gpus) or None)
    if cfg.source == "rapl":
        return RaplSource()
    if cfg.source == "prometheus":
        assert cfg.url is not None
        return PrometheusCounterSource(_fetcher(cfg.url), cfg.metric, cfg.scale_mj)
    if cfg.source == "auto":
        try:
            source = RaplSource()
            source.read(0.0, 0.0)  # readable (RAPL is often root-only)?
            return source
        except OSError:
            log.info("energy node %s: no readable RAPL counters; using the power model (estimated)", cfg.name)
    return PowerModelSource(cfg.idle_w, cfg.dynamic_w)


def build_nodes(cfg: EnergyConfig, backend_zones: dict[str, str]) -> list[Node]:
    """`backend_zones`: every backend's zone. Without configured nodes, the embedded engine (if
    any) is one node with the default source; other backends are not metered."""
    if not cfg.enabled:
        return []
    configured = cfg.nodes or (
        (NodeConfig("local", backends=("embedded",)),) if "embedded" in backend_zones else ()
    )
    nodes, taken = [], set()
    for nc in configured:
        backends = nc.backends or (("embedded",) if "embedded" in backend_zones else ())
        unknown = [b for b in backends if b not in backend_zones]
        if unknown or not backends:
            raise EnergyConfigError(f"energy node {nc.name}: unknown or no backends {unknown or ''}".strip())
        if taken & set(backends):
            raise EnergyConfigError(f"energy node {nc.name}: a backend belongs to one node only")
        taken |= set(backends)
        zones = {backend_zones[b] for b in backends}
        if len(zones) != 1:
            raise EnergyConfigError(
                f"energy node {nc.name}: its backends are in several zones {sorted(zones)}"
            )
        nodes.append(Node(nc.name, zones.pop(), make_source(nc), nc.idle_w, frozenset(backends)))
    return nodes
