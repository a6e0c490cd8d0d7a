"""The price book: effective-dated prices per model, and what a request costs.

Token conventions are normalised once, here: OpenAI's `prompt_tokens` includes the cached tokens,
Anthropic's `input_tokens` excludes cache reads. Everything is priced from `BillableTokens`, in
which the four classes are disjoint, so nothing is billed twice.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from datetime import datetime

from tokenport.money import pico_to_nano


@dataclass(frozen=True)
class Price:
    model: str
    effective_from: datetime
    input: int  # pico-USD per uncached input token (= micro-USD per million tokens)
    output: int
    cached: int  # per cached input token
    reasoning: int | None = None  # None: reasoning tokens are billed as output
    free: bool = False  # explicitly free: served without credit


@dataclass(frozen=True)
class BillableTokens:
    """Disjoint token classes."""

    input: int = 0  # uncached input
    cached: int = 0  # input read from the prompt cache
    output: int = 0  # output, reasoning excluded
    reasoning: int = 0

    @classmethod
    def from_openai(cls, prompt: int, cached: int, completion: int, reasoning: int = 0) -> BillableTokens:
        """OpenAI: prompt_tokens includes cached_tokens; completion_tokens includes reasoning."""
        prompt, completion = max(prompt, 0), max(completion, 0)
        cached = min(max(cached, 0), prompt)
        reasoning = min(max(reasoning, 0), completion)
        return cls(input=prompt - cached, cached=cached, output=completion - reasoning, reasoning=reasoning)

    @classmethod
    def from_anthropic(
        cls, input_tokens: int, cache_read: int, cache_creation: int, output: int
    ) -> BillableTokens:
        """Anthropic: input_tokens excludes cache reads and cache writes (writes billed as input)."""
        return cls(input=input_tokens + cache_creation, cached=cache_read, output=output)


@dataclass(frozen=True)
class Cost:
    nano: int  # what is charged, nano-USD
    pico: int  # exact, before the one rounding


def cost_of(tokens: BillableTokens, price: Price) -> Cost:
    if price.free:
        return Cost(0, 0)
    reasoning_price = price.output if price.reasoning is None else price.reasoning
    pico = (
        tokens.input * price.input
        + tokens.cached * price.cached
        + tokens.output * price.output
        + tokens.reasoning * reasoning_price
    )
    return Cost(pico_to_nano(pico), pico)


class PriceBook:
    """All prices, in effect from their timestamps; history is kept so any past request re-prices."""

    def __init__(self, prices: list[Price] | None = None) -> None:
        self._by_model: dict[str, list[Price]] = {}
        for p in prices or []:
            self.add(p)

    def add(self, price: Price) -> None:
        history = self._by_model.setdefault(price.model, [])
        starts = [p.effective_from for p in history]
        i = bisect.bisect_left(starts, price.effective_from)
        if i < len(history) and history[i].effective_from == price.effective_from:
            history[i] = price  # same instant: the newer definition wins
        else:
            history.insert(i, price)

    def at(self, model: str, when: datetime) -> Price | None:
        history = self._by_model.get(model)
        if not history:
            return None
        i = bisect.bisect_right([p.effective_from for p in history], when)
        return history[i - 1] if i else None

    def models(self) -> list[str]:
        return sorted(self._by_model)

    def history(self, model: str) -> list[Price]:
        return list(self._by_model.get(model, []))
