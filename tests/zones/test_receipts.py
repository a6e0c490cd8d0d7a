"""Signed processing receipts: every response names its receipt, the tenant fetches it, and
`tokenport receipts verify` checks it offline; any altered field, proof or signature fails."""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
from pathlib import Path

import httpx
import openai
import pytest
from support.live import TOKENPORT

from tokenport.audit.heads import Signer
from tokenport.audit.receipts import deletion_receipt, verify_receipt
from tokenport.audit.receipts import sign as sign_doc


def _chat(server, secret: str, stream: bool) -> tuple[httpx.Response, bytes, bytes]:
    body = json.dumps(
        {
            "model": "mock-model",
            "messages": [{"role": "user", "content": "receipt please"}],
            "max_tokens": 6,
            "stream": stream,
        }
    ).encode()
    headers = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}
    with (
        httpx.Client(base_url=server.base_url) as client,
        client.stream("POST", "/v1/chat/completions", content=body, headers=headers) as r,
    ):
        received = b"".join(r.iter_raw())
    return r, body, received


def _receipt(server, secret: str, receipt_id: str) -> httpx.Response:
    return httpx.get(
        f"{server.base_url}/v1/receipts/{receipt_id}",
        headers={"Authorization": f"Bearer {secret}"},
        timeout=10,
    )


def _verify_cli(path: Path, keys: Path | None = None) -> tuple[int, dict]:
    args = [TOKENPORT, "receipts", "verify", str(path), "--json", *(["--keys", str(keys)] if keys else [])]
    res = subprocess.run(args, capture_output=True, text=True)
    return res.returncode, json.loads(res.stdout)


@pytest.mark.parametrize("stream", [False, True])
def test_a_receipt_verifies_offline_and_matches_what_was_sent(
    mock_server, tmp_path: Path, stream: bool
) -> None:
    key_id, secret = mock_server.new_key("receipted")
    r, body, received = _chat(mock_server, secret, stream)
    assert r.status_code == 200
    receipt_id = r.headers["x-tokenport-receipt-id"]
    assert receipt_id == r.headers["x-request-id"]

    got = _receipt(mock_server, secret, receipt_id)
    assert got.status_code == 200, got.text
    doc = got.json()
    record = doc["record"]
    assert doc["type"] == "tokenport.receipt.v1" and doc["receipt_id"] == receipt_id
    assert record["request_sha256"] == hashlib.sha256(body).hexdigest()
    assert record["response_sha256"] == hashlib.sha256(received).hexdigest()
    usage = mock_server.record(receipt_id)
    tenants = {t["name"]: t["id"] for t in mock_server.cli_json("tenants", "list")}
    assert record["tenant_id"] == tenants["receipted"]
    for field in ("key_id", "zone", "backend", "model", "prompt_tokens", "completion_tokens"):
        assert record[field] == usage[field], field
    assert record["cost_nano_usd"] == usage["cost_nano_usd"] and record["retention"] == "none"
    assert record["stream"] is stream and record["key_id"] == key_id
    assert (
        doc["audit"]["zone"] == record["zone"] and doc["audit"]["tree_head"]["size"] > doc["audit"]["index"]
    )

    path = tmp_path / "receipt.json"
    path.write_text(json.dumps(doc))
    keys = tmp_path / "keys.json"
    keys.write_text(httpx.get(mock_server.base_url + "/.well-known/tokenport/keys").text)
    assert _verify_cli(path) == (0, {"ok": True, "problems": [], "pinned": False})
    assert _verify_cli(path, keys) == (0, {"ok": True, "problems": [], "pinned": True})

    altered = copy.deepcopy(doc)
    altered["record"]["completion_tokens"] += 1
    path.write_text(json.dumps(altered))
    rc, out = _verify_cli(path, keys)
    assert rc == 1 and any("signature" in p for p in out["problems"])
    assert any("altered" in p for p in out["problems"])


def test_receipts_are_the_tenants_own(mock_server) -> None:
    _, mine = mock_server.new_key("receipt-owner")
    _, theirs = mock_server.new_key("receipt-stranger")
    r, _, _ = _chat(mock_server, mine, False)
    receipt_id = r.headers["x-tokenport-receipt-id"]
    assert _receipt(mock_server, mine, receipt_id).status_code == 200
    other = _receipt(mock_server, theirs, receipt_id)
    assert other.status_code == 404 and other.json()["error"]["code"] == "receipt_not_found"
    assert "x-request-id" in other.headers
    assert _receipt(mock_server, mine, "req_does_not_exist").status_code == 404
    assert httpx.get(f"{mock_server.base_url}/v1/receipts/{receipt_id}").status_code == 401


def test_refused_requests_have_receipts_too(mock_server) -> None:
    """A refusal after authentication is recorded, audited and receipted like any request."""
    _, secret = mock_server.new_key("receipt-refused")
    client = openai.OpenAI(base_url=mock_server.base_url + "/v1", api_key=secret, max_retries=0)
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    receipt_id = exc.value.response.headers["x-tokenport-receipt-id"]
    doc = _receipt(mock_server, secret, receipt_id).json()
    assert doc["record"]["status"] == 404 and doc["record"]["completion_tokens"] == 0
    assert verify_receipt(doc) == []
    bad = httpx.post(mock_server.base_url + "/v1/chat/completions", json={}, headers={"Authorization": "x"})
    assert bad.status_code == 401 and "x-tokenport-receipt-id" not in bad.headers


@pytest.fixture
def signed(mock_server) -> dict:
    _, secret = mock_server.new_key("receipt-tamper")
    r, _, _ = _chat(mock_server, secret, False)
    return _receipt(mock_server, secret, r.headers["x-tokenport-receipt-id"]).json()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d["record"].__setitem__("model", "other"), "altered"),
        (lambda d: d["record"].__setitem__("zone", "domestic"), "different zones"),
        (lambda d: d.__setitem__("receipt_id", "req_other"), "not the receipt's request"),
        (lambda d: d["audit"].__setitem__("index", d["audit"]["index"] + 1), "inclusion proof"),
        (lambda d: d["audit"]["tree_head"].__setitem__("root", "00" * 32), "inclusion proof"),
        (lambda d: d["audit"]["tree_head"].__setitem__("at", "2020-01-01T00:00:00Z"), "tree head"),
        (lambda d: d.__setitem__("signature", "00" * 64), "receipt's signature"),
        (lambda d: d.__setitem__("public_key", "11" * 32), "does not match the key id"),
        (lambda d: d.pop("audit"), "malformed"),
    ],
)
def test_any_change_to_a_receipt_fails_verification(signed: dict, change, expected: str) -> None:
    assert verify_receipt(signed) == []
    doc = copy.deepcopy(signed)
    change(doc)
    problems = verify_receipt(doc)
    assert any(expected in p for p in problems), problems


def test_a_receipt_signed_by_an_unpinned_key_is_refused(signed: dict) -> None:
    """A forger can re-sign an altered receipt with their own key; pinning the published keys
    catches it."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    published = {signed["key_id"]: signed["public_key"]}
    assert verify_receipt(signed, published) == []
    forged = copy.deepcopy(signed)
    forged["record"]["cost_nano_usd"] = 0
    forged = sign_doc(
        {k: v for k, v in forged.items() if k != "signature"}, Signer("x", Ed25519PrivateKey.generate())
    )
    assert any("not among the trusted keys" in p for p in verify_receipt(forged, published))


def test_deletion_receipts_commit_to_the_deleted_ids() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    signer = Signer("overseas", Ed25519PrivateKey.generate())
    doc = deletion_receipt("ten_1", "overseas", ["req_b", "req_a"], 7, signer, "2026-11-28T00:00:00Z")
    assert doc["request_ids"] == ["req_a", "req_b"] and doc["records_deleted"] == 2
    assert verify_receipt(doc) == [] and verify_receipt(doc, {signer.key_id: signer.public_key_hex}) == []
    dropped = {**doc, "request_ids": ["req_a"]}
    assert any("signature" in p for p in verify_receipt(dropped))
