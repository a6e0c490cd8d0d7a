"""The `tokenport` command run as a subprocess over its own data directory."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from support.live import TOKENPORT


class Cli:
    def __init__(self, home: Path, env_extra: dict[str, str] | None = None) -> None:
        self.home = home
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENPORT_")}
        self.env.update({"TOKENPORT_HOME": str(home), **(env_extra or {})})

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([TOKENPORT, *args], env=self.env, capture_output=True, text=True, timeout=60)

    def ok(self, *args: str) -> subprocess.CompletedProcess:
        res = self.run(*args)
        assert res.returncode == 0, f"tokenport {' '.join(args)} failed ({res.returncode}): {res.stderr}"
        assert "Traceback" not in res.stderr, res.stderr
        return res

    def out(self, *args: str) -> str:
        return self.ok(*args).stdout

    def json(self, *args: str):
        return json.loads(self.out(*args, "--json"))

    def fails(self, *args: str) -> str:
        """A command that must fail cleanly: non-zero exit, one error line, no traceback."""
        res = self.run(*args)
        assert res.returncode != 0, f"tokenport {' '.join(args)} succeeded: {res.stdout}"
        assert "Traceback" not in res.stderr, res.stderr
        assert res.stderr.startswith("tokenport: error:"), res.stderr
        assert res.stdout == ""
        return res.stderr

    @property
    def db(self) -> Path:
        return self.home / "tokenport.db"
