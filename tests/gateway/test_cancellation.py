"""A client that disconnects mid-stream stops the engine, and what was generated is metered."""

from __future__ import annotations

import json
import math
import re
import time

import httpx
import openai
from support.live import http_get, wait_until


def engine_metric(server, name: str) -> float:
    text = http_get(server.engine_url + "/metrics")[1].decode()
    return float(re.search(rf"^llamacpp:{name} (\S+)$", text, re.M).group(1))


def gateway_metric(server, name: str) -> float:
    text = http_get(server.base_url + "/metrics")[1].decode()
    return float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))


def test_disconnect_stops_the_embedded_engine_and_meters_generated_tokens(engine_server):
    _, secret = engine_server.new_key("cancel-tenant")
    client = openai.OpenAI(base_url=engine_server.base_url + "/v1", api_key=secret, max_retries=0)
    predicted_before = engine_metric(engine_server, "tokens_predicted_total")

    raw = client.chat.completions.with_raw_response.create(
        model="smollm2-135m-instruct",
        messages=[{"role": "user", "content": "Write a very long story about a lighthouse keeper."}],
        max_tokens=1500,
        temperature=0.8,
        stream=True,
    )
    request_id = raw.headers["x-request-id"]
    stream = raw.parse()
    received = 0
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            received += 1
        if received >= 20:
            break
    assert engine_metric(engine_server, "requests_processing") == 1
    stream.close()  # the client goes away mid-generation

    wait_until(lambda: engine_metric(engine_server, "requests_processing") == 0, 3.0, 0.05, "engine to stop")
    generated = engine_metric(engine_server, "tokens_predicted_total") - predicted_before
    time.sleep(0.5)
    assert engine_metric(engine_server, "tokens_predicted_total") - predicted_before == generated
    assert 20 <= generated < 1500, "the engine generated on after the client left"

    record = engine_server.record(request_id)
    assert record["client_disconnected"] is True
    assert record["usage_source"] == "progress"
    # Metered: what the engine reported producing before the connection closed.
    assert received <= record["completion_tokens"] <= generated
    assert generated - record["completion_tokens"] <= 3
    assert record["prompt_tokens"] > 0


def test_disconnect_cancels_mock_upstream(mock_server, mock_engine):
    _, secret = mock_server.new_key("cancel-mock")
    client = openai.OpenAI(base_url=mock_server.base_url + "/v1", api_key=secret, max_retries=0)
    mock_engine.reset()
    raw = client.chat.completions.with_raw_response.create(
        model="mock-model",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        max_tokens=20,
        extra_body={"mock_chunk_delay_ms": 100},
    )
    stream = raw.parse()
    got = 0
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            got += 1
        if got == 3:
            break
    assert gateway_metric(mock_server, "tokenport_in_flight_requests") == 1
    stream.close()
    wait_until(lambda: mock_engine.stats()["streams_cancelled"] == 1, 3.0, 0.05, "mock to see the cancel")
    record = mock_server.record(raw.headers["x-request-id"])
    assert gateway_metric(mock_server, "tokenport_in_flight_requests") == 0
    assert record["client_disconnected"] is True
    assert record["usage_source"] == "progress"
    assert 3 <= record["completion_tokens"] < 20
    produced = mock_engine.stats()["tokens_generated"]
    assert produced - 1 <= record["completion_tokens"] <= produced


def test_closing_right_after_done_is_not_a_disconnect(mock_server):
    """A client that hangs up as soon as it reads [DONE] had the whole answer: billed in full."""
    _, secret = mock_server.new_key("done-closer")
    body = {"model": "mock-model", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    ids = []
    with httpx.Client(base_url=mock_server.base_url, timeout=10) as http:
        for _ in range(20):
            with http.stream(
                "POST", "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {secret}"}
            ) as r:
                for line in r.iter_lines():
                    if line == "data: [DONE]":
                        break  # close without reading the end of the chunked body
                ids.append(r.headers["x-request-id"])
    mock_server.record(ids[-1])  # the writer has caught up
    records = {r["request_id"]: r for r in mock_server.usage("done-closer")["data"]}
    for rid in ids:
        record = records[rid]
        assert record["client_disconnected"] is False
        assert (record["usage_source"], record["completion_tokens"]) == ("engine", 20)


def test_non_streaming_disconnect_is_billed_in_full(mock_server, mock_engine):
    """Documented choice: a non-streaming generation runs to its end (bounded by max_tokens) and is
    billed from the engine's usage, marked client_disconnected."""
    _, secret = mock_server.new_key("nonstream-leaver")
    body = {"model": "mock-model", "messages": [{"role": "user", "content": "hi"}], "mock_chunk_delay_ms": 50}
    with httpx.Client(base_url=mock_server.base_url, timeout=0.3) as http:
        try:
            http.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {secret}"})
        except httpx.ReadTimeout:
            pass  # the client gave up and closed the connection
        else:
            raise AssertionError("the mock answered before the client gave up")
    usage = wait_until(
        lambda: (u := mock_server.usage("nonstream-leaver"))["data"] and u, 5, 0.1, "the record"
    )
    (record,) = usage["data"]
    assert record["client_disconnected"] is True
    assert (record["status"], record["usage_source"], record["completion_tokens"]) == (200, "engine", 20)


def test_a_cut_stream_from_an_engine_with_no_running_counts_bills_its_prompt(mock_server, mock_engine):
    """A `kind = "openai"` engine (here the domestic zone's backend) reports no running counts: a
    stream cut short is billed the chunks delivered and the prompt estimated from the body."""
    _, secret = mock_server.new_key("cancel-openai-kind", zone="domestic")
    raw = json.dumps(
        {
            "model": "domestic-model",
            "messages": [{"role": "user", "content": "a prompt of some length " * 8}],
            "stream": True,
            "max_tokens": 20,
            "mock_chunk_delay_ms": 100,
        }
    ).encode()
    got = 0
    with httpx.stream(
        "POST",
        mock_server.base_url + "/v1/chat/completions",
        content=raw,
        headers={"authorization": f"Bearer {secret}", "content-type": "application/json"},
    ) as r:
        rid = r.headers["x-request-id"]
        for line in r.iter_lines():
            if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                got += 1
            if got == 3:
                break
    record = mock_server.record(rid)
    assert record["client_disconnected"] is True and record["usage_source"] == "chunks"
    assert record["prompt_tokens"] == math.ceil(len(raw) / 4)  # not 0: the body's bytes / 4
    assert 3 <= record["completion_tokens"] < 20
