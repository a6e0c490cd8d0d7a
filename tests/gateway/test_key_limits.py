"""Per-key limits: tokens per minute and a USD budget per day or month."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import openai
import pytest

from tokenport.billing.budgets import BudgetExceeded, KeyBudgets, period_end, period_start
from tokenport.clock import FakeClock
from tokenport.gateway.errors import ApiError
from tokenport.gateway.ratelimit import RateLimiter

MESSAGES = [{"role": "user", "content": "hi"}]


def test_tokens_per_minute_window():
    clock = FakeClock()
    limiter = RateLimiter(clock)
    limiter.admit_tokens("k", 50)
    limiter.record_tokens("k", 30)
    limiter.admit_tokens("k", 50)
    limiter.record_tokens("k", 30)
    with pytest.raises(ApiError) as exc:
        limiter.admit_tokens("k", 50)
    assert (exc.value.status, exc.value.code) == (429, "rate_limit_exceeded")
    assert exc.value.headers["x-ratelimit-limit-tokens"] == "50" and exc.value.headers["retry-after"] == "60"
    clock.advance(30)
    with pytest.raises(ApiError):
        limiter.admit_tokens("k", 50)
    clock.advance(30.1)  # both entries are older than a minute now
    limiter.admit_tokens("k", 50)
    limiter.admit_tokens("other", None)


def test_budget_periods_and_holds():
    t = datetime(2026, 12, 31, 23, 0, tzinfo=UTC)
    assert period_start("day", t) == datetime(2026, 12, 31, tzinfo=UTC)
    assert period_end("month", t) == datetime(2027, 1, 1, tzinfo=UTC)
    b = KeyBudgets()
    b.restore("k", "day", period_start("day", t), 40)
    b.reserve("k", "r1", 100, "day", 50, t)
    with pytest.raises(BudgetExceeded) as exc:
        b.reserve("k", "r2", 100, "day", 20, t)  # 40 spent + 50 held + 20 > 100
    assert (exc.value.spent, exc.value.resets_at) == (90, datetime(2027, 1, 1, tzinfo=UTC))
    b.settle("k", "r1", "day", 30, t)  # used 30 of the 50 held
    assert b.spent("k", "day", t) == 70
    b.reserve("k", "r2", 100, "day", 30, t)
    b.settle("k", "r2", "day", 30, t)
    with pytest.raises(BudgetExceeded):
        b.reserve("k", "r3", 100, "day", 1, t)
    b.reserve("k", "r3", 100, "day", 100, t + timedelta(hours=2))  # a new day, a new budget
    b.reserve("k", "free", 100, "day", 0, t)  # free requests hold nothing


def test_tokens_per_minute_through_the_gateway(mock_server):
    key = mock_server.cli_json("keys", "create", "--tenant", _tenant(mock_server, "tpm-t"), "--tpm", "50")
    assert key["tpm_limit"] == 50
    mock_server.wait_key_accepted(key["key"])
    client = openai.OpenAI(base_url=mock_server.base_url + "/v1", api_key=key["key"], max_retries=0)
    for _ in range(2):  # 30 tokens each (10 prompt + 20 completion)
        client.chat.completions.create(model="mock-model", messages=MESSAGES)
    with pytest.raises(openai.RateLimitError) as exc:
        client.chat.completions.create(model="mock-model", messages=MESSAGES)
    assert exc.value.code == "rate_limit_exceeded"
    headers = exc.value.response.headers
    assert headers["x-ratelimit-limit-tokens"] == "50" and int(headers["retry-after"]) >= 1
    assert headers["x-should-retry"] == "true"


def test_daily_budget_through_the_gateway(mock_server, mock_engine):
    tenant = _tenant(mock_server, "budget-t")
    mock_server.cli("credits", "grant", tenant, "1")
    key = mock_server.cli_json(
        "keys", "create", "--tenant", tenant, "--budget-usd", "0.0001", "--budget-period", "day"
    )
    assert (key["budget_usd"], key["budget_period"]) == ("0.000100000", "day")
    mock_server.wait_key_accepted(key["key"])
    client = openai.OpenAI(base_url=mock_server.base_url + "/v1", api_key=key["key"])  # retries on
    ok = 0
    with pytest.raises(openai.RateLimitError) as exc:
        for _ in range(5):  # each costs $0.000027 and holds about $0.00006 while it runs
            client.chat.completions.create(model="paid-model", messages=MESSAGES, max_tokens=20)
            ok += 1
    assert ok == 2
    assert (exc.value.code, exc.value.type) == ("budget_exceeded", "insufficient_quota")
    assert exc.value.response.headers["x-should-retry"] == "false"
    assert int(exc.value.response.headers["retry-after"]) <= 86_400
    # Credit is untouched beyond the two requests; the tenant's other keys are not limited.
    assert mock_server.cli_json("balance", tenant)["available_nano_usd"] == 10**9 - 2 * 27_000


def _tenant(server, name: str) -> str:
    server.cli("tenants", "create", name)
    return name
