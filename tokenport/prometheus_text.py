"""Read engines' Prometheus text (/metrics): one metric's series and values."""

from __future__ import annotations

import re


def parse_counter(text: str, metric: str) -> dict[str, int] | None:
    """The series of one metric in Prometheus text format: labels -> value (integer, rounded)."""
    pattern = re.compile(rf"^{re.escape(metric)}(\{{[^}}]*\}})?\s+(\S+)", re.M)
    found = {}
    for m in pattern.finditer(text):
        try:
            found[m.group(1) or ""] = round(float(m.group(2)))
        except (ValueError, OverflowError):  # NaN, +Inf: no usable value
            continue
    return found or None
