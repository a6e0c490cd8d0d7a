"""Build the meter's nodes from the configuration: each node's source, zone and backends."""

from __future__ import annotations

import logging
from collections.abc import Callable

from tokenport.energy.config import EnergyConfig, EnergyConfigError, NodeConfig
from tokenport.energy.meter import Node
from tokenport.energy.ports import MeteredBackend
from tokenport.energy.sources import (
    TOKEN_COUNTERS,
    EnergySource,
    EngineTokens,
    NvmlSource,
    PowerModelSource,
    PrometheusCounterSource,
    RaplSource,
)

log = logging.getLogger("tokenport.energy")


Fetcher = Callable[[str], Callable[[], str]]  # a URL -> what reads its text (engines/scrape.py)


def make_source(cfg: NodeConfig, fetcher: Fetcher) -> EnergySource:
    if cfg.source == "nvml":
        try:
            return NvmlSource(list(cfg.gpus) or None)
        except Exception as exc:  # pynvml raises NVMLError subclasses without a driver
            raise EnergyConfigError(
                f"energy node {cfg.name}: NVML is unavailable ({type(exc).__name__})"
            ) from None
    if cfg.source == "rapl":
        try:
            return RaplSource()
        except OSError as exc:
            raise EnergyConfigError(f"energy node {cfg.name}: no readable RAPL counters ({exc})") from None
    if cfg.source == "prometheus":
        assert cfg.url is not None
        return PrometheusCounterSource(fetcher(cfg.url), cfg.metric, cfg.scale_mj)
    if cfg.source == "auto":
        try:
            source = RaplSource()
            source.read(0.0, 0.0)  # readable (RAPL is often root-only)?
            return source
        except OSError:
            log.info("energy node %s: no readable RAPL counters; using the power model (estimated)", cfg.name)
    return PowerModelSource(cfg.idle_w, cfg.dynamic_w)


def build_nodes(cfg: EnergyConfig, backends: dict[str, MeteredBackend], fetcher: Fetcher) -> list[Node]:
    """`backends`: every backend by name; `fetcher` reads a URL's text. Without configured nodes,
    the embedded engine (if any) is one node with the default source; other backends are not
    metered. The engines' token counters are read where their kind has them (llama.cpp, vLLM,
    SGLang)."""
    backend_zones = {name: b.zone for name, b in backends.items()}
    if not cfg.enabled:
        return []
    configured = cfg.nodes or (
        (NodeConfig("local", backends=("embedded",)),) if "embedded" in backend_zones else ()
    )
    nodes, taken = [], set()
    for nc in configured:
        names = nc.backends or (("embedded",) if "embedded" in backend_zones else ())
        unknown = [b for b in names if b not in backend_zones]
        if unknown or not names:
            raise EnergyConfigError(f"energy node {nc.name}: unknown or no backends {unknown or ''}".strip())
        if taken & set(names):
            raise EnergyConfigError(f"energy node {nc.name}: a backend belongs to one node only")
        taken |= set(names)
        zones = {backend_zones[b] for b in names}
        if len(zones) != 1:
            raise EnergyConfigError(
                f"energy node {nc.name}: its backends are in several zones {sorted(zones)}"
            )
        engines = tuple(
            EngineTokens(fetcher(backends[b].url.rstrip("/") + "/metrics"), backends[b].kind)
            for b in names
            if backends[b].kind in TOKEN_COUNTERS
        )
        nodes.append(
            Node(nc.name, zones.pop(), make_source(nc, fetcher), nc.idle_w, frozenset(names), engines)
        )
    return nodes
