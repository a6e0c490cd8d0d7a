"""Clone detection: a device seen from more client addresses within an hour than its fleet
allows (`--max-addresses`), or running more streams at once than its product allows, is flagged:
counted, audited and listed (`tokenport devices flagged`), and quarantined at once where the
fleet says so (`--auto-quarantine`). A cloned firmware shows up as one serial in many places.

Per gateway process, in memory and bounded: each device keeps at most `max + 1` addresses with
when each was last seen, and is flagged at most once an hour."""

from __future__ import annotations

from collections.abc import Callable

from tokenport.gateway.devices import DeviceEntry

HOUR_S = 3600.0
MAX_DEVICES = 200_000  # devices watched at once (those calling lately); the oldest are dropped

TOO_MANY_ADDRESSES = "addresses"
TOO_MANY_STREAMS = "streams"


class CloneWatch:
    def __init__(self, monotonic: Callable[[], float], flag: Callable[[DeviceEntry, str, str], None]) -> None:
        self.mono = monotonic
        self.flag = flag  # (device, kind, detail): record it (off the event loop)
        self._addresses: dict[str, dict[str, float]] = {}  # serial -> address -> last seen
        self._flagged: dict[str, float] = {}  # serial -> when it was last flagged

    def seen(self, entry: DeviceEntry, address: str | None) -> None:
        """A request of `entry`'s device from `address`."""
        if address is None:
            return
        serial, now = entry.device.serial, self.mono()
        seen = self._addresses.get(serial)
        if seen is None:
            if len(self._addresses) >= MAX_DEVICES:
                del self._addresses[next(iter(self._addresses))]
            seen = self._addresses[serial] = {}
        seen[address] = now
        allowed = entry.fleet.max_addresses_per_hour
        if len(seen) > allowed:
            for a in [a for a, t in seen.items() if now - t >= HOUR_S]:
                del seen[a]
        if len(seen) > allowed:
            self._raise(
                entry, TOO_MANY_ADDRESSES, f"{len(seen)} client addresses within an hour (at most {allowed})"
            )
            while len(seen) > allowed + 1:  # bounded: forget the oldest
                del seen[min(seen, key=seen.__getitem__)]

    def too_many_streams(self, entry: DeviceEntry, limit: int) -> None:
        """The device asked for more streams at once than its product allows."""
        self._raise(entry, TOO_MANY_STREAMS, f"more than {limit} streams at once")

    def _raise(self, entry: DeviceEntry, kind: str, detail: str) -> None:
        serial, now = entry.device.serial, self.mono()
        last = self._flagged.get(serial)
        if last is not None and now - last < HOUR_S:
            return
        if len(self._flagged) >= MAX_DEVICES:
            self._flagged = {s: t for s, t in self._flagged.items() if now - t < HOUR_S}
        self._flagged[serial] = now
        self.flag(entry, kind, detail)
