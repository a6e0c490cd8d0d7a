"""Secret key files (mode 0600) in the server's key directory, created whole on first use.

Several processes of one deployment share the directory, as they would share a TLS key: the
first to need a key creates it, and a process that loses the race uses the winner's."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def load_or_create(path: Path, make: Callable[[], bytes]) -> bytes:
    if path.exists():
        return path.read_bytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(make())
    try:
        os.link(tmp, path)  # atomic, and refuses to replace an existing key
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return path.read_bytes()


DEVICE_TOKEN_KEY = "device-tokens.key"


def device_token_key(keys_dir: Path) -> bytes:
    """The key that signs device tokens (`tpd_…`, fleets/identity.py): one per deployment,
    shared by the CLI and every gateway process."""
    return load_or_create(keys_dir / DEVICE_TOKEN_KEY, lambda: os.urandom(32))
