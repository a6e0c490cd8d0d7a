"""Plans through the live gateway: included usage, then 429 with reset headers, or overage charged."""

from __future__ import annotations

import openai
import pytest
from support.live import wait_until

MESSAGES = [{"role": "user", "content": "hi"}]


def _client(server, tenant: str) -> openai.OpenAI:
    _, secret = server.new_key(tenant)
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key=secret, max_retries=0)


def _ok(client, model="paid-model"):
    try:
        return client.chat.completions.with_raw_response.create(model=model, messages=MESSAGES, max_tokens=20)
    except openai.RateLimitError:
        return None


def test_plan_covers_usage_then_blocks_with_reset_headers(mock_server):
    mock_server.cli(
        "plans",
        "create",
        "coder",
        "--fee-usd",
        "200",
        "--unit",
        "requests",
        "--five-hour",
        "4",
        "--weekly",
        "100",
        "--multiplier",
        "paid-model=2",
    )
    client = _client(mock_server, "plan-t")  # no credit at all: the plan pays
    mock_server.cli("plans", "assign", "plan-t", "coder")
    first = wait_until(lambda: _ok(client), 1.0, 0.05, "the assignment to reach the server")
    assert "cost" not in first.parse().model_dump()["usage"], "plan-covered requests carry no charge"
    second = _ok(client)  # paid-model weighs 2: 2 + 2 = 4 = the 5-hour limit
    assert second is not None
    with pytest.raises(openai.RateLimitError) as exc:
        client.chat.completions.create(model="paid-model", messages=MESSAGES)
    assert exc.value.code == "plan_quota_exceeded"
    h = exc.value.response.headers
    assert 4 * 3600 < int(h["retry-after"]) <= 5 * 3600
    assert (h["x-ratelimit-limit-plan"], h["x-ratelimit-remaining-plan"], h["x-ratelimit-window-plan"]) == (
        "4",
        "0",
        "5h",
    )
    assert h["x-should-retry"] == "false"

    def settled():
        rows = mock_server.usage("plan-t")["data"]
        return rows if rows and rows[-1]["error_code"] == "plan_quota_exceeded" else None

    records = wait_until(settled, 5, 0.1, "records")
    # Attempts before the assignment reached the server were refused for lack of credit.
    assert all(r["error_code"] == "insufficient_quota" for r in records[:-3])
    assert [(r["status"], r["plan_units"], r["cost_nano_usd"]) for r in records[-3:]] == [
        (200, 2, None),
        (200, 2, None),
        (429, None, None),
    ]
    assert mock_server.cli_json("balance", "plan-t")["available_nano_usd"] == 0


def test_overage_charge_falls_back_to_the_prepaid_balance(mock_server):
    mock_server.cli(
        "plans",
        "create",
        "flex",
        "--fee-usd",
        "20",
        "--unit",
        "tokens",
        "--five-hour",
        "30",
        "--weekly",
        "1000",
        "--overage",
        "charge",
    )
    client = _client(mock_server, "flex-t")  # no credit yet: only the plan can admit it
    mock_server.cli("plans", "assign", "flex-t", "flex")
    covered = wait_until(lambda: _ok(client), 1.0, 0.05, "the assignment")  # 30 tokens: the whole window
    assert "cost" not in covered.parse().model_dump()["usage"]
    assert _ok(client) is None, "past the window, with no credit: insufficient_quota"
    mock_server.cli("credits", "grant", "flex-t", "1")
    charged = wait_until(lambda: _ok(client), 1.0, 0.05, "the credit")
    assert charged.parse().model_dump()["usage"]["cost_nano_usd"] == 27_000
    assert mock_server.cli_json("balance", "flex-t")["available_nano_usd"] == 10**9 - 27_000
