"""Device identity: the published reference vectors (docs/fleets.md, computed independently with
`openssl dgst -sha256 -mac HMAC`), sealed batch keys and signed device tokens."""

from __future__ import annotations

import pytest

from tokenport.fleets.identity import (
    SealedKeyError,
    activation_mac,
    device_secret,
    issue_token,
    mac_matches,
    open_batch_key,
    read_token,
    seal_batch_key,
)

BATCH_KEY = bytes(range(32))  # 000102...1f
SERIAL = "TOY-0001"
NONCE = "00112233445566778899aabbccddeeff"
SECRET_HEX = "1c918fb5e44dc4cbc6b89f9a9115a56135163390c73f00524f1f695b2cec1582"
MAC_HEX = "1f5ac7d7300bf28c9c1fc36c8d8e5438d587dfda8e2f9c5d21c67a326436d6a8"


def test_device_secret_reference_vector():
    assert device_secret(BATCH_KEY, SERIAL).hex() == SECRET_HEX


def test_activation_mac_reference_vector():
    assert activation_mac(bytes.fromhex(SECRET_HEX), SERIAL, NONCE) == MAC_HEX
    assert mac_matches(bytes.fromhex(SECRET_HEX), SERIAL, NONCE, MAC_HEX.upper())
    assert not mac_matches(bytes.fromhex(SECRET_HEX), SERIAL, NONCE[:-1] + "0", MAC_HEX)
    assert not mac_matches(bytes.fromhex(SECRET_HEX), "TOY-0002", NONCE, MAC_HEX)


def test_a_batch_key_opens_only_where_it_was_sealed():
    zone_key = bytes(32)
    sealed = seal_batch_key(zone_key, "overseas", "flt_1", "bat_1", BATCH_KEY)
    assert BATCH_KEY not in sealed
    assert open_batch_key(zone_key, "overseas", "flt_1", "bat_1", sealed) == BATCH_KEY
    for zone, fleet, batch, key in [
        ("domestic", "flt_1", "bat_1", zone_key),
        ("overseas", "flt_2", "bat_1", zone_key),
        ("overseas", "flt_1", "bat_2", zone_key),
        ("overseas", "flt_1", "bat_1", bytes([1]) * 32),
    ]:
        with pytest.raises(SealedKeyError):
            open_batch_key(key, zone, fleet, batch, sealed)


def test_device_tokens_are_signed_and_name_their_device():
    key = b"k" * 32
    token = issue_token(key, SERIAL, 1_900_000_000)
    assert token.startswith("tpd_")
    found = read_token(key, token)
    assert found is not None and (found.serial, found.expires_at) == (SERIAL, 1_900_000_000)
    assert read_token(b"x" * 32, token) is None  # another server's key
    other = issue_token(key, "TOY-0002", 1_900_000_000)
    forged = token.rsplit(".", 1)[0] + "." + other.rsplit(".", 1)[1]  # another device's MAC
    assert read_token(key, forged) is None
    longer = token.replace(".1900000000.", ".1900000001.")  # the expiry pushed back
    assert read_token(key, longer) is None
    for junk in ("tpd_", "tpd_..", "tpk_abc", "tpd_!!!.1.@@@", token[:-3]):
        assert read_token(key, junk) is None
