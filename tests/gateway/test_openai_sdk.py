"""The official openai SDK against a live server with the real embedded model."""

from __future__ import annotations

import openai
import pytest
from support.live import http_get

MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def client(engine_server):
    _, key = engine_server.new_key("sdk-tenant")
    return openai.OpenAI(base_url=engine_server.base_url + "/v1", api_key=key, max_retries=0)


def assert_matches(record: dict, usage) -> None:
    assert record["prompt_tokens"] == usage.prompt_tokens
    assert record["completion_tokens"] == usage.completion_tokens
    cached = usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details else 0
    assert record["cached_tokens"] == cached
    assert record["usage_source"] == "engine"


def test_non_streaming_chat_usage_equals_metered_record(engine_server, client):
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello"}], max_tokens=12
    )
    reply = raw.parse()
    request_id = raw.headers["x-request-id"]
    assert reply.choices[0].message.role == "assistant"
    assert reply.usage.completion_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    record = engine_server.record(request_id)
    assert_matches(record, reply.usage)
    assert record["status"] == 200 and record["stream"] is False
    assert record["finish_reason"] == reply.choices[0].finish_reason
    assert record["model"] == MODEL and record["backend"] == "embedded" and record["zone"] == "overseas"
    assert record["client_disconnected"] is False


def test_streaming_chat_with_include_usage(engine_server, client):
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Count to five"}],
        max_tokens=16,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(raw.parse())
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    for c in chunks[:-1]:
        assert c.usage is None
        assert all(choice.index == 0 for choice in c.choices)
    text = "".join(c.choices[0].delta.content or "" for c in chunks[:-1] if c.choices)
    assert text
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish in (["stop"], ["length"])
    record = engine_server.record(raw.headers["x-request-id"])
    assert_matches(record, chunks[-1].usage)
    assert record["stream"] is True and record["finish_reason"] == finish[0]
    assert record["ttft_ms"] is not None and 0 <= record["ttft_ms"] <= record["duration_ms"]


def test_streaming_without_include_usage_is_still_metered(engine_server, client):
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=8, stream=True
    )
    chunks = list(raw.parse())
    assert chunks and all(c.usage is None for c in chunks), "usage chunk leaked to a client that did not ask"
    assert all(c.choices for c in chunks)
    record = engine_server.record(raw.headers["x-request-id"])
    assert record["usage_source"] == "engine"
    assert record["prompt_tokens"] > 0 and 0 < record["completion_tokens"] <= 8


def test_max_completion_tokens_caps_generation(engine_server, client):
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Write a long story about the sea"}],
        max_completion_tokens=5,
        temperature=0.0,
    )
    assert reply.usage.completion_tokens == 5
    assert reply.choices[0].finish_reason == "length"


def test_sampling_parameters_pass_through(client):
    kwargs = dict(
        model=MODEL,
        messages=[{"role": "user", "content": "Name a colour"}],
        max_tokens=10,
        temperature=0.7,
        top_p=0.9,
        seed=1234,
    )
    first = client.chat.completions.create(**kwargs).choices[0].message.content
    second = client.chat.completions.create(**kwargs).choices[0].message.content
    assert first == second  # same seed, same answer: the seed reached the engine


def test_stop_sequence(client):
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Count: 1, 2, 3, 4, 5, 6, 7"}],
        max_tokens=40,
        temperature=0.0,
        stop=[","],
    )
    assert "," not in (reply.choices[0].message.content or "")
    assert reply.choices[0].finish_reason == "stop"


def test_json_response_format(client):
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Give me a JSON object with a name"}],
        max_tokens=30,
        response_format={"type": "json_object"},
    )
    content = reply.choices[0].message.content or ""
    assert content.lstrip().startswith("{")  # grammar-constrained by the engine


def test_completions_endpoint(engine_server, client):
    raw = client.completions.with_raw_response.create(model=MODEL, prompt="Once upon a time", max_tokens=6)
    reply = raw.parse()
    assert reply.choices[0].text
    assert reply.usage.completion_tokens == 6
    record = engine_server.record(raw.headers["x-request-id"])
    assert record["endpoint"] == "completions"
    assert_matches(record, reply.usage)


def test_completions_streaming(engine_server, client):
    raw = client.completions.with_raw_response.create(
        model=MODEL, prompt="The sky is", max_tokens=5, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(raw.parse())
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
    record = engine_server.record(raw.headers["x-request-id"])
    assert_matches(record, chunks[-1].usage)


def test_models_list(client):
    ids = [m.id for m in client.models.list()]
    assert ids == [MODEL]


def test_health_and_metrics(engine_server, client):
    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=2)
    status, body = http_get(engine_server.base_url + "/health")
    assert status == 200
    status, body = http_get(engine_server.base_url + "/metrics")
    text = body.decode()
    assert status == 200
    for name in (
        "tokenport_requests_total",
        "tokenport_tokens_total",
        "tokenport_request_duration_seconds_bucket",
        "tokenport_time_to_first_token_seconds_bucket",
        "tokenport_in_flight_requests",
        'tokenport_backend_healthy{backend="embedded",zone="overseas"} 1.0',
    ):
        assert name in text, name
