"""Retention: off by default (no content anywhere, at debug level too), opt-in per tenant with a
TTL, sealed per zone and tenant, purged on expiry or on request with a signed deletion receipt."""

from __future__ import annotations

import json
import sqlite3
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine
from support.live import mock_config, start_server, wait_until
from support.rows import usage_row

from tokenport.audit.receipts import verify_receipt
from tokenport.audit.service import AuditService
from tokenport.clock import FakeClock
from tokenport.store.audit import AuditStore
from tokenport.store.retention import RetentionStore
from tokenport.store.tenants import Tenant
from tokenport.store.usage import UsageStore
from tokenport.zones.retention import SealError, new_zone_key, retention_mode, seal, unseal
from tokenport.zones.vault import Vault

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def test_a_sealed_record_opens_only_in_its_zone_tenant_and_request() -> None:
    key = new_zone_key()
    sealed = seal(key, "overseas", "ten_a", "req_1", b'{"prompt": 1}', b"answer")
    assert unseal(key, "overseas", "ten_a", "req_1", sealed) == (b'{"prompt": 1}', b"answer")
    assert b"answer" not in sealed.ciphertext and b"prompt" not in sealed.ciphertext
    for zone, tenant, req, k in [
        ("domestic", "ten_a", "req_1", key),
        ("overseas", "ten_b", "req_1", key),
        ("overseas", "ten_a", "req_2", key),
        ("overseas", "ten_a", "req_1", new_zone_key()),  # another zone's key
    ]:
        with pytest.raises(SealError):
            unseal(k, zone, tenant, req, sealed)
    flipped = bytearray(sealed.ciphertext)
    flipped[-1] ^= 1
    with pytest.raises(SealError):
        unseal(
            key, "overseas", "ten_a", "req_1", type(sealed)(sealed.kek_id, sealed.wrapped_key, bytes(flipped))
        )
    assert retention_mode(None) == "none" and retention_mode(3600) == "encrypted:3600"


def _vault(engine: Engine, tmp_path: Path, clock: FakeClock) -> Vault:
    audit = AuditService(AuditStore(engine), tmp_path / "keys", clock)
    return Vault(RetentionStore(engine), tmp_path / "keys", audit, clock)


def _retain(engine: Engine, vault: Vault, request_id: str, tenant: str, ttl: int, at: datetime) -> None:
    row = usage_row(request_id, tenant, at)
    sealed = vault.sealed_row(request_id, tenant, row["zone"], ttl, b"secret prompt", b"secret answer", at)
    UsageStore(engine).write_settlements([{"usage": row, "retained": sealed}])


def test_records_expire_and_purges_are_audited_and_receipted(engine: Engine, tmp_path: Path) -> None:
    clock = FakeClock(T0)
    vault = _vault(engine, tmp_path, clock)
    _retain(engine, vault, "req_short", "ten_a", 60, T0)
    _retain(engine, vault, "req_long", "ten_a", 3600, T0)
    _retain(engine, vault, "req_other", "ten_b", 3600, T0)
    _retain(engine, vault, "req_short", "ten_a", 60, T0)  # a retried batch stores nothing twice
    assert vault.store.count() == 3
    assert vault.read("req_short", "ten_a")["request_body"] == "secret prompt"
    assert vault.read("req_short", "ten_b") is None  # another tenant's
    clock.advance(61)
    assert vault.read("req_short", "ten_a") is None  # expired reads as gone, even before the purge
    assert vault.purge_expired() == 1 and vault.store.count() == 2
    assert vault.read("req_long", "ten_a")["response_body"] == "secret answer"

    receipt = vault.purge_tenant(Tenant("ten_a", "a", "overseas", T0))
    assert receipt["request_ids"] == ["req_long"] and receipt["records_deleted"] == 1
    assert verify_receipt(receipt) == []
    assert vault.store.count("ten_a") == 0 and vault.store.count("ten_b") == 1
    entries = [json.loads(e.entry) for e in vault.audit.store.entries("overseas")]
    actions = [e["action"] for e in entries if e["type"] == "admin"]
    assert actions == ["retention.expire", "retention.purge"]
    purge = entries[receipt["audit_index"]]
    assert purge["records"] == 1 and purge["request_ids_sha256"] == receipt["request_ids_sha256"]
    again = vault.purge_tenant(Tenant("ten_a", "a", "overseas", T0))  # nothing left: still receipted
    assert again["records_deleted"] == 0 and verify_receipt(again) == []
    assert all(not p for z in vault.audit.verify() for p in z["problems"])


def test_a_record_moved_to_another_tenant_does_not_open(engine: Engine, tmp_path: Path) -> None:
    clock = FakeClock(T0)
    vault = _vault(engine, tmp_path, clock)
    _retain(engine, vault, "req_x", "ten_a", 3600, T0)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE retained SET tenant_id = 'ten_b' WHERE request_id = 'req_x'")
    assert vault.read("req_x", "ten_b") is None and vault.read("req_x", "ten_a") is None


@pytest.fixture(scope="module")
def debug_server(tmp_path_factory, mock_engine):
    """A server logging at debug level (SQL, HTTP and all): content must still appear nowhere."""
    server = start_server(
        tmp_path_factory.mktemp("debug-home"),
        mock_config(mock_engine.url),
        env_extra={"TOKENPORT_LOG_LEVEL": "debug"},
    )
    yield server
    server.stop()
    server.verify_ledger()


def _chat(server, secret: str, text: str, stream: bool) -> httpx.Response:
    body = {
        "model": "mock-model",
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}],
        "max_tokens": 3,
        "stream": stream,
        "mock_scenario": "echo",
    }
    r = httpx.post(
        server.base_url + "/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {secret}"},
        timeout=10,
    )
    assert r.status_code == 200 and text in r.text  # the mock echoes the canary into the completion
    return r


def test_canaries_persist_nowhere_and_retained_ones_only_sealed(debug_server) -> None:
    _, plain = debug_server.new_key("zero-retention")
    _, keeper = debug_server.new_key("keeps-memory")
    debug_server.cli("tenants", "retention", "keeps-memory", "--ttl", "1h")
    canaries = [f"CANARY{uuid.uuid4().hex}" for _ in range(6)]
    for canary, stream in zip(canaries[:2], (False, True), strict=True):
        _chat(debug_server, plain, canary, stream)
    # The retention change reaches the server through the change feed: its receipt id header
    # comes first, so wait until a request is recorded as retained.
    tries = []

    def retained_now() -> bool:
        tries.append(_chat(debug_server, keeper, canaries[2], False))
        return debug_server.record(tries[-1].headers["x-request-id"])["retention"] == "encrypted:3600"

    wait_until(retained_now, 10, 0.3, "retention on")
    kept = [tries[-1], _chat(debug_server, keeper, canaries[3], True)]
    bad = httpx.post(
        debug_server.base_url + "/v1/chat/completions",
        content=b'{"model": "mock-model", "messages": [' + canaries[4].encode(),
        headers={"Authorization": f"Bearer {keeper}"},
    )
    assert bad.status_code == 400
    unknown = httpx.post(  # client text in the model field: refused, and recorded only as a hash
        debug_server.base_url + "/v1/chat/completions",
        json={"model": canaries[5], "messages": [{"role": "user", "content": "x"}]},
        headers={"Authorization": f"Bearer {plain}"},
    )
    assert unknown.status_code == 404
    assert debug_server.record(unknown.headers["x-request-id"])["model"].startswith("sha256:")

    for r in kept:
        request_id = r.headers["x-request-id"]
        got = httpx.get(
            f"{debug_server.base_url}/v1/retained/{request_id}", headers={"Authorization": f"Bearer {keeper}"}
        )
        assert got.status_code == 200, got.text
        doc = got.json()
        assert (
            doc["response_body"] == r.text
            and json.loads(doc["request_body"])["messages"][1]["content"] in r.text
        )
        other = httpx.get(
            f"{debug_server.base_url}/v1/retained/{request_id}", headers={"Authorization": f"Bearer {plain}"}
        )
        assert other.status_code == 404 and other.json()["error"]["code"] == "not_found"
        receipt = httpx.get(
            f"{debug_server.base_url}/v1/receipts/{request_id}", headers={"Authorization": f"Bearer {keeper}"}
        ).json()
        assert receipt["record"]["retention"] == "encrypted:3600" and verify_receipt(receipt) == []

    metrics = httpx.get(debug_server.base_url + "/metrics").text
    needles = [c.encode() for c in canaries]
    found = [
        (path.name, n[:16])
        for path in debug_server.home.rglob("*")
        if path.is_file()
        for n in needles
        if n in path.read_bytes()
    ]
    assert not found, f"content persisted in plaintext: {found}"
    assert not any(c in metrics for c in canaries)
    log = debug_server.log()
    assert "DEBUG" in log and not any(c in log for c in canaries)
    db = sqlite3.connect(debug_server.home / "tokenport.db")
    try:
        assert db.execute("SELECT count(*) FROM retained").fetchone()[0] == 3  # 2 answers + the 400
    finally:
        db.close()

    out = debug_server.home / "deletion.json"
    debug_server.cli("tenants", "purge", "keeps-memory", "--out", str(out))
    receipt = json.loads(out.read_text())
    assert receipt["records_deleted"] == 3 and verify_receipt(receipt) == []
    for r in kept:
        gone = httpx.get(
            f"{debug_server.base_url}/v1/retained/{r.headers['x-request-id']}",
            headers={"Authorization": f"Bearer {keeper}"},
        )
        assert gone.status_code == 404


def test_usage_rows_outside_the_content_free_schema_are_refused(engine: Engine, tmp_path: Path) -> None:
    from tokenport.store.usage import DeadLetterFile
    from tokenport.usage_record import DisallowedField

    row = {**usage_row("req_leaky", "ten_a", T0), "prompt": "CANARY-secret"}
    with pytest.raises(DisallowedField):
        UsageStore(engine).write_settlements([{"usage": row}])
    assert UsageStore(engine).count() == 0
    dead = DeadLetterFile(tmp_path / "dead.jsonl")
    dead({"usage": row}, DisallowedField("x"))
    text = (tmp_path / "dead.jsonl").read_text()
    assert "req_leaky" in text and "CANARY" not in text


def test_retention_settings_are_checked(debug_server) -> None:
    debug_server.new_key("retention-input")
    res = debug_server.cli("tenants", "retention", "retention-input", "--ttl", "0", check=False)
    assert res.returncode == 2 and "not a duration" in res.stderr
    res = debug_server.cli("tenants", "retention", "no-such-tenant", "--ttl", "1h", check=False)
    assert res.returncode == 2 and "no tenant" in res.stderr
    off = debug_server.cli_json("tenants", "retention", "retention-input", "--off")
    assert off["retention_ttl_s"] is None
