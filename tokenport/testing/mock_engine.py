"""A fast mock OpenAI-compatible engine with fixed, exact token counts.

Used by the tests (faults, exact metering) and by the benchmarks. Every
streamed content chunk is exactly one token ("tok "); usage is fixed by
MockConfig. A body field ``mock_scenario`` (or, calling the mock directly, a request header
``x-mock-scenario``) selects a behaviour:
tool_calls, error_500, error_400, error_midstream, hang, slow_first_token, echo (every token
is the last message's text, or the prompt: for canary tests). A model named `*-tools` always
behaves as tool_calls, one named `*-midfail` as error_midstream, one named `*-hang` as hang.
In tool_calls every streamed tool-call delta is one token (TOOL_CALL_TOKENS in all,
max_tokens ignored). GET /mock/stats shows counters and what the last request carried
(`last_body`: all of it).

A chat model named `*-agent` is a scripted coding agent (scenario agent), for real agent
clients: while no tool result has come back since the last assistant turn, it calls ONE shell
tool that it finds among the request's `tools` (AGENT_TOOLS: Claude Code's `Bash`, Codex's
`exec_command` / `shell_command` / `shell`, OpenClaw's `exec`) with arguments that run `ls`
in the client's working directory: three deltas, three tokens (the first delta carries `id`,
`type` and `function.name`; `finish_reason: tool_calls`). Once the results are back it answers
`FILES: <the tool results' text>`, one token per whitespace-separated piece (AGENT_ANSWER).
A request that offers none of those tools and carries no result is answered as any other.
Prompt tokens are MockConfig's, as for every request.

A body field `mock_usage` (an object) replaces fields of the final usage the mock reports: an
engine that lies about its counts.

A chat model named `*-think` reasons: the first half of its completion tokens come as
`reasoning_content` (llama.cpp's and SGLang's field), the rest as `content`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import re
import signal
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
from aiohttp import web

SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
DONE = b"data: [DONE]\n\n"
HANG_S = 30.0
SLOW_FIRST_TOKEN_S = 2.0
# Two tool calls; each streamed delta counts as one completion token.
TOOL_CALLS = (
    ("get_weather", ('{"city"', ': "Paris"}')),
    ("get_time", ('{"tz"', ': "UTC"}')),
)
TOOL_CALL_TOKENS = sum(1 + len(frags) for _, frags in TOOL_CALLS)
FIXED_CALLS = [(f"call_{i}", name, list(frags)) for i, (name, frags) in enumerate(TOOL_CALLS)]
# The agent scenario: each client's shell tool and the arguments that list the working directory.
AGENT_TOOLS: dict[str, dict[str, Any]] = {
    "Bash": {"command": "ls", "description": "List the files"},  # Claude Code
    "exec_command": {"cmd": "ls"},  # Codex (unified exec)
    "shell_command": {"command": "ls"},  # Codex (shell_command)
    "shell": {"command": ["ls"]},  # Codex (older shell tool)
    "exec": {"command": "ls"},  # OpenClaw
}
AGENT_ANSWER = "FILES: "  # the final answer: this, then the tool results' text


@dataclass
class MockConfig:
    prompt_tokens: int = 10
    completion_tokens: int = 20
    chunk_delay_ms: float = 0.0
    models: tuple[str, ...] = ("mock-model",)
    failing: bool = False  # every generation answers 500 (its /health stays fine): POST /mock/fail


@dataclass
class MockStats:
    requests: int = 0
    streams_started: int = 0
    streams_completed: int = 0
    streams_cancelled: int = 0
    streams_failed: int = 0  # error_midstream
    tokens_generated: int = 0
    prompt_tokens: int = 0
    in_flight: int = 0
    last_request_keys: list[str] = field(default_factory=list)
    last_stream_options: dict[str, Any] | None = None
    last_headers: dict[str, str] = field(default_factory=dict)
    last_body: dict[str, Any] = field(default_factory=dict)  # what the engine was sent, whole

    def reset(self) -> None:
        in_flight = self.in_flight
        self.__init__()  # type: ignore[misc]
        self.in_flight = in_flight  # live requests are still live

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)


CFG = web.AppKey("cfg", MockConfig)
STATS = web.AppKey("stats", MockStats)
_ids = itertools.count(1)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _event(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _bad_request(msg: str) -> web.Response:
    return _json({"error": {"message": msg, "type": "invalid_request_error", "code": 400}}, status=400)


def _usage(p: int, c: int) -> dict[str, Any]:
    return {
        "prompt_tokens": p,
        "completion_tokens": c,
        "total_tokens": p + c,
        "prompt_tokens_details": {"cached_tokens": 0},
    }


async def health(_: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def models(request: web.Request) -> web.Response:
    data = [{"id": m, "object": "model", "created": 0, "owned_by": "mock"} for m in request.app[CFG].models]
    return _json({"object": "list", "data": data})


async def metrics(request: web.Request) -> web.Response:
    s = request.app[STATS]
    text = (
        "# HELP llamacpp:requests_processing Number of requests processing.\n"
        "# TYPE llamacpp:requests_processing gauge\n"
        f"llamacpp:requests_processing {s.in_flight}\n"
        "# HELP llamacpp:requests_deferred Number of requests deferred.\n"
        "# TYPE llamacpp:requests_deferred gauge\n"
        "llamacpp:requests_deferred 0\n"
        "# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.\n"
        "# TYPE llamacpp:prompt_tokens_total counter\n"
        f"llamacpp:prompt_tokens_total {s.prompt_tokens}\n"
        "# HELP llamacpp:tokens_predicted_total Number of generation tokens processed.\n"
        "# TYPE llamacpp:tokens_predicted_total counter\n"
        f"llamacpp:tokens_predicted_total {s.tokens_generated}\n"
    )
    return web.Response(text=text, content_type="text/plain", charset="utf-8")


async def stats(request: web.Request) -> web.Response:
    return _json(request.app[STATS].to_dict())


async def reset(request: web.Request) -> web.Response:
    request.app[STATS].reset()
    return _json({"status": "ok"})


async def fail(request: web.Request) -> web.Response:
    """{"failing": true|false}: make every generation fail, or stop failing."""
    request.app[CFG].failing = bool(orjson.loads(await request.read()).get("failing"))
    return _json({"failing": request.app[CFG].failing})


class _Gen:
    """One generation request: builds the OpenAI-shaped chunks and bodies."""

    def __init__(self, request: web.Request, body: dict[str, Any], chat: bool) -> None:
        cfg = request.app[CFG]
        self.chat = chat
        self.model = body.get("model") or cfg.models[0]
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-mock{next(_ids)}"
        self.created = int(time.time())
        self.object = "chat.completion" if chat else "text_completion"
        self.p = cfg.prompt_tokens
        cap = body.get("max_completion_tokens", body.get("max_tokens"))
        self.n = cfg.completion_tokens if cap is None else max(0, min(cfg.completion_tokens, int(cap)))
        self.finish = "length" if cap is not None and int(cap) < cfg.completion_tokens else "stop"
        delay = body.get("mock_chunk_delay_ms", cfg.chunk_delay_ms)
        self.delay = max(0.0, float(delay)) / 1000.0
        opts = body.get("stream_options") or {}
        self.include_usage = bool(opts.get("include_usage"))
        self.continuous = bool(opts.get("continuous_usage_stats"))
        self.timings = bool(body.get("timings_per_token"))
        self.text = "tok "
        if (body.get("mock_scenario") or request.headers.get("x-mock-scenario")) == "echo":
            self.text = f"{_last_text(body) if chat else body.get('prompt')} "
        self.pieces = [self.text] * self.n  # the text of each completion token
        self.calls: list[tuple[str, str, list[str]]] = []  # (id, name, argument fragments)
        self.thoughts = 0  # how many of the first pieces are reasoning (`reasoning_content`)
        lie = body.get("mock_usage")  # fields that replace the final usage's: an engine that lies
        self.lie: dict[str, Any] = lie if isinstance(lie, dict) else {}

    def script_agent(self, body: dict[str, Any]) -> None:
        """The agent scenario's next move: one shell call, or the answer that quotes the results."""
        move = _agent_move(body)
        if isinstance(move, tuple):
            self.calls = [(f"call_{self.id}", *move)]
        elif move is not None:
            self.pieces, self.n, self.finish = move, len(move), "stop"

    def chunk(self, choice: dict[str, Any] | None, done: int, usage: bool = False) -> bytes:
        obj: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [choice] if choice is not None else [],
        }
        if self.continuous or usage:
            obj["usage"] = _usage(self.p, done)
            if usage:
                obj["usage"].update(self.lie)
        if self.timings:
            obj["timings"] = {"prompt_n": self.p, "cache_n": 0, "predicted_n": done}
        return _event(obj)

    def token_choice(self, finish: str | None = None, text: str = "", thought: bool = False) -> dict:
        if self.chat:
            delta = {"reasoning_content" if thought else "content": text} if finish is None else {}
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {"index": 0, "text": text if finish is None else "", "logprobs": None, "finish_reason": finish}

    def full(self, n: int, finish: str, tool_calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        thought = min(self.thoughts, n)
        text = "".join(self.pieces[thought:n])
        if self.chat:
            msg: dict[str, Any] = {"role": "assistant", "content": None if tool_calls else text}
            if thought:
                msg["reasoning_content"] = "".join(self.pieces[:thought])
            if tool_calls:
                msg["tool_calls"] = tool_calls
            choice = {"index": 0, "message": msg, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        return {
            "id": self.id,
            "object": self.object,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": {**_usage(self.p, n), **self.lie},
        }


def _last_text(body: dict[str, Any]) -> str:
    messages = body.get("messages") or [{}]
    content = messages[-1].get("content")
    return content if isinstance(content, str) else orjson.dumps(content).decode()


def _text_of(content: Any) -> str:
    """A message's text: a string, or the text of its parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text") or "" for p in content if isinstance(p, dict))
    return ""


def _agent_move(body: dict[str, Any]) -> tuple[str, list[str]] | list[str] | None:
    """(tool name, argument fragments) to call a shell tool; the answer's pieces once the tool
    results are back (any `tool` message after the last assistant turn); None when the request
    offers no known shell tool."""
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=-1)
    results = [_text_of(m.get("content")) for m in messages[last + 1 :] if m.get("role") == "tool"]
    if results:
        return re.findall(r"\S+\s*", AGENT_ANSWER + "\n".join(results))
    for tool in body.get("tools") or []:
        fn = tool.get("function") if isinstance(tool, dict) else None
        name = fn.get("name") if isinstance(fn, dict) else None
        if name in AGENT_TOOLS:
            args = orjson.dumps(AGENT_TOOLS[name]).decode()
            return name, [args[: len(args) // 2], args[len(args) // 2 :]]
    return None


def _tool_call_list(calls: list[tuple[str, str, list[str]]]) -> list[dict[str, Any]]:
    return [
        {"id": cid, "type": "function", "function": {"name": name, "arguments": "".join(frags)}}
        for cid, name, frags in calls
    ]


def _tool_call_deltas(calls: list[tuple[str, str, list[str]]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, (cid, name, frags) in enumerate(calls):
        fn = {"name": name, "arguments": ""}
        out.append({"index": i, "id": cid, "type": "function", "function": fn})
        out.extend({"index": i, "function": {"arguments": f}} for f in frags)
    return out


async def _scenario_wait(scenario: str) -> None:
    if scenario == "hang":
        await asyncio.sleep(HANG_S)
    elif scenario == "slow_first_token":
        await asyncio.sleep(SLOW_FIRST_TOKEN_S)


async def _stream(request: web.Request, g: _Gen, scenario: str) -> web.StreamResponse:
    st = request.app[STATS]
    st.streams_started += 1
    produced, completed = 0, False
    resp = web.StreamResponse(headers=SSE_HEADERS)
    try:
        if scenario == "error_midstream":
            resp.force_close()  # "Connection: close": the engine drops the connection after the error
        await resp.prepare(request)  # headers go out at once, as real engines do
        await _scenario_wait(scenario)
        if g.chat:
            role = {
                "index": 0,
                "delta": {"role": "assistant", "content": ""},
                "logprobs": None,
                "finish_reason": None,
            }
            await resp.write(g.chunk(role, 0))
        if g.calls:
            for tc in _tool_call_deltas(g.calls):
                if g.delay and produced:
                    await asyncio.sleep(g.delay)
                produced += 1
                st.tokens_generated += 1
                choice = {"index": 0, "delta": {"tool_calls": [tc]}, "logprobs": None, "finish_reason": None}
                await resp.write(g.chunk(choice, produced))
            n, finish = produced, "tool_calls"
        else:
            n = min(g.n, 3) if scenario == "error_midstream" else g.n
            finish = g.finish
            for piece in g.pieces[:n]:
                if g.delay and produced:
                    await asyncio.sleep(g.delay)
                thought = produced < g.thoughts
                produced += 1
                st.tokens_generated += 1
                await resp.write(g.chunk(g.token_choice(text=piece, thought=thought), produced))
            if scenario == "error_midstream":
                await resp.write(_event({"error": {"message": "engine failed", "type": "server_error"}}))
                st.streams_failed += 1
                await resp.write_eof()
                return resp
        await resp.write(g.chunk(g.token_choice(finish), n))
        if g.include_usage:
            await resp.write(g.chunk(None, n, usage=True))
        await resp.write(DONE)
        st.streams_completed += 1
        completed = True
        await resp.write_eof()
        return resp
    except ConnectionResetError:  # the client went away: quietly end the handler
        st.streams_cancelled += not completed
        return resp
    except asyncio.CancelledError:  # handler_cancellation=True: the disconnect cancels us
        st.streams_cancelled += not completed
        raise


async def _generate(request: web.Request, chat: bool) -> web.StreamResponse:
    st = request.app[STATS]
    st.requests += 1
    st.in_flight += 1
    try:
        raw = await request.read()
        try:
            body = orjson.loads(raw) if raw else {}
            if not isinstance(body, dict):
                raise ValueError("body must be a JSON object")
        except ValueError as exc:
            return _bad_request(f"invalid JSON: {exc}")
        st.last_request_keys = list(body)
        st.last_body = body
        st.last_stream_options = body.get("stream_options")
        st.last_headers = {k.lower(): v for k, v in request.headers.items()}
        if request.app[CFG].failing:
            return _json({"error": {"message": "mock engine failing", "type": "server_error"}}, status=500)
        scenario = str(body.get("mock_scenario") or request.headers.get("x-mock-scenario", ""))
        model_name = str(body.get("model", ""))
        if not scenario and model_name.endswith("-tools"):
            scenario = "tool_calls"  # a model that always calls tools (protocols that drop extra fields)
        elif not scenario and model_name.endswith("-midfail"):
            scenario = "error_midstream"  # a model whose streams fail after three tokens
        elif not scenario and model_name.endswith("-hang"):
            scenario = "hang"  # an engine that takes requests and never answers
        elif not scenario and model_name.endswith("-agent"):
            scenario = "agent"  # a scripted coding agent: one shell call, then the answer
        if scenario == "error_500":
            return _json(
                {"error": {"message": "mock engine exploded", "type": "server_error", "code": 500}},
                status=500,
            )
        if scenario == "error_400":
            return _json(
                {"error": {"message": "bad thing", "type": "invalid_request_error", "code": 400}}, status=400
            )
        try:
            g = _Gen(request, body, chat)
        except (TypeError, ValueError, AttributeError) as exc:
            return _bad_request(f"invalid field: {exc}")
        if chat and scenario == "tool_calls":
            g.calls = FIXED_CALLS
        elif chat and scenario == "agent":
            g.script_agent(body)
        elif chat and model_name.endswith("-think"):
            g.thoughts = g.n // 2  # a reasoning model: the first half of its tokens are thinking
        st.prompt_tokens += g.p
        if body.get("stream"):
            return await _stream(request, g, scenario)
        await _scenario_wait(scenario)
        if g.calls:
            n, finish = sum(1 + len(frags) for _, _, frags in g.calls), "tool_calls"
            calls = _tool_call_list(g.calls)
        else:
            n, finish, calls = g.n, g.finish, None
        if g.delay and n > 1:
            await asyncio.sleep(g.delay * (n - 1))  # emulate the generation time
        st.tokens_generated += n
        return _json(g.full(n, finish, calls))
    finally:
        st.in_flight -= 1


async def embeddings(request: web.Request) -> web.Response:
    """Eight-dimensional vectors; `prompt_tokens` per input from the config."""
    st = request.app[STATS]
    st.requests += 1
    body = orjson.loads(await request.read())
    data = body.get("input")
    inputs = [data] if isinstance(data, str) or (data and isinstance(data[0], int)) else list(data or [])
    p = request.app[CFG].prompt_tokens * len(inputs)
    st.prompt_tokens += p
    vectors = [
        {"object": "embedding", "index": i, "embedding": [0.125 * (i + 1)] * 8} for i in range(len(inputs))
    ]
    return _json(
        {
            "object": "list",
            "data": vectors,
            "model": body.get("model"),
            "usage": {"prompt_tokens": p, "total_tokens": p},
        }
    )


async def apply_template(request: web.Request) -> web.Response:
    """llama.cpp's /apply-template: the chat formatted as one prompt."""
    body = orjson.loads(await request.read())
    prompt = "".join(f"<{m.get('role')}>{m.get('content') or ''}\n" for m in body.get("messages", []))
    return _json({"prompt": prompt})


async def tokenize(request: web.Request) -> web.Response:
    """llama.cpp's /tokenize: as many tokens as the mock bills for a prompt (exact counts)."""
    return _json({"tokens": list(range(request.app[CFG].prompt_tokens))})


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, chat=True)


async def completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, chat=False)


def build_app(cfg: MockConfig | None = None) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[CFG] = cfg or MockConfig()
    app[STATS] = MockStats()
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/mock/stats", stats)
    app.router.add_post("/mock/reset", reset)
    app.router.add_post("/mock/fail", fail)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/apply-template", apply_template)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_post("/tokenize", tokenize)
    return app


@dataclass
class MockServer:
    url: str
    app: web.Application
    runner: web.AppRunner

    @property
    def stats(self) -> MockStats:
        return self.app[STATS]

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    async def close(self) -> None:
        await self.runner.cleanup()


async def start_mock(cfg: MockConfig | None = None, host: str = "127.0.0.1", port: int = 0) -> MockServer:
    app = build_app(cfg)
    # handler_cancellation: a client disconnect cancels the handler (ends hangs, counts cancels).
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=4096)
    await site.start()
    sock = site._server.sockets[0]  # type: ignore[union-attr]
    bound = sock.getsockname()[1]
    return MockServer(url=f"http://{host}:{bound}", app=app, runner=runner)


async def _serve(cfg: MockConfig, host: str, port: int) -> None:
    server = await start_mock(cfg, host, port)
    print(f"READY {server.url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.close()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m tokenport.testing.mock_engine", description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--prompt-tokens", type=int, default=10)
    ap.add_argument("--completion-tokens", type=int, default=20)
    ap.add_argument("--chunk-delay-ms", type=float, default=0.0)
    ap.add_argument("--models", default="mock-model", help="comma-separated model ids")
    a = ap.parse_args(argv)
    cfg = MockConfig(a.prompt_tokens, a.completion_tokens, a.chunk_delay_ms, tuple(a.models.split(",")))
    loop_factory = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve(cfg, a.host, a.port))


if __name__ == "__main__":
    main()
