"""An engine that lies about its usage (issue 17): negative, absurd, unreadable or over-limit
token counts are settled on their bounds, never a 500, a lost record, a stuck hold or a locked-out
tenant. The mock engine reports what the request's `mock_usage` says; the gateway is real."""

from __future__ import annotations

import json

import httpx
import pytest
from support.live import LiveServer, http_get, wait_until

from tokenport.gateway.sse import INVALID, Counts, usage_counts
from tokenport.gateway.usage_guard import UsageLimits

GRANT_NANO = 10**9  # $1
MAX_TOKENS = 16  # the mock makes 20 tokens; this request allows 16: 16 chunks reach the client
LIES = {
    "negative": ({"completion_tokens": -5}, (10, 16)),  # the 16 chunks streamed stand for it
    "absurd": ({"prompt_tokens": 2**62, "completion_tokens": 2**62}, None),  # bounded by the body
    "over the limit": ({"completion_tokens": 100_000}, (10, MAX_TOKENS)),
    "unreadable": ({"completion_tokens": "NaN", "prompt_tokens": True}, (0, 16)),
}


@pytest.fixture(scope="module")
def funded(mock_server: LiveServer) -> str:
    _, secret = mock_server.new_key("lying-engine")
    mock_server.cli("credits", "grant", "lying-engine", "1")
    wait_until(lambda: balance(mock_server) == GRANT_NANO, 5, 0.05, "the grant")
    return secret


def balance(server: LiveServer) -> int:
    return server.cli_json("balance", "lying-engine")["available_nano_usd"]


def bounded_metric(server: LiveServer) -> float:
    text = http_get(server.base_url + "/metrics")[1].decode()
    lines = [ln for ln in text.splitlines() if ln.startswith('tokenport_usage_bounded_total{backend="mock"}')]
    return float(lines[0].split()[-1]) if lines else 0.0


def ask(server: LiveServer, key: str, stream: bool, lie: dict | None) -> tuple[int, dict, str]:
    """(status, the usage the client was told, request id)."""
    body = {
        "model": "paid-model",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": MAX_TOKENS,
        "stream": stream,
        **({"mock_usage": lie} if lie else {}),
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    headers = {"authorization": f"Bearer {key}"}
    url = server.base_url + "/v1/chat/completions"
    if not stream:
        r = httpx.post(url, json=body, headers=headers, timeout=30)
        return r.status_code, r.json().get("usage", {}), r.headers["x-request-id"]
    with httpx.stream("POST", url, json=body, headers=headers, timeout=30) as r:
        lines = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
        rid = r.headers["x-request-id"]
    assert lines[-1] == "data: [DONE]", lines[-3:]
    usage = json.loads(lines[-2][6:])["usage"]
    return r.status_code, usage, rid


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("case", list(LIES))
def test_a_lying_engine_is_settled_on_the_bounds(mock_server, funded, case: str, stream: bool) -> None:
    lie, expected = LIES[case]
    if not stream and case in ("negative", "unreadable"):
        expected = (expected[0], 0)  # no chunks streamed to stand for the completion
    before, flagged = balance(mock_server), bounded_metric(mock_server)
    status, usage, rid = ask(mock_server, funded, stream, lie)
    assert status == 200
    record = mock_server.record(rid)
    assert record["usage_source"] == "bounded" and record["status"] == 200
    told = (usage["prompt_tokens"], usage["completion_tokens"])
    assert told == (record["prompt_tokens"], record["completion_tokens"])  # told what is billed
    assert usage["total_tokens"] == sum(told)
    if expected is not None:
        assert told == expected
    else:  # at most the body's bytes plus a chat template's tokens; at most what was allowed
        assert 0 < record["prompt_tokens"] <= 1000 and record["completion_tokens"] == MAX_TOKENS
    assert usage["cost_nano_usd"] == record["cost_nano_usd"] >= 0
    # The hold is released: what is left is the grant less what was charged, nothing held.
    wait_until(lambda: balance(mock_server) == before - record["cost_nano_usd"], 5, 0.05, "settlement")
    assert bounded_metric(mock_server) == flagged + 1
    status, usage, rid = ask(mock_server, funded, stream, None)  # the tenant's next request
    assert status == 200 and usage["completion_tokens"] == MAX_TOKENS
    assert mock_server.record(rid)["usage_source"] == "engine"


def test_counts_are_read_without_raising() -> None:
    odd = {"prompt_tokens": "12", "completion_tokens": 3.0, "prompt_tokens_details": {"cached_tokens": None}}
    assert usage_counts(odd) == Counts(INVALID, 0, 3)
    assert usage_counts({"prompt_tokens": float("nan"), "completion_tokens": 2.5}) == Counts(
        INVALID, 0, INVALID
    )
    assert usage_counts({"prompt_tokens_details": "x"}) == Counts(0, 0, 0)
    limits = UsageLimits(prompt=100, completion=10)
    assert limits.bound(Counts(50, 10, 5)) == (Counts(50, 10, 5), False)
    assert limits.bound(Counts(50, 60, 5)) == (Counts(50, 50, 5), True)  # cached above the prompt
    assert limits.bound(Counts(500, 0, -1), streamed=7) == (Counts(100, 0, 7), True)
    assert limits.bound(Counts(5, 0, 2**62), streamed=7) == (Counts(5, 0, 10), True)
