"""API key secrets: generation, hashing, parsing. Plain Python, no I/O."""

from __future__ import annotations

import hashlib
import re
import secrets
import string
from dataclasses import dataclass

from tokenport.ids import random_hex

KEY_PREFIX = "tpk_"
FLEET_KEY_PREFIX = "tpf_"  # a fleet key: its maker's server names a device per request
_ALPHABET = string.ascii_letters + string.digits
_SECRET_LEN = 40  # ~238 bits of entropy: a fast hash (SHA-256) is the right tool
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # use with fullmatch
ZONE_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")


@dataclass(frozen=True)
class NewKey:
    id: str
    secret: str  # shown once, never stored
    prefix: str
    key_hash: str


@dataclass(frozen=True)
class KeyRecord:
    """What the gateway needs to know about a key, held in memory."""

    id: str
    tenant_id: str
    tenant_name: str
    zone: str
    key_hash: str
    rpm_limit: int | None
    revoked: bool
    tpm_limit: int | None = None
    budget_nano_usd: int | None = None
    budget_period: str | None = None  # "day" | "month"
    retention_ttl_s: int | None = None  # the tenant's opt-in retention; None: nothing is kept
    fleet_id: str | None = None  # a fleet key (tpf_...): may name a device of that fleet


def new_id(kind: str) -> str:
    """64 random bits, as `secrets.token_hex(8)` gave, without its system call per id."""
    return f"{kind}_{random_hex(64)}"


def generate_key(prefix: str = KEY_PREFIX) -> NewKey:
    """A new key's secret; `prefix` is `tpk_`, or `tpf_` for a fleet key."""
    body = "".join(secrets.choice(_ALPHABET) for _ in range(_SECRET_LEN))
    secret = prefix + body
    return NewKey(id=new_id("key"), secret=secret, prefix=secret[:12], key_hash=hash_key(secret))


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


def extract_secret(authorization: bytes | None, x_api_key: bytes | None) -> str | None:
    """`Authorization: Bearer <key>` or `x-api-key: <key>`; None when neither is given."""
    if authorization:
        scheme, _, value = authorization.partition(b" ")
        if scheme.lower() == b"bearer" and value.strip():
            return value.strip().decode("latin-1")
    if x_api_key and x_api_key.strip():
        return x_api_key.strip().decode("latin-1")
    return None
