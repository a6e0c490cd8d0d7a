"""A hardware maker on a live gateway: its tenant, fleet, product and imported devices (through
the CLI, as docs/fleets.md tells), and a device's activation by challenge and response."""

from __future__ import annotations

import csv

import httpx

from support.live import LiveServer
from tokenport.fleets.identity import activation_mac

TZ = "Asia/Tokyo"  # the product's time zone for daily quotas


class Maker:
    """A maker with a fleet, a product and imported devices, and their secrets."""

    def __init__(
        self,
        gw: LiveServer,
        name: str,
        models: tuple[str, ...],
        daily: int = 100_000,
        credit: str | None = "50",
        fleet_args: tuple[str, ...] = (),
    ) -> None:
        self.gw, self.fleet = gw, f"{name}-fleet"
        gw.cli("tenants", "create", name)
        if credit:
            gw.cli("credits", "grant", name, credit)
        gw.cli("fleets", "create", name, self.fleet, *fleet_args)
        gw.cli(
            "products", "create", self.fleet, "BEAR", "--entitlement-days", "365", "--daily-tokens",
            str(daily), "--monthly-tokens", "1000000", "--models", ",".join(models), "--max-output",
            "50", "--reset-tz", TZ, "--package-fee-usd", "1.50",
        )  # fmt: skip
        serials = [f"{name.upper()}-{i:04d}" for i in range(4)]
        folder = gw.home / name
        folder.mkdir()
        (folder / "serials.csv").write_text("serial\n" + "\n".join(serials) + "\n")
        gw.cli(
            "devices", "import", self.fleet, "--sku", "BEAR", "--batch", "B1", "--csv",
            str(folder / "serials.csv"), "--secrets-out", str(folder / "secrets.csv"),
        )  # fmt: skip
        with (folder / "secrets.csv").open(newline="") as f:
            self.secrets = {row[0]: bytes.fromhex(row[1]) for row in list(csv.reader(f))[1:]}
        self.serials = serials
        self.name = name

    def activate(self, serial: str) -> dict:
        http = httpx.Client(base_url=self.gw.base_url, timeout=10)
        nonce = http.post("/v1/devices/challenge", json={"serial": serial}).json()["nonce"]
        mac = activation_mac(self.secrets[serial], serial, nonce)
        r = http.post("/v1/devices/activate", json={"serial": serial, "nonce": nonce, "mac": mac})
        assert r.status_code == 200, r.text
        return r.json()
