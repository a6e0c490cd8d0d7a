"""Fetch a text page over HTTP (an engine's /metrics, a power meter's Prometheus endpoint), for
the energy meter's thread: the adapter the energy sources are given (`energy/nodes.py`)."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable

TIMEOUT_S = 2


def text_fetcher(url: str) -> Callable[[], str]:
    def fetch() -> str:  # runs in the meter's thread
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as r:
            return r.read().decode()

    return fetch
