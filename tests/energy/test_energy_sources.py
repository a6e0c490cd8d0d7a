"""Energy sources: counters read as deltas (wrap and reset handled), each reading labelled."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from tokenport.energy.sources import (
    ESTIMATED,
    MEASURED,
    NvmlSource,
    PowerModelSource,
    PrometheusCounterSource,
    RaplSource,
    Reading,
    parse_counter,
)


def _zone(root: Path, name: str, energy_uj: int, max_uj: int) -> Path:
    z = root / name
    z.mkdir(parents=True, exist_ok=True)
    (z / "energy_uj").write_text(f"{energy_uj}\n")
    (z / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return z


def test_rapl_counts_packages_and_handles_wrap(tmp_path: Path) -> None:
    p0 = _zone(tmp_path, "intel-rapl:0", 999_000_000, 1_000_000_000)
    _zone(tmp_path, "intel-rapl:1", 5_000_000, 1_000_000_000)
    _zone(tmp_path, "intel-rapl:0:0", 1, 1_000_000_000)  # a sub-zone (core): inside package 0
    src = RaplSource(tmp_path)
    assert [z.name for z in src.zones] == ["intel-rapl:0", "intel-rapl:1"]
    assert src.read(1, 1) is None  # the baseline
    (p0 / "energy_uj").write_text("2000000\n")  # wrapped: 1,000,000 uJ to the top, then 2,000,000
    (tmp_path / "intel-rapl:1" / "energy_uj").write_text("6500000\n")
    assert src.read(1, 1) == Reading((1_000_000 + 2_000_000 + 1_500_000) // 1000, MEASURED)
    with pytest.raises(OSError):
        RaplSource(tmp_path / "nothing")


class FakeNvml:
    def __init__(self) -> None:
        self.energy = [1_000, 50_000]
        self.inited = False

    def nvmlInit(self) -> None:
        self.inited = True

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, i: int):
        return SimpleNamespace(i=i)

    def nvmlDeviceGetTotalEnergyConsumption(self, handle) -> int:
        return self.energy[handle.i]


def test_nvml_sums_the_gpus_energy_counters() -> None:
    nvml = FakeNvml()
    src = NvmlSource(nvml=nvml)
    assert nvml.inited and src.read(0, 5) is None
    nvml.energy = [4_000, 51_000]
    assert src.read(0, 5) == Reading(4_000, MEASURED)
    only_second = NvmlSource([1], nvml=nvml)
    only_second.read(0, 5)
    nvml.energy[1] += 700
    assert only_second.read(0, 5) == Reading(700, MEASURED)


DCGM = """# HELP DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION Total energy consumption since boot (in mJ).
# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter
DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{gpu="0",UUID="GPU-a"} 1000
DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{gpu="1",UUID="GPU-b"} 2000
DCGM_FI_DEV_POWER_USAGE{gpu="0"} 250.5
"""


def test_an_exported_counter_is_read_as_deltas() -> None:
    assert parse_counter(DCGM, "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION") == {
        '{gpu="0",UUID="GPU-a"}': 1000,
        '{gpu="1",UUID="GPU-b"}': 2000,
    }
    assert parse_counter("node_rapl_package_joules_total 12.6\n", "node_rapl_package_joules_total") == {
        "": 13
    }
    text = {"now": DCGM}
    src = PrometheusCounterSource(lambda: text["now"], "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION")
    assert src.read(0, 5) is None
    text["now"] = DCGM.replace("} 1000", "} 1600").replace("} 2000", "} 2100")
    assert src.read(0, 5) == Reading(700, MEASURED)
    text["now"] = DCGM.replace("} 1000", "} 50").replace("} 2000", "} 2100")  # exporter restarted
    assert src.read(0, 5) == Reading(50, MEASURED)
    joules = PrometheusCounterSource(lambda: "node_rapl_package_joules_total 10\n", "x_missing", 1000)
    with pytest.raises(ValueError):
        joules.read(0, 5)


def test_the_power_model_is_labelled_estimated() -> None:
    src = PowerModelSource(idle_w=20, dynamic_w=30)
    assert src.read(0, 5) == Reading(100_000, ESTIMATED)  # idle: 20 W x 5 s
    assert src.read(2.5, 5) == Reading(175_000, ESTIMATED)  # half busy
    assert src.read(9, 5) == Reading(250_000, ESTIMATED)  # busy is capped at the window


def test_a_node_that_cannot_read_its_source_is_a_configuration_error() -> None:
    from tokenport.config import BackendConfig
    from tokenport.energy.config import EnergyConfigError, energy_config
    from tokenport.energy.nodes import build_nodes
    from tokenport.engines.scrape import text_fetcher

    backends = {"gpu": BackendConfig("gpu", "http://127.0.0.1:1", "overseas", ("m",), "vllm")}
    unreadable = [
        s
        for s, there in (("nvml", Path("/dev/nvidia0")), ("rapl", Path("/sys/class/powercap")))
        if not there.exists()
    ]
    for source in unreadable:  # no NVIDIA driver, no RAPL in these VMs
        cfg = energy_config({"nodes": [{"name": "n", "source": source, "backends": ["gpu"]}]})
        with pytest.raises(EnergyConfigError, match="energy node n"):
            build_nodes(cfg, backends, text_fetcher)
    two_zones = {**backends, "dom": BackendConfig("dom", "http://127.0.0.1:1", "domestic", ("m",))}
    cfg = energy_config({"nodes": [{"name": "n", "source": "model", "backends": ["gpu", "dom"]}]})
    with pytest.raises(EnergyConfigError, match="several zones"):
        build_nodes(cfg, two_zones, text_fetcher)
    (node,) = build_nodes(
        energy_config({"nodes": [{"name": "n", "source": "model", "backends": ["gpu"]}]}),
        backends,
        text_fetcher,
    )
    assert node.zone == "overseas" and len(node.engines) == 1  # vLLM's token counters are read
    with pytest.raises(EnergyConfigError):
        energy_config({"window_s": 30})
