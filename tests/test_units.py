"""Pure units, no I/O: key secrets, rate limits, the SSE watcher, the upstream body, settings."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import orjson
import pytest

from tokenport.clock import FakeClock
from tokenport.config import BACKEND_KINDS, ConfigError, settings_from_dict
from tokenport.gateway.errors import ApiError
from tokenport.gateway.ratelimit import RateLimiter
from tokenport.gateway.relay import upstream_payload
from tokenport.gateway.sse import Counts, StreamWatcher
from tokenport.tenancy.keys import KEY_PREFIX, NAME_RE, ZONE_RE, extract_secret, generate_key, hash_key

# --- keys -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("authorization", "x_api_key", "expected"),
    [
        (b"Bearer tpk_abc", None, "tpk_abc"),
        (b"bearer tpk_abc", None, "tpk_abc"),  # the scheme is case-insensitive
        (b"BEARER   tpk_abc  ", None, "tpk_abc"),
        (None, b"tpk_xyz", "tpk_xyz"),
        (None, b"  tpk_xyz ", "tpk_xyz"),
        (b"Bearer tpk_abc", b"tpk_xyz", "tpk_abc"),  # Authorization wins when both are given
        (b"Basic dXNlcjpwYXNz", None, None),  # wrong scheme, nothing else
        (b"Basic dXNlcjpwYXNz", b"tpk_xyz", "tpk_xyz"),  # wrong scheme falls back to x-api-key
        (b"tpk_abc", None, None),  # a bare key is not a Bearer credential
        (b"Bearer ", None, None),
        (b"Bearer    ", None, None),
        (None, b"   ", None),
        (b"", b"", None),
        (None, None, None),
    ],
)
def test_extract_secret(authorization, x_api_key, expected) -> None:
    assert extract_secret(authorization, x_api_key) == expected


def test_hash_key_is_stable_sha256() -> None:
    secret = "tpk_" + "A1b2" * 10
    assert hash_key(secret) == hashlib.sha256(secret.encode()).hexdigest()
    assert hash_key(secret) == hash_key(secret)
    assert hash_key(secret) != hash_key(secret + "x")
    # a known vector, so a change of algorithm or encoding cannot slip through
    assert hash_key("tpk_test") == "e4bb063934d7ad843590e506e3ffe09d20e2924c9a755568de6f5c9e3ee13da6"


def test_generate_key_shape() -> None:
    keys = [generate_key() for _ in range(20)]
    for k in keys:
        assert k.secret.startswith(KEY_PREFIX)
        assert len(k.secret) == len(KEY_PREFIX) + 40
        assert k.secret[len(KEY_PREFIX) :].isalnum()
        assert k.prefix == k.secret[:12]
        assert k.key_hash == hash_key(k.secret)
        assert k.id.startswith("key_")
    assert len({k.secret for k in keys}) == len(keys)
    assert len({k.id for k in keys}) == len(keys)


@pytest.mark.parametrize("name", ["a", "Acme", "acme-corp_1.eu", "9lives", "x" * 128])
def test_name_pattern_accepts(name: str) -> None:
    assert NAME_RE.match(name)


@pytest.mark.parametrize("zone", ["overseas", "domestic", "eu-west-1", "z"])
def test_zone_pattern_accepts(zone: str) -> None:
    assert ZONE_RE.match(zone)


# --- rate limiter -----------------------------------------------------------------------------


def test_rate_limiter_rpm3_admits_three_then_429_then_refills() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock)
    for _ in range(3):
        limiter.admit("key_a", 3)
    with pytest.raises(ApiError) as exc:
        limiter.admit("key_a", 3)
    err = exc.value
    assert err.status == 429
    assert err.code == "rate_limit_exceeded"
    assert err.type == "rate_limit_error"
    assert err.headers["retry-after"] == "20"  # one token per 60/3 = 20 s
    assert err.headers["x-ratelimit-limit-requests"] == "3"

    # other keys have their own bucket
    limiter.admit("key_b", 3)

    clock.advance(19)
    with pytest.raises(ApiError) as exc:
        limiter.admit("key_a", 3)
    assert int(exc.value.headers["retry-after"]) >= 1

    clock.advance(1)  # 20 s after the refusal in total: exactly one token is back
    limiter.admit("key_a", 3)
    with pytest.raises(ApiError):
        limiter.admit("key_a", 3)


def test_rate_limiter_refill_caps_at_rpm() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock)
    limiter.admit("k", 2)
    clock.advance(3600)  # an hour idle does not bank more than rpm tokens
    limiter.admit("k", 2)
    limiter.admit("k", 2)
    with pytest.raises(ApiError):
        limiter.admit("k", 2)


def test_rate_limiter_unlimited_by_default() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock)  # default_rpm=0
    for _ in range(1000):
        limiter.admit("k", None)
    unlimited = RateLimiter(clock, default_rpm=0)
    for _ in range(1000):
        unlimited.admit("k", 0)


def test_rate_limiter_default_rpm_applies_to_keys_without_a_limit() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock, default_rpm=2)
    limiter.admit("k", None)
    limiter.admit("k", None)
    with pytest.raises(ApiError) as exc:
        limiter.admit("k", None)
    assert exc.value.status == 429
    assert exc.value.headers["retry-after"] == "30"
    # the key's own limit beats the default
    for _ in range(5):
        limiter.admit("big", 5)


# --- SSE watcher ------------------------------------------------------------------------------


def ev(obj: dict, spaces: bool = False) -> bytes:
    """One SSE event; compact JSON like llama.cpp / vLLM, or Python's spaced json.dumps."""
    body = json.dumps(obj) if spaces else json.dumps(obj, separators=(",", ":"))
    return b"data: " + body.encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"


def llama_chunk(content: str | None, predicted: int, finish: str | None = None) -> dict:
    delta = {} if content is None else {"content": content}
    return {
        "choices": [{"finish_reason": finish, "index": 0, "delta": delta}],
        "created": 1760000000,
        "id": "chatcmpl-abc",
        "model": "smollm2",
        "system_fingerprint": "b6000",
        "object": "chat.completion.chunk",
        "timings": {
            "cache_n": 4,
            "prompt_n": 7,
            "prompt_ms": 12.5,
            "prompt_per_token_ms": 1.7,
            "prompt_per_second": 560.0,
            "predicted_n": predicted,
            "predicted_ms": 3.1,
            "predicted_per_token_ms": 3.1,
            "predicted_per_second": 322.5,
        },
    }


def llama_stream(usage_on_finish: bool = False) -> list[bytes]:
    role = llama_chunk(None, 0)
    role["choices"][0]["delta"] = {"role": "assistant", "content": None}
    events = [ev(role)]
    events += [ev(llama_chunk(t, i + 1)) for i, t in enumerate(["Hel", "lo", "!"])]
    finish = llama_chunk(None, 3, "stop")
    usage = {
        "completion_tokens": 3,
        "prompt_tokens": 11,
        "total_tokens": 14,
        "prompt_tokens_details": {"cached_tokens": 4},
    }
    if usage_on_finish:
        finish["usage"] = usage
        return [*events, ev(finish), DONE]
    final = {
        "choices": [],
        "created": 1760000000,
        "id": "chatcmpl-abc",
        "model": "smollm2",
        "object": "chat.completion.chunk",
        "usage": usage,
        "timings": llama_chunk(None, 3)["timings"],
    }
    return [*events, ev(finish), ev(final), DONE]


def run(watcher: StreamWatcher, events: list[bytes]) -> list[bytes]:
    out = []
    for e in events:
        fwd = watcher.observe(e)
        if fwd is not None:
            out.append(fwd)
    return out


def test_llamacpp_stream_usage_chunk_dropped_when_client_did_not_ask() -> None:
    events = llama_stream()
    w = StreamWatcher(forward_usage=False)
    out = run(w, events)
    usage_chunk = events[-2]
    assert usage_chunk not in out
    assert out == [e for e in events if e is not usage_chunk]  # everything else byte for byte
    assert w.final == Counts(prompt=11, cached=4, completion=3)
    assert w.progress == Counts(prompt=11, cached=4, completion=3)  # prompt_n + cache_n
    assert w.content_chunks == 3
    assert w.finish_reason == "stop"
    assert w.done
    assert w.error is None


def test_llamacpp_stream_usage_chunk_kept_when_client_asked() -> None:
    events = llama_stream()
    w = StreamWatcher(forward_usage=True)
    assert run(w, events) == events
    assert w.final == Counts(prompt=11, cached=4, completion=3)
    assert w.done


def test_llamacpp_timings_progress_follows_predicted_n() -> None:
    events = llama_stream()
    w = StreamWatcher(forward_usage=False)
    w.observe(events[0])
    assert w.progress == Counts(prompt=11, cached=4, completion=0)
    w.observe(events[1])
    assert w.progress == Counts(prompt=11, cached=4, completion=1)
    w.observe(events[2])
    assert w.progress.completion == 2
    assert w.final is None  # no engine total yet: a cut-off stream settles on progress
    assert not w.done


def test_timings_progress_with_spaces_and_without_cache_n() -> None:
    w = StreamWatcher(forward_usage=False)
    chunk = llama_chunk("x", 5)
    del chunk["timings"]["cache_n"]
    w.observe(ev(chunk, spaces=True))
    assert w.progress == Counts(prompt=7, cached=0, completion=5)


def test_usage_on_final_content_chunk_is_stripped_but_counted() -> None:
    events = llama_stream(usage_on_finish=True)
    w = StreamWatcher(forward_usage=False)
    out = run(w, events)
    assert len(out) == len(events)  # the finish chunk itself is kept
    stripped = out[-2]
    assert stripped.startswith(b"data: ") and stripped.endswith(b"\n\n")
    assert b'"usage"' not in stripped
    obj = orjson.loads(stripped[len(b"data: ") :])
    original = orjson.loads(events[-2][len(b"data: ") :])
    del original["usage"]
    assert obj == original  # only the usage went
    assert obj["choices"][0]["finish_reason"] == "stop"
    assert w.final == Counts(prompt=11, cached=4, completion=3)
    assert w.finish_reason == "stop"
    assert out[:-2] == events[:-2] and out[-1] == DONE


def test_usage_on_final_content_chunk_kept_when_client_asked() -> None:
    events = llama_stream(usage_on_finish=True)
    w = StreamWatcher(forward_usage=True)
    assert run(w, events) == events
    assert w.final == Counts(prompt=11, cached=4, completion=3)


def vllm_chunk(content: str | None, completion: int, finish: str | None = None, choices: bool = True) -> dict:
    obj = {
        "id": "chatcmpl-v1",
        "object": "chat.completion.chunk",
        "created": 1760000000,
        "model": "Qwen/Qwen2.5-7B-Instruct",
        "choices": [
            {
                "index": 0,
                "delta": {} if content is None else {"content": content},
                "logprobs": None,
                "finish_reason": finish,
            }
        ]
        if choices
        else [],
        "usage": {"prompt_tokens": 9, "total_tokens": 9 + completion, "completion_tokens": completion},
    }
    return obj


def vllm_stream() -> list[bytes]:
    role = vllm_chunk(None, 0)
    role["choices"][0]["delta"] = {"role": "assistant", "content": ""}
    return [
        ev(role),
        ev(vllm_chunk("The", 1)),
        ev(vllm_chunk(" sky", 2)),
        ev(vllm_chunk(" is", 3)),
        ev(vllm_chunk(None, 3, "length")),
        ev(vllm_chunk(None, 3, choices=False)),
        DONE,
    ]


def test_vllm_running_usage_on_content_chunks_is_progress() -> None:
    events = vllm_stream()
    w = StreamWatcher(forward_usage=False)
    for i, e in enumerate(events[1:4], start=1):
        w.observe(e)
        assert w.progress == Counts(prompt=9, cached=0, completion=i)
        assert w.final is None  # running counts are never taken for the engine's total
    assert w.content_chunks == 3


def test_vllm_stream_without_client_usage() -> None:
    events = vllm_stream()
    w = StreamWatcher(forward_usage=False)
    out = run(w, events)
    assert events[-2] not in out  # the usage-only chunk (choices: []) is dropped
    assert len(out) == len(events) - 1
    assert b'"usage"' not in out[-2]  # stripped from the finish chunk
    assert orjson.loads(out[-2][6:])["choices"][0]["finish_reason"] == "length"
    assert out[-1] == DONE
    assert w.final == Counts(prompt=9, cached=0, completion=3)
    assert w.finish_reason == "length"
    assert w.content_chunks == 3
    assert w.done


def test_vllm_stream_with_client_usage() -> None:
    events = vllm_stream()
    w = StreamWatcher(forward_usage=True)
    assert run(w, events) == events
    assert w.final == Counts(prompt=9, cached=0, completion=3)


def test_openai_null_usage_on_content_chunks_is_ignored() -> None:
    # OpenAI with include_usage: every chunk carries "usage": null until the last one
    chunk = {
        "id": "c",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}],
        "usage": None,
    }
    w = StreamWatcher(forward_usage=False)
    e = ev(chunk)
    assert w.observe(e) == e
    assert w.final is None and w.progress is None
    assert w.content_chunks == 1


@pytest.mark.parametrize("spaces", [False, True])
@pytest.mark.parametrize("reason", ["stop", "length", "tool_calls", "content_filter"])
def test_finish_reason_extraction(spaces: bool, reason: str) -> None:
    w = StreamWatcher(forward_usage=False)
    w.observe(ev(vllm_chunk("a", 1), spaces=spaces))
    assert w.finish_reason is None  # "finish_reason": null is not a reason
    w.observe(ev(vllm_chunk(None, 1, reason), spaces=spaces))
    assert w.finish_reason == reason


def test_finish_reason_from_text_completion_chunk() -> None:
    w = StreamWatcher(forward_usage=False)
    w.observe(
        b'data: {"id":"cmpl-1","object":"text_completion","choices":[{"text":"","index":0,'
        b'"logprobs":null,"finish_reason":"length"}]}\n\n'
    )
    assert w.finish_reason == "length"


def test_error_event_is_captured_and_forwarded() -> None:
    err = {"error": {"message": "engine failed", "type": "server_error", "code": 500}}
    w = StreamWatcher(forward_usage=False)
    run(w, [ev(vllm_chunk("a", 1))])
    e = ev(err)
    assert w.observe(e) == e
    assert w.error == err["error"]
    assert not w.done


def test_done_sets_done_and_is_forwarded() -> None:
    w = StreamWatcher(forward_usage=False)
    assert not w.done
    assert w.observe(DONE) == DONE
    assert w.done
    assert w.content_chunks == 0


@pytest.mark.parametrize(
    ("payload", "counted"),
    [
        (b'{"choices":[{"delta":{"content":"hi"}}]}', True),
        (b'{"choices": [{"delta": {"content": "hi"}}]}', True),
        (b'{"choices":[{"delta":{"content":"\\"quoted\\""}}]}', True),  # starts with an escaped quote
        (b'{"choices":[{"text":"hi","index":0}]}', True),  # /v1/completions
        (b'{"choices":[{"delta":{"reasoning_content":"think"}}]}', True),
        (b'{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\\"a"}}]}}]}', True),
        (b'{"choices":[{"delta":{"role":"assistant","content":""}}]}', False),  # role chunk
        (b'{"choices":[{"delta":{"content":null}}]}', False),
        (b'{"choices":[{"delta":{},"finish_reason":"stop"}]}', False),
    ],
)
def test_content_chunk_counting(payload: bytes, counted: bool) -> None:
    w = StreamWatcher(forward_usage=False)
    w.observe(b"data: " + payload + b"\n\n")
    assert w.content_chunks == (1 if counted else 0)


def test_unparseable_usage_event_is_forwarded_untouched() -> None:
    w = StreamWatcher(forward_usage=False)
    broken = b'data: {"usage": {"prompt_tokens": 1\n\n'
    assert w.observe(broken) == broken
    assert w.final is None


# --- upstream payload -------------------------------------------------------------------------


BASE = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


def test_upstream_payload_stream_llamacpp() -> None:
    body = {**BASE, "stream": True}
    sent = orjson.loads(upstream_payload(body, True, "llamacpp"))
    assert sent["stream_options"] == {"include_usage": True}
    assert sent["timings_per_token"] is True
    assert {k: v for k, v in sent.items() if k not in ("stream_options", "timings_per_token")} == body
    assert "stream_options" not in body and "timings_per_token" not in body  # caller's dict untouched


@pytest.mark.parametrize("kind", ["vllm", "sglang"])
def test_upstream_payload_stream_continuous_usage(kind: str) -> None:
    body = {**BASE, "stream": True, "stream_options": {"include_usage": False}}
    sent = orjson.loads(upstream_payload(body, True, kind))
    assert sent["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}
    assert "timings_per_token" not in sent
    assert body["stream_options"] == {"include_usage": False}  # not mutated


def test_upstream_payload_stream_openai_kind_only_asks_usage() -> None:
    body = {**BASE, "stream": True, "stream_options": {"include_usage": True, "other": 1}}
    sent = orjson.loads(upstream_payload(body, True, "openai"))
    assert sent["stream_options"] == {"include_usage": True, "other": 1}
    assert "timings_per_token" not in sent


def test_upstream_payload_max_completion_tokens() -> None:
    body = {"model": "m", "messages": [], "max_completion_tokens": 17}
    sent = orjson.loads(upstream_payload(body, False, "llamacpp"))
    assert sent["max_tokens"] == 17
    assert sent["max_completion_tokens"] == 17
    assert "max_tokens" not in body
    both = {"model": "m", "messages": [], "max_completion_tokens": 17, "max_tokens": 5}
    assert orjson.loads(upstream_payload(both, False, "vllm"))["max_tokens"] == 5  # never overwritten
    streamed = orjson.loads(upstream_payload({**body, "stream": True}, True, "vllm"))
    assert streamed["max_tokens"] == 17


@pytest.mark.parametrize("kind", BACKEND_KINDS)
def test_upstream_payload_non_stream_unchanged(kind: str) -> None:
    body = {**BASE, "temperature": 0.2, "seed": 3, "stream": False}
    assert orjson.loads(upstream_payload(body, False, kind)) == body


# --- settings ---------------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch):
    for var in ("TOKENPORT_DATABASE_URL", "TOKENPORT_ADMIN_TOKEN", "TOKENPORT_HOME", "TOKENPORT_SHARED"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_settings_defaults(clean_env) -> None:
    home = Path("/srv/tp")
    s = settings_from_dict({}, home)
    assert s.home == home
    assert s.database_url == f"sqlite:///{home / 'tokenport.db'}"
    assert s.host == "127.0.0.1" and s.port == 8000
    assert s.default_zone == "overseas"
    assert s.admin_token is None
    assert s.default_rpm == 0
    assert s.usage_flush_ms == 200 and s.usage_batch_size == 500 and s.key_refresh_ms == 250
    assert s.engine.enabled is True
    assert s.backends == ()
    assert s.shared is False and s.expire_credits_every_s == 300.0


def test_settings_sections(clean_env) -> None:
    s = settings_from_dict(
        {
            "server": {"port": 9001, "default_zone": "eu", "admin_token": "t0k"},
            "database": {"url": "postgresql://u@h/db"},
            "limits": {"default_rpm": 60},
            "metering": {"flush_interval_ms": 50, "batch_size": 10, "key_refresh_ms": 100},
            "engine": {"enabled": False},
        },
        Path("/h"),
    )
    assert s.port == 9001 and s.default_zone == "eu" and s.admin_token == "t0k"
    assert s.database_url == "postgresql://u@h/db"
    assert s.default_rpm == 60
    assert (s.usage_flush_ms, s.usage_batch_size, s.key_refresh_ms) == (50, 10, 100)
    assert s.engine.enabled is False


def test_settings_shared_mode_from_file_and_environment(clean_env) -> None:
    data = {"cluster": {"shared": True}, "billing": {"expire_credits_every_s": 0}}
    s = settings_from_dict(data, Path("/h"))
    assert s.shared is True and s.expire_credits_every_s == 0
    clean_env.setenv("TOKENPORT_SHARED", "0")
    assert settings_from_dict(data, Path("/h")).shared is False
    clean_env.setenv("TOKENPORT_SHARED", "yes")
    assert settings_from_dict({}, Path("/h")).shared is True
    clean_env.setenv("TOKENPORT_SHARED", "maybe")
    with pytest.raises(ConfigError, match="yes/no"):
        settings_from_dict({}, Path("/h"))


def test_settings_backends(clean_env) -> None:
    s = settings_from_dict(
        {
            "server": {"default_zone": "eu"},
            "backends": [
                {"name": "a", "url": "http://a:8000/", "models": ["m1", "m2"], "kind": "vllm"},
                {"name": "b", "url": "http://b", "models": ["m3"], "zone": "cn", "api_key": "sk"},
            ],
        },
        Path("/h"),
    )
    a, b = s.backends
    assert (a.name, a.url, a.models, a.kind, a.zone, a.api_key) == (
        "a",
        "http://a:8000",
        ("m1", "m2"),
        "vllm",
        "eu",
        None,
    )
    assert (b.kind, b.zone, b.api_key) == ("openai", "cn", "sk")


def test_settings_invalid_backend_kind(clean_env) -> None:
    with pytest.raises(ConfigError, match="kind"):
        settings_from_dict(
            {"backends": [{"name": "a", "url": "http://a", "models": ["m"], "kind": "tgi"}]}, Path("/h")
        )


def test_settings_duplicate_backend_names(clean_env) -> None:
    dup = [
        {"name": "a", "url": "http://a", "models": ["m"]},
        {"name": "a", "url": "http://b", "models": ["n"]},
    ]
    with pytest.raises(ConfigError, match="unique"):
        settings_from_dict({"backends": dup}, Path("/h"))


def test_settings_embedded_name_reserved_while_engine_enabled(clean_env) -> None:
    backend = [{"name": "embedded", "url": "http://a", "models": ["m"]}]
    with pytest.raises(ConfigError):
        settings_from_dict({"backends": backend}, Path("/h"))
    s = settings_from_dict({"backends": backend, "engine": {"enabled": False}}, Path("/h"))
    assert s.backends[0].name == "embedded"


def test_settings_backend_missing_fields(clean_env) -> None:
    with pytest.raises(ConfigError, match="name, url and models"):
        settings_from_dict({"backends": [{"name": "a", "models": ["m"]}]}, Path("/h"))


def test_settings_env_wins(clean_env) -> None:
    clean_env.setenv("TOKENPORT_DATABASE_URL", "postgresql://env@host/envdb")
    clean_env.setenv("TOKENPORT_ADMIN_TOKEN", "from-env")
    s = settings_from_dict(
        {"database": {"url": "sqlite:///file.db"}, "server": {"admin_token": "from-file"}}, Path("/h")
    )
    assert s.database_url == "postgresql://env@host/envdb"
    assert s.admin_token == "from-env"
