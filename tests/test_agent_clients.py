"""A real coding agent against the gateway: Claude Code (from npm, pinned) runs one headless task
over the Anthropic Messages API, with a scripted mock engine behind the gateway (the embedded
135M model rambles for thousands of tokens on Claude Code's ~4k-token system prompt)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from support.live import mock_config, start_server

CLAUDE_CODE = "@anthropic-ai/claude-code@2.1.332"


@pytest.fixture(scope="module")
def claude_bin(tmp_path_factory) -> Path:
    if shutil.which("npm") is None:  # the project's machines have Node.js 20 and npm 11
        pytest.skip("npm is not installed: Claude Code comes from the npm registry")
    prefix = tmp_path_factory.mktemp("npm")
    subprocess.run(
        ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(prefix), CLAUDE_CODE],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return prefix / "node_modules" / ".bin" / "claude"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, mock_engine):
    cfg = mock_config(mock_engine.url)
    cfg["models"] = {"aliases": {"claude-*": "mock-model"}}  # whatever Claude model it asks for
    server = start_server(tmp_path_factory.mktemp("agent-home"), cfg)
    yield server
    server.stop()
    server.verify_ledger()


def test_claude_code_runs_a_task_through_the_gateway(claude_bin: Path, gateway, tmp_path: Path) -> None:
    _, secret = gateway.new_key("claude-code")
    home = tmp_path / "home"
    home.mkdir()
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "ANTHROPIC_BASE_URL": gateway.base_url,
        "ANTHROPIC_AUTH_TOKEN": secret,
        "ANTHROPIC_MODEL": "claude-sonnet-4-6",
        "ANTHROPIC_SMALL_FAST_MODEL": "claude-haiku-4-5",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1",
    }
    run = subprocess.run(
        [str(claude_bin), "-p", "Say hello", "--max-turns", "1"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == ("tok " * 20).strip()  # the mock's answer, as Claude Code printed it
    records = gateway.usage("claude-code")["data"]
    assert records and all(r["endpoint"] == "messages" and r["status"] == 200 for r in records)
    assert {r["model"] for r in records} == {"mock-model"}  # claude-* reached the served model
    assert sum(r["completion_tokens"] for r in records) == 20 * len(records)
