"""Real coding agents against a live gateway, each on its default settings: Claude Code (its own
default model name, which the `claude-*` alias routes), Codex CLI (`codex exec`, default features)
and OpenClaw (`agent exec`, with each of its `openai-completions`, `openai-responses` and
`anthropic-messages` API styles). Behind the gateway, the mock engine's `mock-agent` model is a
scripted agent: it calls the client's shell tool to run `ls`, then answers `FILES: <output>`.

Each test runs a task that needs that one tool round trip in a directory of known files, checks
that the client printed the engine's answer with the file names, and that the gateway's usage
records equal the usage the client itself reported. The clients come from npm, pinned, installed
once into a cache outside the repository (tests/support/agents.py, docs/agent-clients.md).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.agents import (
    CLAUDE_CODE_DEFAULT_MODEL,
    AgentRun,
    Agents,
    AgentUnavailable,
    install_all,
    run_claude_code,
    run_codex,
    run_openclaw,
)
from support.fleets import Maker
from support.live import DEFAULT_PRICES, LiveServer, MockProcess, mock_config, start_server, wait_until

AGENT_MODEL = "mock-agent"  # the mock engine's scripted agent
FILES = ("alpha.txt", "beta.md", "gamma.py")
TASK = "List the files in the current directory, then tell me their names."
ROUND_TRIP = 2  # requests per task: the tool call, then the answer


@pytest.fixture(scope="module")
def agents() -> Agents:
    """The pinned clients; skipped where npm or the registry can't be had, except in CI."""
    try:
        return install_all()
    except AgentUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI requires the agent clients: {exc}")
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, mock_engine: MockProcess) -> Iterator[LiveServer]:
    cfg = mock_config(mock_engine.url)
    cfg["backends"][0]["models"].append(AGENT_MODEL)
    cfg["models"] = {"aliases": {"claude-*": AGENT_MODEL}}  # the default configuration's glob
    prices = {**DEFAULT_PRICES, AGENT_MODEL: ["--free"]}
    server = start_server(tmp_path_factory.mktemp("agents-home"), cfg, prices=prices)
    yield server
    server.stop()
    server.verify_ledger()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    for name in FILES:
        (work / name).write_text("content\n")
    return work


def _failure(run: AgentRun) -> str:
    return f"exit {run.returncode}\nstdout: {run.stdout[-3000:]}\nstderr: {run.stderr[-3000:]}"


def _records(gateway: LiveServer, tenant: str) -> list[dict]:
    """The tenant's usage records once the batched writer has both of the round trip's."""

    def done() -> list[dict] | None:
        data = gateway.usage(tenant)["data"]
        return data if len(data) >= ROUND_TRIP else None

    records = wait_until(done, 10.0, 0.2, f"{ROUND_TRIP} usage records of {tenant}")
    assert len(records) == ROUND_TRIP, records
    return records


def _assert_answer(text: str) -> None:
    """The engine's final answer, quoting the output of `ls` that the client ran."""
    assert text.strip().startswith("FILES:"), text
    assert all(name in text for name in FILES), text


def _totals(records: list[dict]) -> tuple[int, int, int]:
    return (
        sum(r["prompt_tokens"] for r in records),
        sum(r["cached_tokens"] for r in records),
        sum(r["completion_tokens"] for r in records),
    )


def test_claude_code_default_model(
    agents: Agents, gateway: LiveServer, workdir: Path, tmp_path: Path
) -> None:
    _, key = gateway.new_key("claude-code")
    run = run_claude_code(agents, gateway.base_url, key, TASK, workdir, tmp_path / "home")
    assert run.returncode == 0, _failure(run)
    out = run.json()
    assert out["subtype"] == "success" and not out["is_error"], out
    _assert_answer(out["result"])
    assert list(out["modelUsage"]) == [CLAUDE_CODE_DEFAULT_MODEL]  # its default name, no override
    records = _records(gateway, "claude-code")
    assert {(r["endpoint"], r["status"], r["model"]) for r in records} == {("messages", 200, AGENT_MODEL)}
    prompt, cached, completion = _totals(records)
    usage = out["usage"]
    cache_read = usage["cache_read_input_tokens"]
    reported_input = usage["input_tokens"] + cache_read + usage["cache_creation_input_tokens"]
    assert (reported_input, cache_read, usage["output_tokens"]) == (prompt, cached, completion)


def test_codex_exec_default_features(
    agents: Agents, gateway: LiveServer, workdir: Path, tmp_path: Path
) -> None:
    _, key = gateway.new_key("codex")
    run = run_codex(agents, gateway.base_url, key, AGENT_MODEL, TASK, workdir, tmp_path / "home")
    assert run.returncode == 0, _failure(run)
    events = run.json_lines()
    items = [e["item"] for e in events if e.get("type") == "item.completed"]
    commands = [i for i in items if i["type"] == "command_execution"]
    assert len(commands) == 1 and commands[0]["exit_code"] == 0, items
    answers = [i["text"] for i in items if i["type"] == "agent_message"]
    assert len(answers) == 1, items
    _assert_answer(answers[0])
    turns = [e for e in events if e.get("type") == "turn.completed"]
    assert len(turns) == 1, events
    records = _records(gateway, "codex")
    assert {(r["endpoint"], r["status"], r["model"]) for r in records} == {("responses", 200, AGENT_MODEL)}
    usage = turns[0]["usage"]
    reported = (usage["input_tokens"], usage["cached_input_tokens"], usage["output_tokens"])
    assert reported == _totals(records)


@pytest.mark.parametrize(
    ("api", "endpoint"),
    [("openai-completions", "chat"), ("openai-responses", "responses"), ("anthropic-messages", "messages")],
)
def test_openclaw_agent_exec(
    agents: Agents, gateway: LiveServer, workdir: Path, tmp_path: Path, api: str, endpoint: str
) -> None:
    tenant = f"openclaw-{api}"
    _, key = gateway.new_key(tenant)
    run = run_openclaw(agents, gateway.base_url, key, api, AGENT_MODEL, TASK, workdir, tmp_path / "home")
    assert run.returncode == 0, _failure(run)
    out = run.json()
    assert out["ok"] and out["status"] == "ok", out
    _assert_answer(out["final"])
    assert out["toolSummary"]["tools"] == ["exec"] and out["assistantTurns"] == ROUND_TRIP, out
    records = _records(gateway, tenant)
    assert {(r["endpoint"], r["status"], r["model"]) for r in records} == {(endpoint, 200, AGENT_MODEL)}
    prompt, cached, completion = _totals(records)
    usage = out["usage"]
    reported = (usage["input"] + usage["cacheRead"], usage["cacheRead"], usage["output"], usage["total"])
    assert reported == (prompt, cached, completion, prompt + completion)


@pytest.mark.parametrize("api", ["openai-completions", "openai-responses", "anthropic-messages"])
def test_openclaw_through_a_fleet_key_names_its_device(
    agents: Agents, gateway: LiveServer, workdir: Path, tmp_path: Path, api: str
) -> None:
    """A toy maker's OpenClaw deployment (docs/fleets.md): its fleet key, and the device it
    speaks for in `X-Tokenport-Device` (the provider's `headers`); each turn is the device's."""
    maker = Maker(gateway, f"toys-{api}", models=(AGENT_MODEL,))
    serial = maker.serials[0]
    maker.activate(serial)
    key = gateway.cli_json("keys", "create", "--tenant", maker.name, "--fleet", maker.fleet)["key"]
    gateway.wait_key_accepted(key)
    headers = {"X-Tokenport-Device": serial}
    home = tmp_path / "home"
    run = run_openclaw(agents, gateway.base_url, key, api, AGENT_MODEL, TASK, workdir, home, headers)
    assert run.returncode == 0, _failure(run)
    out = run.json()
    assert out["ok"] and out["status"] == "ok", out
    _assert_answer(out["final"])
    records = _records(gateway, maker.name)
    assert len(records) == ROUND_TRIP
    assert {(r["device_serial"], r["status"]) for r in records} == {(serial, 200)}
    prompt, _, completion = _totals(records)
    assert sum(r["device_units"] for r in records) == prompt + completion
