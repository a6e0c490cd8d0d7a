"""Opt-in retention, sealed: envelope encryption with AES-256-GCM.

Each retained record gets its own data key; the data key is wrapped with its zone's key (the
key-encryption key, a file in the server's key directory). The zone, tenant and request id are the
associated data of both encryptions, so a record moved to another zone's or tenant's row, or
opened with another zone's key, fails authentication instead of decrypting.

Plain Python: no files, no database. The caller supplies the zone key.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

NONCE = 12
_FORMAT = b"tokenport.retained.v1"


class SealError(Exception):
    """The record cannot be opened: wrong zone, tenant or key, or it was altered."""


@dataclass(frozen=True)
class Sealed:
    kek_id: str
    wrapped_key: bytes  # nonce + AES-GCM(zone key, data key)
    ciphertext: bytes  # nonce + AES-GCM(data key, request and response bodies)


def new_zone_key() -> bytes:
    return AESGCM.generate_key(256)


def kek_id(zone_key: bytes) -> str:
    """Names a zone key without revealing it."""
    return hashlib.sha256(_FORMAT + b"|kek|" + zone_key).hexdigest()[:32]


def associated_data(zone: str, tenant_id: str, request_id: str) -> bytes:
    return b"|".join((_FORMAT, zone.encode(), tenant_id.encode(), request_id.encode()))


def seal(
    zone_key: bytes, zone: str, tenant_id: str, request_id: str, request: bytes, response: bytes
) -> Sealed:
    aad = associated_data(zone, tenant_id, request_id)
    data_key = AESGCM.generate_key(256)
    n1, n2 = os.urandom(NONCE), os.urandom(NONCE)
    plaintext = struct.pack(">Q", len(request)) + request + response
    ciphertext = n1 + AESGCM(data_key).encrypt(n1, plaintext, aad)
    wrapped = n2 + AESGCM(zone_key).encrypt(n2, data_key, aad)
    return Sealed(kek_id(zone_key), wrapped, ciphertext)


def unseal(
    zone_key: bytes, zone: str, tenant_id: str, request_id: str, sealed: Sealed
) -> tuple[bytes, bytes]:
    """(request body, response body)."""
    aad = associated_data(zone, tenant_id, request_id)
    try:
        w, c = sealed.wrapped_key, sealed.ciphertext
        data_key = AESGCM(zone_key).decrypt(w[:NONCE], w[NONCE:], aad)
        plaintext = AESGCM(data_key).decrypt(c[:NONCE], c[NONCE:], aad)
    except (InvalidTag, ValueError) as exc:
        raise SealError("the record does not open under this zone, tenant and request") from exc
    (n,) = struct.unpack(">Q", plaintext[:8])
    return plaintext[8 : 8 + n], plaintext[8 + n :]


def retention_mode(ttl_s: int | None) -> str:
    """What a usage record and its receipt say about retention."""
    return "none" if not ttl_s else f"encrypted:{ttl_s}"
