"""The customer API: a tenant's own balance and usage, with its own key, never another's."""

from __future__ import annotations

import httpx
import openai
from support.live import wait_until
from support.shapes import assert_openai_error_body

COST_NANO = 27_000  # 10 x $0.30/M + 20 x $1.20/M


def get(server, path: str, secret: str, **params) -> httpx.Response:
    return httpx.get(server.base_url + path, params=params, headers={"Authorization": f"Bearer {secret}"})


def test_balance_and_usage_are_the_tenants_own(mock_server):
    _, mine = mock_server.new_key("acct-a")
    _, theirs = mock_server.new_key("acct-b")
    mock_server.cli("credits", "grant", "acct-a", "1")
    mock_server.cli("credits", "grant", "acct-b", "2", "--promo")
    client = openai.OpenAI(base_url=mock_server.base_url + "/v1", api_key=mine, max_retries=0)

    def call(model: str):
        try:
            return client.chat.completions.with_raw_response.create(
                model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=20
            )
        except openai.RateLimitError:
            return None

    wait_until(lambda: call("paid-model"), 1.0, 0.05, "credit to arrive")
    raws = [call("paid-model"), call("mock-model")]
    for raw in raws:
        mock_server.record(raw.headers["x-request-id"])

    bal = get(mock_server, "/v1/account/balance", mine)
    assert bal.status_code == 200 and bal.headers["x-request-id"]
    body = bal.json()
    assert body["tenant"] == "acct-a"
    assert body["available_nano_usd"] == 10**9 - 2 * COST_NANO
    assert [lot["promo"] for lot in body["lots"]] == [False]
    assert get(mock_server, "/v1/account/balance", theirs).json()["available_nano_usd"] == 2 * 10**9

    by_model = get(mock_server, "/v1/account/usage", mine, group_by="model").json()
    rows = {r["model"]: r for r in by_model["data"]}
    assert rows["paid-model"]["requests"] == 2 and rows["paid-model"]["cost_nano_usd"] == 2 * COST_NANO
    assert rows["mock-model"]["cost_nano_usd"] == 0
    assert by_model["totals"]["requests"] == 3 and by_model["totals"]["cost_usd"] == "0.000054000"
    by_day = get(mock_server, "/v1/account/usage", mine).json()
    assert by_day["group_by"] == "day" and len(by_day["data"]) == 1
    assert by_day["data"][0]["completion_tokens"] == 60
    by_key = get(mock_server, "/v1/account/usage", mine, group_by="key").json()
    assert len(by_key["data"]) == 1
    assert get(mock_server, "/v1/account/usage", theirs).json()["totals"]["requests"] == 0
    future = get(mock_server, "/v1/account/usage", mine, start="2999-01-01T00:00:00Z").json()
    assert future["data"] == [] and future["totals"]["requests"] == 0


def test_account_errors_in_openai_shape(mock_server):
    _, secret = mock_server.new_key("acct-c")
    r = httpx.get(mock_server.base_url + "/v1/account/balance")
    assert r.status_code == 401 and assert_openai_error_body(r)["code"] == "invalid_api_key"
    r = get(mock_server, "/v1/account/usage", secret, group_by="tenant")
    assert r.status_code == 400 and assert_openai_error_body(r)["param"] == "group_by"
    r = get(mock_server, "/v1/account/usage", secret, start="yesterday")
    assert r.status_code == 400 and assert_openai_error_body(r)["param"] == "start"
