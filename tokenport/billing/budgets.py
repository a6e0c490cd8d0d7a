"""Per-key spend budgets (a USD cap per UTC day or month), held like credit: a request holds
its maximum cost against the key's budget until it settles."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta


def period_start(period: str, at: datetime) -> datetime:
    at = at.astimezone(UTC)
    if period == "day":
        return datetime(at.year, at.month, at.day, tzinfo=UTC)
    return datetime(at.year, at.month, 1, tzinfo=UTC)


def period_end(period: str, at: datetime) -> datetime:
    start = period_start(period, at)
    if period == "day":
        return start + timedelta(days=1)
    return datetime(start.year + (start.month == 12), start.month % 12 + 1, 1, tzinfo=UTC)


class BudgetExceeded(Exception):
    def __init__(self, budget: int, spent: int, needed: int, resets_at: datetime) -> None:
        super().__init__(f"budget {budget} nano-USD, spent or held {spent}, needs {needed}")
        self.budget, self.spent, self.needed, self.resets_at = budget, spent, needed, resets_at


def check_budget(budget: int, used: int, amount: int, period: str, at: datetime) -> None:
    """The rule, in every admission mode: what the key spent and holds in the period, plus this
    request's most, within its budget."""
    if used + amount > budget:
        raise BudgetExceeded(budget, used, amount, period_end(period, at))


@dataclass
class KeyBudgets:
    # (key id, period, period start) -> nano-USD settled
    _spent: dict[tuple[str, str, datetime], int] = field(default_factory=dict)
    _held: dict[str, dict[str, int]] = field(default_factory=dict)  # key id -> request id -> amount

    def restore(self, key_id: str, period: str, start: datetime, spent: int) -> None:
        self._spent[(key_id, period, start)] = spent

    def spent(self, key_id: str, period: str, at: datetime) -> int:
        return self._spent.get((key_id, period, period_start(period, at)), 0)

    def reserve(
        self, key_id: str, request_id: str, budget: int | None, period: str | None, amount: int, at: datetime
    ) -> None:
        if not budget or not period or amount <= 0:
            return
        held = self._held.setdefault(key_id, {})
        check_budget(budget, self.spent(key_id, period, at) + sum(held.values()), amount, period, at)
        held[request_id] = amount

    def settle(
        self, key_id: str, request_id: str, period: str | None, cost: int, started_at: datetime
    ) -> None:
        """Release the hold; count the cost in the period the request started in."""
        self._held.get(key_id, {}).pop(request_id, None)
        if period and cost:
            k = (key_id, period, period_start(period, started_at))
            self._spent[k] = self._spent.get(k, 0) + cost
