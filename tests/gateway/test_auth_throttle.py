"""Failed authentications throttled per client address (issue 17): a flood of wrong keys gets
429 with Retry-After, a valid key from the same address is still served, and /metrics counts
both kinds of failure."""

from __future__ import annotations

import anthropic
import httpx
import openai
import pytest
from support.live import LiveServer, http_get, mock_config, start_server

from tokenport.gateway.auth_throttle import AuthThrottle
from tokenport.gateway.errors import unauthorized

LIMIT = 60  # above the 401s new_key may see while it polls for its key (1 s at 20 ms)


def test_the_throttle_counts_failures_per_address_per_minute() -> None:
    now, seen = [0.0], []
    throttle = AuthThrottle(3, lambda: now[0], seen.append)
    wrong = unauthorized("Incorrect API key provided")
    assert [throttle.failed("10.0.0.1", wrong).status for _ in range(3)] == [401] * 3
    over = throttle.failed("10.0.0.1", wrong)
    assert over.status == 429 and over.headers == {"retry-after": "60"}
    assert throttle.failed("10.0.0.2", wrong).status == 401  # another address: its own count
    now[0] = 45.5
    assert throttle.failed("10.0.0.1", wrong).headers == {"retry-after": "15"}
    now[0] = 60.0  # a new minute
    assert throttle.failed("10.0.0.1", wrong).status == 401
    assert seen == [False, False, False, True, False, True, False]
    off = AuthThrottle(0, lambda: now[0], seen.append)
    assert all(off.failed("10.0.0.1", wrong) is wrong for _ in range(10))


@pytest.fixture(scope="module")
def server(tmp_path_factory, mock_engine) -> LiveServer:
    cfg = {**mock_config(mock_engine.url), "limits": {"auth_failures_per_minute": LIMIT}}
    live = start_server(tmp_path_factory.mktemp("throttle-home"), cfg)
    yield live
    live.stop()


def failures(server: LiveServer, throttled: bool) -> float:
    text = http_get(server.base_url + "/metrics")[1].decode()
    prefix = f'tokenport_auth_failures_total{{throttled="{str(throttled).lower()}"}}'
    return float(next((ln.split()[-1] for ln in text.splitlines() if ln.startswith(prefix)), 0))


def test_a_wrong_key_flood_is_throttled_and_a_valid_key_still_served(server: LiveServer) -> None:
    _, valid = server.new_key("throttle-tenant")
    body = {"model": "mock-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    url = server.base_url + "/v1/chat/completions"
    # new_key polled with the key until the server loaded it: those 401s count as failures too.
    earlier = int(failures(server, False))
    assert earlier < LIMIT
    statuses = []
    for i in range(LIMIT - earlier + 20):
        r = httpx.post(url, json=body, headers={"authorization": f"Bearer tpk_wrong{i:04d}"})
        statuses.append(r.status_code)
    assert statuses == [401] * (LIMIT - earlier) + [429] * 20
    assert 1 <= int(r.headers["retry-after"]) <= 60 and r.headers["x-should-retry"] == "false"
    assert r.json()["error"]["code"] == "too_many_auth_failures" and r.headers["x-request-id"]
    # A valid key from the same address is served as ever.
    ok = httpx.post(url, json=body, headers={"authorization": f"Bearer {valid}"})
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 2
    assert failures(server, True) >= 20 and failures(server, False) >= LIMIT
    # Every route and protocol: the SDKs see a 429 in their own shape, no key kind differs.
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="tpk_wrong", max_retries=0)
    with pytest.raises(openai.RateLimitError):
        client.models.list()
    claude = anthropic.Anthropic(base_url=server.base_url, api_key="tpk_wrong", max_retries=0)
    with pytest.raises(anthropic.RateLimitError) as exc:
        claude.messages.create(model="mock-model", max_tokens=2, messages=[{"role": "user", "content": "hi"}])
    assert exc.value.body["error"]["type"] == "rate_limit_error"
    no_key = httpx.get(server.base_url + "/v1/account/balance")
    assert no_key.status_code == 429
    assert httpx.get(server.base_url + "/v1/account/balance", headers={"x-api-key": valid}).status_code == 200
