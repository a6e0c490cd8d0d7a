"""Property-based: whatever bytes a key holder POSTs, the gateway never answers 5xx (the mock engine
behind it is healthy), and every answer that is not a valid completion is an OpenAI-shaped error
with a request id."""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from support.shapes import assert_openai_error_body

MODEL = "mock-model"
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
LIMIT = 4 * 1024 * 1024  # the default max_body_bytes
TENANT = "fuzz-tenant"

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
FEW = settings(FUZZ, max_examples=20)

# Valid bodies: a short generation with no delay, so an accepted request answers fast.
BASE = {
    CHAT: {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 3,
        "mock_chunk_delay_ms": 0,
    },
    COMPLETIONS: {"model": MODEL, "prompt": "hi", "max_tokens": 3, "mock_chunk_delay_ms": 0},
}
FIELDS = [
    "model",
    "messages",
    "prompt",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "n",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "user",
    "tools",
    "tool_choice",
    "response_format",
    "parallel_tool_calls",
    "metadata",
    "suffix",
    "echo",
    "best_of",
]
MESSAGE_FIELDS = ["role", "content", "name", "tool_calls", "tool_call_id"]
PLACEHOLDER = "\x00placeholder\x00"


@pytest.fixture(scope="module")
def http(mock_server):
    _, key = mock_server.new_key(TENANT)
    with httpx.Client(
        base_url=mock_server.base_url, timeout=60, headers={"authorization": f"Bearer {key}"}
    ) as client:
        yield client


# --- checking one answer -----------------------------------------------------------------------


def check(resp: httpx.Response) -> None:
    """Never 5xx; a 200 is a complete, valid completion; anything else is an OpenAI error."""
    assert resp.headers.get("x-request-id", "").startswith("req_"), resp.headers
    if currently_in_test_context():
        event(f"status {resp.status_code}")  # --hypothesis-show-statistics: how many got through
    assert resp.status_code < 500, f"{resp.status_code}: {resp.text[:500]}"
    if resp.status_code == 200:
        check_completion(resp)
        return
    assert_openai_error_body(resp)


def check_completion(resp: httpx.Response) -> None:
    if resp.headers["content-type"].startswith("text/event-stream"):
        events = [e for e in resp.text.split("\n\n") if e.strip()]
        assert events and events[-1] == "data: [DONE]", resp.text[-500:]
        for event in events[:-1]:
            assert event.startswith("data: ")
            obj = json.loads(event[6:])
            assert "error" not in obj, obj
            assert obj["object"] in ("chat.completion.chunk", "text_completion")
        return
    obj = resp.json()
    assert obj["object"] in ("chat.completion", "text_completion"), obj
    assert obj["choices"] and obj["choices"][0]["finish_reason"] in ("stop", "length")
    assert obj["usage"]["completion_tokens"] >= 0


# --- strategies --------------------------------------------------------------------------------

paths = st.sampled_from([CHAT, COMPLETIONS])
huge_ints = st.sampled_from(
    [10**30, -(10**30), 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64 - 1, 2**64, 10**400, -(10**400)]
)
odd_floats = st.sampled_from(
    [1e308, -1e308, 1.7976931348623157e308, 5e-324, -0.0, float("nan"), float("inf"), float("-inf")]
)
numberish = st.sampled_from(
    ["NaN", "nan", "Infinity", "-Infinity", "1e309", "1e308", "0x10", "1_0", "", " 1"]
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | huge_ints
    | st.floats()
    | odd_floats
    | numberish
    | st.text(max_size=40)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
depths = st.sampled_from(
    [64, 253, 254, 255, 256, 300, 512, 1000, 1022, 1023, 1024, 1025, 2000]
) | st.integers(2, 2000)


def nested(depth: int, kind: str) -> str:
    if kind == "array":
        return "[" * depth + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


def encode(body: object) -> bytes:
    return json.dumps(body, allow_nan=True).encode()


@st.composite
def mutated_bodies(draw) -> tuple[str, bytes]:
    """A valid body with one to four fields replaced by values of any type, or removed."""
    path = draw(paths)
    body = json.loads(json.dumps(BASE[path]))
    for _ in range(draw(st.integers(1, 4))):
        target = draw(st.sampled_from(["top", "top", "top", "message", "new"]))
        value = draw(json_values)
        if (
            target == "message"
            and path == CHAT
            and isinstance(body.get("messages"), list)
            and body["messages"]
        ):
            msg = body["messages"][0]
            if isinstance(msg, dict):
                msg[draw(st.sampled_from(MESSAGE_FIELDS))] = value
                continue
        name = draw(st.text(max_size=12)) if target == "new" else draw(st.sampled_from(FIELDS))
        if draw(st.integers(0, 9)) == 0:
            body.pop(name, None)
        else:
            body[name] = value
    return path, encode(body)


@st.composite
def deep_bodies(draw) -> tuple[str, bytes]:
    """Deeply nested arrays/objects: as the whole body, or as the value of one field."""
    path = draw(paths)
    text = nested(draw(depths), draw(st.sampled_from(["array", "object"])))
    where = draw(st.sampled_from(["whole", *FIELDS, "message-content"]))
    if where == "whole":
        return path, text.encode()
    body = json.loads(json.dumps(BASE[path]))
    if where == "message-content" and path == CHAT:
        body["messages"][0]["content"] = PLACEHOLDER
    else:
        body[where] = PLACEHOLDER
    return path, encode(body).replace(json.dumps(PLACEHOLDER).encode(), text.encode())


bad_utf8 = st.sampled_from(
    [
        b"\xff",
        b"\xfe",
        b"\x80",
        b"\xc0\xaf",
        b"\xc3\x28",
        b"\xe2\x28\xa1",
        b"\xf0\x28\x8c\xbc",
        b"\xed\xa0\x80",
        b"\xf4\x90\x80\x80",
        b"\xf8\xa1\xa1\xa1\xa1",
        b"\xe2\x82",
    ]
) | st.binary(min_size=1, max_size=8).filter(lambda b: not _is_utf8(b))
bad_escapes = st.sampled_from(["\\ud800", "\\udfff", "\\ud800\\u0041", "\\u0000", "\\uZZZZ", "\\x41", "\\"])


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@st.composite
def corrupted_bodies(draw) -> tuple[str, bytes]:
    """Byte-level damage to a valid body: invalid UTF-8, bad escapes, truncation, binary noise."""
    path = draw(paths)
    raw = encode(BASE[path])
    how = draw(st.sampled_from(["utf8-in-string", "utf8-anywhere", "escape", "truncate", "binary", "splice"]))
    if how == "utf8-in-string":
        return path, raw.replace(b'"hi"', b'"h' + draw(bad_utf8) + b'i"', 1)
    if how == "utf8-anywhere":
        at = draw(st.integers(0, len(raw)))
        return path, raw[:at] + draw(bad_utf8) + raw[at:]
    if how == "escape":
        return path, raw.replace(b'"hi"', b'"' + draw(bad_escapes).encode() + b'"', 1)
    if how == "truncate":
        return path, raw[: draw(st.integers(0, len(raw) - 1))]
    if how == "binary":
        return path, draw(st.binary(max_size=4096))
    at = draw(st.integers(0, len(raw)))
    return path, raw[:at] + draw(st.binary(min_size=1, max_size=16)) + raw[at:]


@st.composite
def duplicate_key_bodies(draw) -> tuple[str, bytes]:
    """A field given twice (the JSON spec leaves the meaning open; the gateway must not fail)."""
    path = draw(paths)
    raw = encode(BASE[path])
    fields = [f for f in BASE[path] if f != "mock_chunk_delay_ms"]  # a long delay is not a gateway fault
    name = draw(st.sampled_from([*fields, "stream", "stream_options", "n", "stop"]))
    extra = json.dumps(name).encode() + b":" + json.dumps(draw(json_values), allow_nan=True).encode()
    if draw(st.booleans()):
        return path, raw[:-1] + b"," + extra + b"}"
    return path, b"{" + extra + b"," + raw[1:]


@st.composite
def long_string_bodies(draw) -> tuple[str, bytes]:
    """Very long strings in one field, the whole body still under the limit (so it is parsed)."""
    path = draw(paths)
    body = json.loads(json.dumps(BASE[path]))
    char = draw(st.sampled_from(["x", "\u00e9", "\u4e2d", "\U0001f600", "\\", '"', "\n"]))
    cost = len(json.dumps(char)) - 2  # bytes per character once encoded
    budget = (LIMIT - 1024 - len(encode(body))) // cost
    size = draw(st.sampled_from([300, 10_000, 1_000_000, budget]) | st.integers(1, budget))
    value = char * min(size, budget)
    where = draw(st.sampled_from(["model", "user", "stop", "prompt", "content", "tool_choice", "new-key"]))
    if where == "content" and path == CHAT:
        body["messages"][0]["content"] = value
    elif where == "new-key":
        body[value] = 1
    else:
        body[where] = value
    return path, encode(body)


# --- properties --------------------------------------------------------------------------------


@FUZZ
@given(case=mutated_bodies())
def test_wrong_types_in_any_field(http, case):
    path, raw = case
    check(http.post(path, content=raw))


@FUZZ
@given(case=deep_bodies())
def test_deeply_nested_json(http, case):
    path, raw = case
    check(http.post(path, content=raw))


@FUZZ
@given(case=corrupted_bodies())
def test_corrupted_bytes(http, case):
    path, raw = case
    check(http.post(path, content=raw))


@FUZZ
@given(case=duplicate_key_bodies())
def test_duplicate_keys(http, case):
    path, raw = case
    check(http.post(path, content=raw))


@FEW
@given(case=long_string_bodies())
def test_long_strings(http, case):
    path, raw = case
    assert len(raw) <= LIMIT
    check(http.post(path, content=raw))


@FUZZ
@given(path=paths, value=json_values)
def test_any_json_document(http, path, value):
    check(http.post(path, content=encode(value)))


# --- fixed cases: the limit, and the nesting regression --------------------------------------


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
@pytest.mark.parametrize("size", [LIMIT + 1, LIMIT + 4096, 2 * LIMIT])
@pytest.mark.parametrize("chunked", [False, True])
def test_over_the_limit_is_413(http, path, size, chunked):
    raw = b"{" + b" " * (size - 2) + b"}"
    assert len(raw) == size
    step = 1 << 20
    content = iter([raw[i : i + step] for i in range(0, size, step)]) if chunked else raw
    resp = http.post(path, content=content)
    check(resp)
    assert resp.status_code == 413
    assert resp.json()["error"]["code"] == "request_too_large"


@pytest.mark.parametrize("depth", [254, 300, 1023])
@pytest.mark.parametrize("field", ["metadata", "logit_bias", "user"])
def test_nested_passthrough_field_is_a_client_error(mock_server, http, field, depth):
    """JSON the parser accepts (depth < 1024) but that cannot be re-encoded for the engine
    (orjson.dumps stops at depth 254) must be refused as a 400, not crash into a 500, and the
    usage record must carry the status the client got."""
    body = json.loads(json.dumps(BASE[CHAT]))
    body[field] = PLACEHOLDER
    raw = encode(body).replace(json.dumps(PLACEHOLDER).encode(), nested(depth, "array").encode())
    resp = http.post(CHAT, content=raw)
    check(resp)
    assert resp.status_code == 400


def test_usage_record_has_the_status_the_client_got(mock_server, http):
    """Whatever goes wrong after authentication, the record says what the client was answered
    (here: the nesting case above, whatever status it ends up with)."""
    body = json.loads(json.dumps(BASE[CHAT]))
    body["metadata"] = PLACEHOLDER
    raw = encode(body).replace(json.dumps(PLACEHOLDER).encode(), nested(300, "array").encode())
    resp = http.post(CHAT, content=raw)
    record = mock_server.record(resp.headers["x-request-id"])
    assert record["status"] == resp.status_code, record
    assert (record["error_code"] is None) == (resp.status_code == 200), record


# A content block's or an input item's `type` that is not a string (a list, an object) is the
# client's error in the protocol's own shape, not a 500 (it once reached a set lookup unhashed).
ODD_TYPES = [["text"], {"a": 1}, 3]


@pytest.mark.parametrize("odd", ODD_TYPES, ids=["list", "object", "number"])
def test_a_block_type_that_is_not_a_string_is_a_400(http, odd):
    for content in (
        [{"type": odd, "text": "hi"}],
        [{"type": "tool_result", "tool_use_id": "t", "content": [{"type": odd}]}],
    ):
        r = http.post(
            "/v1/messages",
            json={"model": MODEL, "max_tokens": 3, "messages": [{"role": "user", "content": content}]},
        )
        assert r.status_code == 400, r.text
        assert r.json()["type"] == "error" and r.json()["error"]["type"] == "invalid_request_error"
        assert "'type'" in r.json()["error"]["message"]
        assert r.headers["request-id"].startswith("req_")
    r = http.post("/v1/responses", json={"model": MODEL, "input": [{"type": odd, "content": "hi"}]})
    assert r.status_code == 400, r.text
    err = assert_openai_error_body(r)
    assert "'type'" in err["message"] and err["param"] == "input"
