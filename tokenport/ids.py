"""Random identifiers (request, transaction, tenant, key ids): unique, not secret.

A per-process generator seeded from the OS (and re-seeded in a forked child), so that making an
id on the request path costs no system call; secrets (API keys, admin tokens) use `secrets`."""

from __future__ import annotations

import os
import random

_rng = random.Random(os.urandom(32))
os.register_at_fork(after_in_child=lambda: _rng.seed(os.urandom(32)))


def random_hex(bits: int) -> str:
    return f"{_rng.getrandbits(bits):0{bits // 4}x}"
