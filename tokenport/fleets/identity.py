"""A device's identity with nothing secret stored per device (docs/fleets.md, "Identity").

- A production batch has a random 32-byte **batch key**, kept sealed under its zone's key.
- A device's **secret** is HMAC-SHA256(batch key, serial): the factory flashes it; tokenport
  derives it again when the device activates, and stores nothing per device.
- **Activation** answers a single-use challenge: MAC = HMAC-SHA256(device secret,
  serial + "\\n" + nonce), hex.
- A **device token** (`tpd_…`) names the device and its expiry and is signed with the server's
  token key: checking it needs no database, and a revoked device is refused by its state.

Plain Python: the caller supplies the keys."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SERIAL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")  # use with fullmatch
DEVICE_TOKEN_PREFIX = "tpd_"
FLEET_KEY_PREFIX = "tpf_"
BATCH_KEY_BYTES = 32
NONCE_BYTES = 16
_SEAL_NONCE = 12
_BATCH_FORMAT = b"tokenport.batch-key.v1"
_TOKEN_FORMAT = b"tokenport.device-token.v1"
_TOKEN_MAC_BYTES = 16  # 128 bits


def new_batch_key() -> bytes:
    return os.urandom(BATCH_KEY_BYTES)


def new_nonce() -> str:
    return os.urandom(NONCE_BYTES).hex()


def device_secret(batch_key: bytes, serial: str) -> bytes:
    """What the factory flashes into the device: HMAC-SHA256(batch key, serial as UTF-8)."""
    return hmac.new(batch_key, serial.encode(), hashlib.sha256).digest()


def activation_mac(secret: bytes, serial: str, nonce: str) -> str:
    """The device's answer to a challenge: hex HMAC-SHA256(secret, serial + "\\n" + nonce)."""
    return hmac.new(secret, f"{serial}\n{nonce}".encode(), hashlib.sha256).hexdigest()


def mac_matches(secret: bytes, serial: str, nonce: str, given: str) -> bool:
    return hmac.compare_digest(activation_mac(secret, serial, nonce).encode(), given.lower().encode())


# --- batch keys at rest ----------------------------------------------------------------------------


class SealedKeyError(Exception):
    """A batch key does not open under this zone's key (wrong zone, fleet or batch, or altered)."""


def _aad(zone: str, fleet_id: str, batch_id: str) -> bytes:
    return b"|".join((_BATCH_FORMAT, zone.encode(), fleet_id.encode(), batch_id.encode()))


def seal_batch_key(zone_key: bytes, zone: str, fleet_id: str, batch_id: str, batch_key: bytes) -> bytes:
    nonce = os.urandom(_SEAL_NONCE)
    return nonce + AESGCM(zone_key).encrypt(nonce, batch_key, _aad(zone, fleet_id, batch_id))


def open_batch_key(zone_key: bytes, zone: str, fleet_id: str, batch_id: str, sealed: bytes) -> bytes:
    try:
        aad = _aad(zone, fleet_id, batch_id)
        return AESGCM(zone_key).decrypt(sealed[:_SEAL_NONCE], sealed[_SEAL_NONCE:], aad)
    except (InvalidTag, ValueError) as exc:
        raise SealedKeyError("the batch key does not open under this zone's key") from exc


# --- device tokens ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceToken:
    serial: str
    expires_at: int  # unix seconds


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _token_mac(token_key: bytes, body: str) -> bytes:
    mac = hmac.new(token_key, _TOKEN_FORMAT + b"|" + body.encode(), hashlib.sha256)
    return mac.digest()[:_TOKEN_MAC_BYTES]


def issue_token(token_key: bytes, serial: str, expires_at: int) -> str:
    """`tpd_<serial, base64url>.<expiry>.<MAC, base64url>`."""
    body = f"{_b64(serial.encode())}.{expires_at}"
    return f"{DEVICE_TOKEN_PREFIX}{body}.{_b64(_token_mac(token_key, body))}"


def read_token(token_key: bytes, token: str) -> DeviceToken | None:
    """The token's device and expiry if tokenport signed it (expired or not); None otherwise."""
    if not token.startswith(DEVICE_TOKEN_PREFIX):
        return None
    body, _, mac = token[len(DEVICE_TOKEN_PREFIX) :].rpartition(".")
    serial_b64, _, expiry = body.partition(".")
    try:
        ok = hmac.compare_digest(_unb64(mac), _token_mac(token_key, body))
        serial = _unb64(serial_b64).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    if not ok or not expiry.isdigit() or SERIAL_RE.fullmatch(serial) is None:
        return None
    return DeviceToken(serial, int(expiry))
