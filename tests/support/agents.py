"""Real coding-agent clients for tests: Claude Code, Codex CLI and OpenClaw from npm, each pinned,
installed once into a cache outside the repository (`$TOKENPORT_AGENT_CACHE`, default
`~/.cache/tokenport/agents/<package>@<version>/`), OpenClaw with a pinned Node 24 from npm; and
helpers that run each one headless, on its default settings, with a scratch HOME.

To move a version, change the pin below (docs/agent-clients.md says what to check): the new
version installs into a directory of its own on the next run.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLAUDE_CODE = "@anthropic-ai/claude-code@2.1.332"
CLAUDE_CODE_DEFAULT_MODEL = "claude-opus-5-5"  # the model name 2.1.332 asks for without --model
CODEX = "@openai/codex@0.171.0"
OPENCLAW = "openclaw@2026.9.6"  # needs Node >= 24; unpinned `openclaw` is a 0.0.1 placeholder
NODE_VERSION = "24.22.3"  # the npm package node-<os>-<arch> ships the Node binary
INSTALL_TIMEOUT_S = 900
RUN_TIMEOUT_S = 300
# OpenClaw's provider id in the config the tests write; the model is "<provider>/<model>".
OPENCLAW_PROVIDER = "tokenport"


class AgentUnavailable(Exception):
    """The client cannot be installed here (no npm, no registry, unsupported platform)."""


def cache_root() -> Path:
    return Path(os.environ.get("TOKENPORT_AGENT_CACHE") or Path.home() / ".cache" / "tokenport" / "agents")


def _node_package() -> str:
    system = {"Linux": "linux", "Darwin": "darwin"}.get(platform.system())
    arches = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}
    arch = arches.get(platform.machine().lower())
    if system is None or arch is None:
        raise AgentUnavailable(f"no Node {NODE_VERSION} package for {platform.system()} {platform.machine()}")
    return f"node-{system}-{arch}@{NODE_VERSION}"


def install(spec: str, bin_name: str, node_bin: Path | None = None) -> Path:
    """`npm install` one pinned package into its own cache directory, once; the path of its
    executable. A directory without the completion marker (an interrupted install) is redone.
    `node_bin`: a directory put first on PATH, so that install scripts run under that Node."""
    prefix = cache_root() / spec.replace("/", "+")
    exe = prefix / "node_modules" / ".bin" / bin_name
    marker = prefix / ".tokenport-installed"
    if marker.is_file() and exe.exists():
        return exe
    npm = shutil.which("npm")
    if npm is None:
        raise AgentUnavailable(f"npm is not installed: {spec} comes from the npm registry")
    prefix.parent.mkdir(parents=True, exist_ok=True)
    with (prefix.parent / f"{prefix.name}.lock").open("w") as lock:  # concurrent test sessions
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.is_file() and exe.exists():
            return exe
        shutil.rmtree(prefix, ignore_errors=True)
        prefix.mkdir()
        env = dict(os.environ)
        if node_bin is not None:
            env["PATH"] = f"{node_bin}{os.pathsep}{env.get('PATH', '')}"
        # cwd=prefix: npm reads an argument like "pkg@1.2.3" as a folder when one of that name is in cwd.
        res = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--prefix", str(prefix), spec],
            cwd=prefix,
            env=env,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
        )
        if res.returncode != 0 or not exe.exists():
            raise AgentUnavailable(f"npm install {spec} failed ({res.returncode}): {res.stderr[-2000:]}")
        marker.write_text(spec + "\n")
    return exe


@dataclass(frozen=True)
class Agents:
    """The installed clients."""

    claude: Path
    codex: Path
    openclaw: Path
    node24_bin: Path  # the directory of Node 24's `node`, first on PATH for OpenClaw


def install_all() -> Agents:
    node24 = install(_node_package(), "node")
    return Agents(
        claude=install(CLAUDE_CODE, "claude"),
        codex=install(CODEX, "codex"),
        openclaw=install(OPENCLAW, "openclaw", node_bin=node24.parent),
        node24_bin=node24.parent,
    )


@dataclass
class AgentRun:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    def json_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.startswith("{")]


def _run(argv: list[str], env: dict[str, str], cwd: Path) -> AgentRun:
    res = subprocess.run(
        argv,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,  # Codex reads a non-TTY stdin as more input
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    return AgentRun(res.returncode, res.stdout, res.stderr)


def _base_env(home: Path, path_first: Path | None = None) -> dict[str, str]:
    """A scratch environment: PATH, HOME and locale only, nothing from the developer's own setup."""
    home.mkdir(parents=True, exist_ok=True)
    path = os.environ.get("PATH", "/usr/bin:/bin")
    if path_first is not None:
        path = f"{path_first}{os.pathsep}{path}"
    return {"PATH": path, "HOME": str(home), "LANG": "C.UTF-8"}


def run_claude_code(agents: Agents, base_url: str, key: str, task: str, cwd: Path, home: Path) -> AgentRun:
    """`claude -p TASK --output-format json`: no model flag and no ANTHROPIC_MODEL, so Claude Code
    asks for its default model."""
    env = _base_env(home)
    env.update(
        ANTHROPIC_BASE_URL=base_url,
        ANTHROPIC_AUTH_TOKEN=key,
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
        DISABLE_TELEMETRY="1",
        DISABLE_AUTOUPDATER="1",
    )
    return _run([str(agents.claude), "-p", task, "--output-format", "json"], env, cwd)


def codex_config(base_url: str, model: str) -> str:
    """`$CODEX_HOME/config.toml`: tokenport as a Responses API provider, the key from an env var."""
    return (
        f'model = "{model}"\n'
        'model_provider = "tokenport"\n\n'
        "[model_providers.tokenport]\n"
        'name = "tokenport"\n'
        f'base_url = "{base_url}/v1"\n'
        'wire_api = "responses"\n'
        'env_key = "TOKENPORT_API_KEY"\n'
    )


def run_codex(
    agents: Agents, base_url: str, key: str, model: str, task: str, cwd: Path, home: Path
) -> AgentRun:
    """`codex exec --json TASK` on default features (`--skip-git-repo-check`: cwd is no git repo)."""
    env = _base_env(home)
    codex_home = home / ".codex"
    codex_home.mkdir(parents=True, exist_ok=True)
    (codex_home / "config.toml").write_text(codex_config(base_url, model))
    env.update(CODEX_HOME=str(codex_home), TOKENPORT_API_KEY=key)
    return _run([str(agents.codex), "exec", "--json", "--skip-git-repo-check", task], env, cwd)


def openclaw_config(
    base_url: str, key: str, api: str, model: str, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    """A custom provider for one API style; `anthropic-messages` takes the base URL without /v1.
    `headers`: sent on every request (a maker's server names its device: docs/fleets.md)."""
    provider: dict[str, Any] = {
        "baseUrl": base_url if api == "anthropic-messages" else f"{base_url}/v1",
        "apiKey": key,
        "api": api,
        "models": [
            {"id": model, "name": model, "input": ["text"], "contextWindow": 131072, "maxTokens": 4096}
        ],
    }
    if headers:
        provider["headers"] = headers
    return {"models": {"providers": {OPENCLAW_PROVIDER: provider}}}


def run_openclaw(
    agents: Agents,
    base_url: str,
    key: str,
    api: str,
    model: str,
    task: str,
    cwd: Path,
    home: Path,
    headers: dict[str, str] | None = None,
) -> AgentRun:
    """`openclaw agent exec TASK --config FILE --model tokenport/MODEL --json` under Node 24."""
    env = _base_env(home, path_first=agents.node24_bin)
    config = home / "openclaw.json"
    config.write_text(json.dumps(openclaw_config(base_url, key, api, model, headers), indent=2))
    argv = [str(agents.openclaw), "agent", "exec", task, "--config", str(config)]
    return _run([*argv, "--model", f"{OPENCLAW_PROVIDER}/{model}", "--json"], env, cwd)
