"""Every error the gateway gives: the OpenAI shape, a request id, the right status and code, the
exception the official SDK raises for it, and a usage record for every request that got past
authentication (nothing lost)."""

from __future__ import annotations

import hashlib
import json

import httpx
import openai
import pytest
from support.live import wait_until
from support.shapes import assert_openai_error_body

MODEL = "mock-model"
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
MESSAGES = [{"role": "user", "content": "hi"}]
LIMIT = 4 * 1024 * 1024  # the default max_body_bytes
TENANT = "errors-tenant"


@pytest.fixture(scope="module")
def key(mock_server) -> str:
    return mock_server.new_key(TENANT)[1]


@pytest.fixture(scope="module")
def http(mock_server, key):
    with httpx.Client(
        base_url=mock_server.base_url, timeout=30, headers={"authorization": f"Bearer {key}"}
    ) as client:
        yield client


@pytest.fixture(scope="module")
def anon(mock_server):
    with httpx.Client(base_url=mock_server.base_url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def client(mock_server, key) -> openai.OpenAI:
    return openai.OpenAI(base_url=mock_server.base_url + "/v1", api_key=key, max_retries=0)


DROP = object()  # chat_body(field=DROP) leaves the field out


def chat_body(**overrides) -> dict:
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 4}
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not DROP}


def assert_openai_error(resp: httpx.Response, status: int, code: str | None = None) -> dict:
    """The response is an OpenAI error: {"error": {"message", "type", "param", "code"}}."""
    assert resp.status_code == status, resp.text
    assert resp.headers.get("x-request-id", "").startswith("req_")
    err = assert_openai_error_body(resp)
    if code is not None:
        assert err["code"] == code, err
    return err


def assert_sdk_error(exc: openai.APIStatusError, status: int, code: str | None = None) -> None:
    assert exc.status_code == status
    assert exc.request_id and exc.request_id.startswith("req_")
    assert exc.request_id == exc.response.headers["x-request-id"]
    assert isinstance(exc.body, dict) and set(exc.body) == {"message", "type", "param", "code"}
    if code is not None:
        assert exc.code == code


def records(server, request_ids: list[str], timeout: float = 5.0) -> dict[str, dict]:
    """The usage records of these requests, by request id (one query per poll, not one per id)."""

    def find():
        found = {r["request_id"]: r for r in server.usage(TENANT)["data"] if r["request_id"] in request_ids}
        return found if len(found) == len(set(request_ids)) else None

    return wait_until(find, timeout, 0.1, f"usage records {request_ids}")


# --- 400: malformed bodies and invalid parameters ---------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [b"", b"{", b"not json", b'{"model": "mock-model",}', b"[1, 2]", b'"a string"', b"null", b"\xff\xfe{}"],
    ids=["empty", "truncated", "text", "trailing-comma", "array", "string", "null", "bad-utf8"],
)
@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
def test_malformed_json_is_400(http, raw, path):
    err = assert_openai_error(http.post(path, content=raw), 400, "invalid_json")
    assert err["type"] == "invalid_request_error"


INVALID_CHAT = [
    ("temperature-5", {"temperature": 5}, "temperature"),
    ("temperature-string", {"temperature": "0.5"}, "temperature"),
    ("top_p-2", {"top_p": 2}, "top_p"),
    ("n-2", {"n": 2}, "n"),
    ("max_tokens-0", {"max_tokens": 0}, "max_tokens"),
    ("max_tokens-negative", {"max_tokens": -1}, "max_tokens"),
    ("max_tokens-string", {"max_tokens": "10"}, "max_tokens"),
    ("max_tokens-float", {"max_tokens": 10.5}, "max_tokens"),
    ("max_tokens-bool", {"max_tokens": True}, "max_tokens"),
    ("max_tokens-huge", {"max_tokens": 10**30}, "max_tokens"),
    ("max_completion_tokens-0", {"max_completion_tokens": 0}, "max_completion_tokens"),
    ("presence_penalty-3", {"presence_penalty": 3}, "presence_penalty"),
    ("frequency_penalty--3", {"frequency_penalty": -3}, "frequency_penalty"),
    ("seed-string", {"seed": "42"}, "seed"),
    ("seed-huge", {"seed": 2**64}, "seed"),
    ("model-missing", {"model": DROP}, "model"),
    ("model-empty", {"model": ""}, "model"),
    ("model-number", {"model": 7}, "model"),
    ("messages-missing", {"messages": DROP}, "messages"),
    ("messages-empty", {"messages": []}, "messages"),
    ("messages-not-list", {"messages": "hi"}, "messages"),
    ("messages-item-not-object", {"messages": ["hi"]}, "messages"),
    ("messages-no-role", {"messages": [{"content": "hi"}]}, "messages"),
    ("messages-bad-role", {"messages": [{"role": "wizard", "content": "hi"}]}, "messages"),
    ("messages-bad-content", {"messages": [{"role": "user", "content": 5}]}, "messages"),
    ("stream-yes", {"stream": "yes"}, "stream"),
    ("stream-1", {"stream": 1}, "stream"),
    ("stream_options-without-stream", {"stream_options": {"include_usage": True}}, "stream_options"),
    ("stream_options-not-object", {"stream": True, "stream_options": True}, "stream_options"),
    ("include_usage-string", {"stream": True, "stream_options": {"include_usage": "yes"}}, "stream_options"),
    ("stop-5", {"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ("stop-number", {"stop": 5}, "stop"),
    ("stop-list-of-numbers", {"stop": [1]}, "stop"),
    ("response_format-string", {"response_format": "json"}, "response_format"),
]


@pytest.mark.parametrize(
    ("overrides", "param"), [c[1:] for c in INVALID_CHAT], ids=[c[0] for c in INVALID_CHAT]
)
def test_invalid_chat_parameters_are_400(http, overrides, param):
    err = assert_openai_error(http.post(CHAT, json=chat_body(**overrides)), 400)
    assert err["type"] == "invalid_request_error"
    assert err["param"] == param


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": MODEL}, "prompt"),
        ({"model": MODEL, "prompt": 5}, "prompt"),
        ({"model": MODEL, "prompt": ["a", "b"]}, "prompt"),
        ({"model": MODEL, "prompt": "x", "temperature": 9}, "temperature"),
        ({"prompt": "x"}, "model"),
    ],
)
def test_invalid_completion_parameters_are_400(http, body, param):
    err = assert_openai_error(http.post(COMPLETIONS, json=body), 400)
    assert err["param"] == param


def test_sdk_raises_bad_request_error(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=5)
    assert_sdk_error(info.value, 400)
    assert info.value.param == "temperature"
    assert info.value.type == "invalid_request_error"


def test_valid_request_with_the_same_client_succeeds(http):
    """The control for the 400s above: the base body itself is fine."""
    resp = http.post(CHAT, json=chat_body())
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["message"]["content"]


# --- 401 / 403: authentication and zones --------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"authorization": "Bearer"}, {"authorization": "Basic abc"}, {"x-api-key": ""}],
    ids=["none", "empty-bearer", "basic", "empty-x-api-key"],
)
def test_missing_key_is_401(anon, headers):
    resp = anon.post(CHAT, json=chat_body(), headers=headers)
    assert_openai_error(resp, 401, "invalid_api_key")
    assert resp.json()["error"]["type"] == "authentication_error"
    assert resp.headers["x-should-retry"] == "false"


def test_unknown_key_is_401_authentication_error(mock_server):
    bad = openai.OpenAI(base_url=mock_server.base_url + "/v1", api_key="tpk_" + "x" * 40, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        bad.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert_sdk_error(info.value, 401, "invalid_api_key")


def test_auth_is_checked_before_the_body(anon):
    """An unauthenticated caller learns nothing about the body: a malformed one is still 401."""
    assert_openai_error(anon.post(CHAT, content=b"{"), 401, "invalid_api_key")


def test_x_api_key_header_authenticates(anon, key):
    resp = anon.post(CHAT, json=chat_body(), headers={"x-api-key": key})
    assert resp.status_code == 200, resp.text
    assert resp.json()["object"] == "chat.completion"
    wrong = anon.post(CHAT, json=chat_body(), headers={"x-api-key": key + "x"})
    assert_openai_error(wrong, 401, "invalid_api_key")


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert_sdk_error(info.value, 404, "model_not_found")
    assert info.value.param == "model"


def test_model_of_another_zone_is_403(client):
    with pytest.raises(openai.PermissionDeniedError) as info:
        client.chat.completions.create(model="domestic-model", messages=MESSAGES)
    assert_sdk_error(info.value, 403, "zone_mismatch")
    assert info.value.response.headers["x-should-retry"] == "false"


def test_requesting_another_zone_is_403(client):
    with pytest.raises(openai.PermissionDeniedError) as info:
        client.chat.completions.create(
            model=MODEL, messages=MESSAGES, extra_headers={"x-tokenport-zone": "domestic"}
        )
    assert_sdk_error(info.value, 403, "zone_conflict")
    # the key's own zone, named explicitly, is fine
    ok = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=2, extra_headers={"x-tokenport-zone": "overseas"}
    )
    assert ok.choices[0].finish_reason == "length"


# --- 413: body limit ---------------------------------------------------------------------------


def oversized_body() -> bytes:
    """~5 MiB of valid JSON: only the size is wrong."""
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x" * (5 * 1024 * 1024)}]})
    assert len(body) > LIMIT
    return body.encode()


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
def test_oversized_body_is_413(http, path):
    err = assert_openai_error(http.post(path, content=oversized_body()), 413, "request_too_large")
    assert err["type"] == "invalid_request_error"


def test_oversized_chunked_body_is_413(http):
    """No Content-Length to check up front: the limit holds while the body is read."""
    data = oversized_body()

    def chunks():
        for i in range(0, len(data), 256 * 1024):
            yield data[i : i + 256 * 1024]

    resp = http.post(CHAT, content=chunks())
    assert "content-length" not in resp.request.headers
    assert_openai_error(resp, 413, "request_too_large")


def test_body_at_the_limit_is_not_413(http):
    body = json.dumps(chat_body()).encode()
    padded = body[:-1] + b" " * (LIMIT - len(body)) + b"}"
    assert len(padded) == LIMIT
    resp = http.post(CHAT, content=padded)
    assert resp.status_code == 200, resp.text[:300]


def test_oversized_body_via_sdk(client):
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x" * (5 << 20)}])
    assert_sdk_error(info.value, 413, "request_too_large")


# --- 429: rate limit ---------------------------------------------------------------------------


def test_rate_limit_is_429_with_retry_after(mock_server):
    _, secret = mock_server.new_key("rpm-tenant", rpm=2)
    limited = openai.OpenAI(base_url=mock_server.base_url + "/v1", api_key=secret, max_retries=0)
    for _ in range(2):
        limited.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1)
    with pytest.raises(openai.RateLimitError) as info:
        limited.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1)
    exc = info.value
    assert_sdk_error(exc, 429, "rate_limit_exceeded")
    assert exc.type == "rate_limit_error"
    retry_after = exc.response.headers["retry-after"]
    assert retry_after.isdigit() and 1 <= int(retry_after) <= 60
    assert exc.response.headers["x-ratelimit-limit-requests"] == "2"
    assert exc.response.headers["x-should-retry"] == "true"
    record = mock_server.record(exc.request_id)
    assert record["status"] == 429 and record["error_code"] == "rate_limit_exceeded"
    assert record["completion_tokens"] == 0 and record["usage_source"] == "none"


# --- 5xx: backends -----------------------------------------------------------------------------


def test_no_healthy_backend_is_503(client):
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="dead-model", messages=MESSAGES)
    assert_sdk_error(info.value, 503, "no_healthy_backend")
    assert info.value.response.headers["retry-after"].isdigit()


def test_upstream_400_is_400(mock_server, client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=MODEL, messages=MESSAGES, extra_body={"mock_scenario": "error_400"}
        )
    assert_sdk_error(info.value, 400, "upstream_rejected")
    assert info.value.message and "bad thing" in info.value.message
    record = mock_server.record(info.value.request_id)
    assert record["status"] == 400 and record["error_code"] == "upstream_rejected"
    assert record["backend"] == "mock"


@pytest.mark.parametrize("stream", [False, True])
def test_upstream_500_is_502(mock_server, client, stream):
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(
            model=MODEL, messages=MESSAGES, stream=stream, extra_body={"mock_scenario": "error_500"}
        )
    assert_sdk_error(info.value, 502, "upstream_error")
    assert info.value.type == "server_error"
    assert "exploded" not in json.dumps(info.value.body), "an engine's 5xx text leaked to the client"
    record = mock_server.record(info.value.request_id)
    assert record["status"] == 502 and record["error_code"] == "upstream_error"


def test_midstream_error_reaches_the_client_and_the_record(mock_server, client):
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=MESSAGES, stream=True, extra_body={"mock_scenario": "error_midstream"}
    )
    assert raw.http_response.status_code == 200
    received = []
    with pytest.raises(openai.APIError) as info:
        for chunk in raw.parse():
            received.append(chunk)
    assert "engine failed" in info.value.message
    text = "".join(c.choices[0].delta.content or "" for c in received if c.choices)
    assert text == "tok " * 3  # the mock streams three tokens, then fails
    record = mock_server.record(raw.headers["x-request-id"])
    assert record["error_code"] is not None
    assert record["stream"] is True
    assert record["completion_tokens"] == 3, "tokens streamed before the failure were not metered"


# --- routing errors ----------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
def test_unknown_path_is_404_json(http, method):
    err = assert_openai_error(http.request(method, "/v1/no-such-endpoint"), 404, "not_found")
    assert err["type"] == "invalid_request_error"


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_wrong_method_is_405_json(http, path, method):
    assert_openai_error(http.request(method, path), 405, "method_not_allowed")


# --- nothing lost: every authenticated error is metered ----------------------------------------


def test_every_authenticated_error_has_a_usage_record(mock_server, http):
    cases = [
        (CHAT, {"content": b"{"}, 400, "invalid_json"),
        (CHAT, {"json": chat_body(temperature=5)}, 400, "invalid_request"),
        (COMPLETIONS, {"json": {"model": MODEL}}, 400, "invalid_request"),
        (CHAT, {"json": chat_body(model="no-such-model")}, 404, "model_not_found"),
        (CHAT, {"json": chat_body(model="domestic-model")}, 403, "zone_mismatch"),
        (CHAT, {"json": chat_body(), "headers": {"x-tokenport-zone": "domestic"}}, 403, "zone_conflict"),
        (CHAT, {"json": chat_body(model="dead-model")}, 503, "no_healthy_backend"),
        (CHAT, {"json": chat_body()}, 200, None),
    ]
    sent = {}
    for path, kwargs, status, code in cases:
        resp = http.post(path, **kwargs)
        assert resp.status_code == status, resp.text
        sent[resp.headers["x-request-id"]] = (path, status, code)
    found = records(mock_server, list(sent))
    for rid, (path, status, code) in sent.items():
        record = found[rid]
        assert record["status"] == status, (rid, record)
        assert record["error_code"] == code, (rid, record)
        assert record["endpoint"] == ("chat" if path == CHAT else "completions")
        assert record["tenant"] == TENANT
    # A model we do not serve is client text: recorded as its hash, never as typed.
    unknown = hashlib.sha256(b"no-such-model").hexdigest()[:16]
    assert found[next(r for r, c in sent.items() if c[1] == 404)]["model"] == f"sha256:{unknown}"


def test_unauthenticated_requests_are_not_metered(mock_server, anon, http):
    rejected = anon.post(CHAT, json=chat_body())
    assert rejected.status_code == 401
    # a later authenticated request is metered, so the writer has flushed past the rejected one
    later = http.post(CHAT, json=chat_body())
    assert later.status_code == 200
    mock_server.record(later.headers["x-request-id"])
    ids = {r["request_id"] for r in mock_server.usage()["data"]}
    assert rejected.headers["x-request-id"] not in ids
