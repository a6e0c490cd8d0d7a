"""Signed tree heads: a zone's audit log size and root, signed with the zone's Ed25519 key.

The signed bytes are the head's canonical JSON, so anyone with the public key can check a head
without this code. A key id is the first 16 bytes of SHA-256 of the raw public key, in hex.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat


@dataclass(frozen=True)
class TreeHead:
    zone: str
    size: int
    root: str  # hex
    at: str  # ISO 8601, UTC

    def message(self) -> bytes:
        body = {"type": "tokenport.audit.tree_head.v1", **self.__dict__}
        return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def key_id(public: Ed25519PublicKey) -> str:
    return hashlib.sha256(public.public_bytes(Encoding.Raw, PublicFormat.Raw)).hexdigest()[:32]


def public_hex(public: Ed25519PublicKey) -> str:
    return public.public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


class Signer:
    """One zone's signing key."""

    def __init__(self, zone: str, private: Ed25519PrivateKey) -> None:
        self.zone = zone
        self.private = private
        self.public = private.public_key()
        self.key_id = key_id(self.public)
        self.public_key_hex = public_hex(self.public)

    def sign(self, message: bytes) -> str:
        return self.private.sign(message).hex()


def verify_signature(public_key_hex: str, message: bytes, signature_hex: str) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key_hex)).verify(
            bytes.fromhex(signature_hex), message
        )
    except (InvalidSignature, ValueError):
        return False
    return True
