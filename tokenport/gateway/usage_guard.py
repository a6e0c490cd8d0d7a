"""Engine usage checked before it is billed: an engine's counts are a claim, not a fact.

Each count must be a non-negative integer (a bool, a string, a float that is not whole, a
negative number are not), prompt tokens at most what the request could have made (the prompt the
gateway counted or, uncounted, the body's bytes plus what a chat template adds, and never more
than the context), cached tokens at most the prompt, completion tokens at most what the request
allowed (its output limit, lowered to fit the context, or the context). A count outside its
bounds is settled on the bound (an unreadable or negative one on 0, or for a completion on the
chunks streamed), the client's `usage` says the same figures, the record's `usage_source` is
`bounded`, the backend's circuit counts it as a failure and `tokenport_usage_bounded_total`
counts it: the request itself is never failed for it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # sse.py reads the counts and imports this module
    from tokenport.gateway.sse import Counts


@dataclass(frozen=True, slots=True)
class UsageLimits:
    prompt: int  # the most prompt tokens the request can have
    completion: int  # the most completion tokens it was allowed

    def bound(self, counts: Counts, streamed: int = 0) -> tuple[Counts, bool]:
        """The counts within the limits, and whether anything had to change. `streamed`: the
        content chunks the client received, which stand for a completion count that is negative
        or unreadable."""
        if 0 <= counts.cached <= counts.prompt <= self.prompt and 0 <= counts.completion <= self.completion:
            return counts, False
        prompt = min(max(counts.prompt, 0), self.prompt)
        cached = min(max(counts.cached, 0), prompt)
        completion = min(counts.completion if counts.completion >= 0 else streamed, self.completion)
        bounded = replace(counts, prompt=prompt, cached=cached, completion=completion)
        return bounded, bounded != counts


def tell_client(
    usage: dict, counts: Counts, bounded: bool, usage_fields: Callable[[Counts], dict] | None
) -> bool:
    """The engine's usage object as the client is to see it: the billed counts when they were
    bounded, and what `usage_fields` adds (the cost). Whether it changed."""
    if bounded:
        _write_usage(usage, counts)
    if usage_fields is not None:
        usage.update(usage_fields(counts))
    return bounded or usage_fields is not None


def _write_usage(usage: dict, counts: Counts) -> None:
    """The engine's usage object rewritten with the bounded counts (what the client is told)."""
    usage["prompt_tokens"], usage["completion_tokens"] = counts.prompt, counts.completion
    usage["total_tokens"] = counts.prompt + counts.completion
    details = usage.get("prompt_tokens_details")
    if isinstance(details, dict) or counts.cached:
        usage["prompt_tokens_details"] = {**(details or {}), "cached_tokens": counts.cached}
