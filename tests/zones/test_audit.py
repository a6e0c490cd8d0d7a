"""The audit log: one content-free entry per request in its zone's Merkle tree, signed tree heads,
and `tokenport audit verify` finding every kind of tampering on a copy of the store."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import openai
import pytest
from sqlalchemy import Engine
from support.live import TOKENPORT
from support.rows import usage_row

from tokenport.audit.heads import TreeHead, verify_signature
from tokenport.audit.merkle import inclusion_proof, leaf_hash, root, verify_consistency, verify_inclusion
from tokenport.audit.service import AuditService
from tokenport.clock import FakeClock
from tokenport.store.audit import AuditStore
from tokenport.store.db import open_database
from tokenport.store.usage import UsageStore

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _write(engine: Engine, ids: range, zone: str = "overseas") -> None:
    rows = [usage_row(f"req_{i:03d}", "ten_a", T0 + timedelta(seconds=i), zone=zone) for i in ids]
    UsageStore(engine).write_settlements([{"usage": r} for r in rows])


def test_every_usage_record_is_an_entry_in_its_zones_tree(engine: Engine, tmp_path: Path) -> None:
    _write(engine, range(5))
    _write(engine, range(5, 7), zone="domestic")
    _write(engine, range(3))  # a retried batch: already written, so no new entries
    store = AuditStore(engine)
    audit = AuditService(store, tmp_path / "keys", FakeClock(T0))
    assert {z: size for z, (size, _) in store.sizes().items()} == {"overseas": 5, "domestic": 2}
    entries = store.entries("overseas")
    assert [e.index for e in entries] == list(range(5))
    first = json.loads(entries[0].entry)
    assert first["type"] == "request" and first["request_id"] == "req_000" and first["zone"] == "overseas"
    assert set(first) >= {
        "tenant_id",
        "key_id",
        "model",
        "backend",
        "status",
        "prompt_tokens",
        "cost_nano_usd",
    }
    leaves = [leaf_hash(e.entry) for e in entries]
    assert entries[-1].root == root(leaves).hex()
    assert verify_inclusion(2, 5, leaves[2], inclusion_proof(2, leaves), root(leaves))

    heads = audit.sign_heads()
    assert [(h.zone, h.size) for h in heads] == [("domestic", 2), ("overseas", 5)]
    assert audit.sign_heads() == []  # nothing new
    assert all(not z["problems"] for z in audit.verify())
    assert (tmp_path / "keys" / "audit-overseas.pem").stat().st_mode & 0o777 == 0o600
    assert {k["zone"] for k in store.public_keys()} == {"overseas", "domestic"}


# --- tampering, on copies of a SQLite store, through the CLI -------------------------------------


@pytest.fixture(scope="module")
def sound(tmp_path_factory) -> Path:
    """A home with 10 overseas entries, heads signed at sizes 5 and 10."""
    home = tmp_path_factory.mktemp("audit-home")
    engine = open_database(f"sqlite:///{home}/tokenport.db")
    audit = AuditService(AuditStore(engine), home / "keys", FakeClock(T0))
    _write(engine, range(5))
    audit.sign_heads()
    _write(engine, range(5, 10))
    audit.sign_heads()
    engine.dispose()
    return home


def _verify(home: Path) -> tuple[int, dict]:
    env = {"TOKENPORT_HOME": str(home), "PATH": "/usr/bin:/bin"}
    res = subprocess.run([TOKENPORT, "audit", "verify", "--json"], env=env, capture_output=True, text=True)
    assert "Traceback" not in res.stderr, res.stderr
    return res.returncode, next(z for z in json.loads(res.stdout)["zones"] if z["zone"] == "overseas")


def _tampered(sound: Path, tmp_path: Path, *sql: str) -> Path:
    home = tmp_path / "copy"
    shutil.copytree(sound, home)
    with sqlite3.connect(home / "tokenport.db") as conn:
        for statement in sql:
            conn.execute(statement)
    return home


def test_an_untouched_log_verifies(sound: Path, tmp_path: Path) -> None:
    rc, zone = _verify(_tampered(sound, tmp_path))
    assert rc == 0 and zone["problems"] == [] and zone["entries"] == 10


@pytest.mark.parametrize(
    ("what", "sql", "first_bad"),
    [
        (
            "a changed byte",
            [
                "UPDATE audit_entries SET entry = replace(entry, '\"status\":200', '\"status\":201') "
                "WHERE idx = 4"
            ],
            4,
        ),
        ("a deleted entry", ["DELETE FROM audit_entries WHERE idx = 6"], 6),
        (
            "two entries swapped",
            [
                "UPDATE audit_entries SET idx = -1 WHERE idx = 2",
                "UPDATE audit_entries SET idx = 2 WHERE idx = 5",
                "UPDATE audit_entries SET idx = 5 WHERE idx = -1",
            ],
            2,
        ),
        (
            "a truncated log",
            ["DELETE FROM audit_entries WHERE idx >= 7", "UPDATE audit_state SET size = 7"],
            7,
        ),
        (
            "an inserted entry",
            [
                "UPDATE audit_entries SET idx = idx + 1000 WHERE idx >= 3",
                "UPDATE audit_entries SET idx = idx - 999 WHERE idx >= 1000",
                "INSERT INTO audit_entries (zone, idx, at, entry, leaf, root) "
                "SELECT zone, 3, at, replace(entry, 'req_003', 'req_999'), leaf, root "
                "FROM audit_entries WHERE idx = 4",
            ],
            3,
        ),
    ],
)
def test_tampering_is_found_at_its_index(
    sound: Path, tmp_path: Path, what: str, sql: list[str], first_bad: int
) -> None:
    rc, zone = _verify(_tampered(sound, tmp_path, *sql))
    assert rc == 1, what
    assert zone["first_bad_index"] == first_bad, (what, zone)


def test_a_consistent_rewrite_is_caught_by_the_signed_heads(sound: Path, tmp_path: Path) -> None:
    """Entry 7 changed and every hash after it recomputed: only the signed heads can tell."""
    home = _tampered(sound, tmp_path)
    engine = open_database(f"sqlite:///{home}/tokenport.db")
    entries = AuditStore(engine).entries("overseas")
    engine.dispose()
    forged = [e.entry if e.index != 7 else e.entry.replace(b'"status":200', b'"status":500') for e in entries]
    leaves = [leaf_hash(x) for x in forged]
    with sqlite3.connect(home / "tokenport.db") as conn:
        for i, x in enumerate(forged):
            conn.execute(
                "UPDATE audit_entries SET entry = ?, leaf = ?, root = ? WHERE idx = ?",
                (x.decode(), leaves[i].hex(), root(leaves[: i + 1]).hex(), i),
            )
    rc, zone = _verify(home)
    assert rc == 1
    assert zone["first_bad_index"] == 5  # after the last signed head the entries still match
    assert any("differ from the signed head of size 10" in p for p in zone["problems"])


def test_a_head_signed_with_another_key_is_refused(sound: Path, tmp_path: Path) -> None:
    home = _tampered(sound, tmp_path, "UPDATE audit_heads SET root = '00' || substr(root, 3) WHERE size = 10")
    rc, zone = _verify(home)
    assert rc == 1 and any("size 10 has no valid signature" in p for p in zone["problems"])
    head = TreeHead("overseas", 10, "ab" * 32, "2026-03-01T12:00:00Z")
    assert head.message() != TreeHead("overseas", 11, "ab" * 32, "2026-03-01T12:00:00Z").message()


# --- live: what the gateway appends ---------------------------------------------------------------


def test_requests_through_the_gateway_are_audited_without_content(mock_server) -> None:
    _, secret = mock_server.new_key("audited")
    client = openai.OpenAI(base_url=mock_server.base_url + "/v1", api_key=secret, max_retries=0)
    canary = "canary-audit-7f3d9c"
    raw = client.chat.completions.with_raw_response.create(
        model="mock-model", messages=[{"role": "user", "content": canary}], max_tokens=5
    )
    request_id = raw.headers["x-request-id"]
    mock_server.record(request_id)
    signed = mock_server.cli_json("audit", "sign")
    report = json.loads(mock_server.cli("audit", "verify", "--json").stdout)
    assert report["ok"] is True
    overseas = next(z for z in report["zones"] if z["zone"] == "overseas")
    assert overseas["entries"] >= 1
    assert signed == [] or {h["zone"] for h in signed} <= {"overseas", "domestic"}
    db = sqlite3.connect(mock_server.home / "tokenport.db")
    try:
        rows = db.execute(
            "SELECT entry FROM audit_entries WHERE entry LIKE ?", (f'%"{request_id}"%',)
        ).fetchall()
        assert len(rows) == 1
        entry = json.loads(rows[0][0])
        assert (entry["status"], entry["zone"], entry["model"]) == (200, "overseas", "mock-model")
        assert not db.execute("SELECT 1 FROM audit_entries WHERE entry LIKE ?", (f"%{canary}%",)).fetchall()
    finally:
        db.close()


def test_cross_zone_attempts_are_refused_and_audited_with_both_zones(mock_server) -> None:
    _, secret = mock_server.new_key("zone-crosser")
    client = openai.OpenAI(base_url=mock_server.base_url + "/v1", api_key=secret, max_retries=0)
    attempts = {
        "zone_conflict": dict(model="mock-model", extra_headers={"x-tokenport-zone": "domestic"}),
        "zone_mismatch": dict(model="domestic-model"),  # served only in the domestic zone
        "zone_conflict ": dict(model="mock-model", extra_headers={"x-tokenport-zone": "Secret Text"}),
    }
    ids = {}
    for code, kwargs in attempts.items():
        with pytest.raises(openai.PermissionDeniedError) as exc:
            client.chat.completions.create(
                messages=[{"role": "user", "content": "hi"}], max_tokens=5, **kwargs
            )
        assert exc.value.code == code.strip()
        ids[code] = exc.value.response.headers["x-request-id"]
        mock_server.record(ids[code])
    db = sqlite3.connect(mock_server.home / "tokenport.db")
    try:
        entries = {}
        for code, request_id in ids.items():
            (raw,) = db.execute(
                "SELECT entry FROM audit_entries WHERE entry LIKE ?", (f'%"{request_id}"%',)
            ).fetchone()
            entries[code] = json.loads(raw)
        assert not db.execute("SELECT 1 FROM audit_entries WHERE entry LIKE '%Secret Text%'").fetchall()
    finally:
        db.close()
    for code, entry in entries.items():
        assert (entry["status"], entry["error_code"], entry["zone"]) == (403, code.strip(), "overseas")
    assert entries["zone_conflict"]["other_zone"] == "domestic"
    assert entries["zone_mismatch"]["other_zone"] == "domestic"
    assert entries["zone_conflict "]["other_zone"] == "(not a zone name)"  # client text is never kept


def test_keys_heads_and_proofs_from_the_api_verify_offline(mock_server) -> None:
    _, secret = mock_server.new_key("prover")
    client = openai.OpenAI(base_url=mock_server.base_url + "/v1", api_key=secret, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="mock-model", messages=[{"role": "user", "content": "hi"}], max_tokens=5
    )
    mock_server.record(raw.headers["x-request-id"])
    mock_server.cli("audit", "sign")
    auth = {"Authorization": f"Bearer {secret}"}
    keys = httpx.get(mock_server.base_url + "/.well-known/tokenport/keys").json()["keys"]
    head = httpx.get(mock_server.base_url + "/v1/audit/head", headers=auth).json()
    key = next(k for k in keys if k["key_id"] == head["key_id"])
    assert (key["zone"], key["alg"], head["zone"]) == ("overseas", "Ed25519", "overseas")
    signed = TreeHead(head["zone"], head["size"], head["root"], head["at"])
    assert verify_signature(key["public_key"], signed.message(), head["signature"])

    size = head["size"]
    for index in (0, size - 1):
        p = httpx.get(
            mock_server.base_url + "/v1/audit/proof/inclusion",
            params={"index": index, "size": size},
            headers=auth,
        ).json()
        assert p["root"] == head["root"]
        proof = [bytes.fromhex(x) for x in p["proof"]]
        assert verify_inclusion(index, size, bytes.fromhex(p["leaf"]), proof, bytes.fromhex(head["root"]))
    c = httpx.get(
        mock_server.base_url + "/v1/audit/proof/consistency",
        params={"first": 1, "second": size},
        headers=auth,
    ).json()
    assert c["second_root"] == head["root"]
    assert verify_consistency(
        1,
        size,
        bytes.fromhex(c["first_root"]),
        bytes.fromhex(head["root"]),
        [bytes.fromhex(x) for x in c["proof"]],
    )
    bad = httpx.get(
        mock_server.base_url + "/v1/audit/proof/inclusion", params={"index": "x", "size": 1}, headers=auth
    )
    assert (
        bad.status_code == 400 and bad.json()["error"]["param"] == "index" and "x-request-id" in bad.headers
    )
    assert httpx.get(mock_server.base_url + "/v1/audit/head").status_code == 401


@pytest.mark.parametrize("stream", [False, True])
def test_the_body_hashes_are_those_of_what_was_received_and_sent(mock_server, stream: bool) -> None:
    _, secret = mock_server.new_key("hashed")
    body = json.dumps(
        {
            "model": "mock-model",
            "messages": [{"role": "user", "content": "hash me"}],
            "max_tokens": 5,
            "stream": stream,
        }
    ).encode()
    headers = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}
    with (
        httpx.Client(base_url=mock_server.base_url) as client,
        client.stream("POST", "/v1/chat/completions", content=body, headers=headers) as r,
    ):
        received = b"".join(r.iter_raw())  # the bytes as they came off the wire
        request_id = r.headers["x-request-id"]
    assert r.status_code == 200 and received
    record = mock_server.record(request_id)
    assert record["request_sha256"] == hashlib.sha256(body).hexdigest()
    assert record["response_sha256"] == hashlib.sha256(received).hexdigest()
    db = sqlite3.connect(mock_server.home / "tokenport.db")
    try:
        (raw,) = db.execute(
            "SELECT entry FROM audit_entries WHERE entry LIKE ?", (f'%"{request_id}"%',)
        ).fetchone()
    finally:
        db.close()
    entry = json.loads(raw)
    assert (entry["request_sha256"], entry["response_sha256"]) == (
        record["request_sha256"],
        record["response_sha256"],
    )


def test_administrative_actions_are_audited_in_their_zone(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {"TOKENPORT_HOME": str(home), "PATH": "/usr/bin:/bin"}

    def cli(*args: str) -> dict:
        res = subprocess.run([TOKENPORT, *args, "--json"], env=env, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout) if res.stdout.strip() else {}

    cli("zones", "create", "domestic")
    tenant = cli("tenants", "create", "acme", "--zone", "domestic")
    key = cli("keys", "create", "--tenant", "acme", "--rpm", "5")
    subprocess.run([TOKENPORT, "keys", "revoke", key["id"]], env=env, check=True, capture_output=True)
    db = sqlite3.connect(home / "tokenport.db")
    try:
        rows = db.execute("SELECT zone, idx, entry FROM audit_entries ORDER BY zone, idx").fetchall()
    finally:
        db.close()
    actions = [(zone, json.loads(e)["action"]) for zone, _, e in rows]
    assert ("domestic", "zone.create") in actions
    assert [a for z, a in actions if z == "domestic" and a != "zone.create"] == [
        "tenant.create",
        "key.create",
        "key.revoke",
    ]
    created = next(json.loads(e) for z, _, e in rows if json.loads(e)["action"] == "key.create")
    assert (created["key_id"], created["tenant_id"], created["rpm_limit"]) == (key["id"], tenant["id"], 5)
    assert not any(key["key"] in e for _, _, e in rows), "never the secret"
    subprocess.run([TOKENPORT, "audit", "sign"], env=env, check=True, capture_output=True)
    assert subprocess.run([TOKENPORT, "audit", "verify"], env=env, capture_output=True).returncode == 0


def test_billing_actions_are_audited(tmp_path: Path) -> None:
    """Prices, rates and plans in every zone; credit, plan assignment and invoices in the
    tenant's zone; every entry content-free and the log still verifies."""
    home = tmp_path / "home"
    env = {"TOKENPORT_HOME": str(home), "PATH": "/usr/bin:/bin"}

    def run(*args: str) -> str:
        res = subprocess.run([TOKENPORT, *args], env=env, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        return res.stdout

    run("zones", "create", "domestic")
    run("tenants", "create", "acme", "--zone", "domestic")
    run("tenants", "create", "globex")  # the default zone: overseas
    run("prices", "set", "m1", "--input", "1", "--output", "2")
    run("fx", "set", "--period", "2026-10", "--cny-per-usd", "7.1")
    run("plans", "create", "pro", "--fee-usd", "20", "--five-hour", "1000", "--weekly", "5000")
    run("credits", "grant", "acme", "5.00")
    run("plans", "assign", "acme", "pro")
    invoice = json.loads(run("invoices", "issue", "--tenant", "acme", "--period", "2026-10", "--json"))
    run("invoices", "void", invoice["id"], "--reason", "duplicate")
    db = sqlite3.connect(home / "tokenport.db")
    try:
        rows = db.execute("SELECT zone, entry FROM audit_entries ORDER BY zone, idx").fetchall()
    finally:
        db.close()
    by_zone: dict[str, list[str]] = {}
    for zone, e in rows:
        by_zone.setdefault(zone, []).append(json.loads(e)["action"])
    for zone in ("domestic", "overseas"):  # settings every zone is subject to
        assert {"price.set", "fx.set", "plan.create"} <= set(by_zone[zone]), zone
    tenant_actions = ["ledger.grant", "plan.assign", "invoice.issue", "invoice.void"]
    assert [a for a in by_zone["domestic"] if a in tenant_actions] == tenant_actions
    assert not set(tenant_actions) & set(by_zone["overseas"])  # acme's actions stay in its zone
    issued = next(json.loads(e) for _, e in rows if json.loads(e)["action"] == "invoice.issue")
    assert issued["invoice_id"] == invoice["id"] and len(issued["sha256"]) == 64
    run("audit", "sign")
    assert subprocess.run([TOKENPORT, "audit", "verify"], env=env, capture_output=True).returncode == 0


@pytest.mark.tampers
def test_proofs_read_stored_subtrees_and_verify_checks_them(engine: Engine, tmp_path: Path) -> None:
    """A log of 1,000 entries: proofs from stored subtrees (levels >= 6) equal the RFC's proofs
    over all leaves, read O(log n) hashes, and a tampered stored subtree is found by verify."""
    from functools import partial

    from tokenport.audit.merkle import consistency_path, consistency_proof, inclusion_path
    from tokenport.store.audit import NODE_LEVEL

    _write(engine, range(1000))
    store = AuditStore(engine)
    leaves = [bytes.fromhex(e.leaf) for e in store.entries("overseas")]
    nodes = store.nodes("overseas")
    assert len(nodes) == sum(1000 >> level for level in range(NODE_LEVEL, 10))
    for index, size in [(0, 1000), (999, 1000), (517, 1000), (64, 65), (3, 700)]:
        proof = store.proof_source("overseas", size, partial(inclusion_path, index, size))
        assert proof == inclusion_proof(index, leaves[:size])
    for first in (1, 64, 333, 999):
        proof = store.proof_source("overseas", 1000, partial(consistency_path, first, 1000))
        assert proof == consistency_proof(first, leaves)
    audit = AuditService(store, tmp_path / "keys", FakeClock(T0))
    audit.sign_heads()
    assert all(not z["problems"] for z in audit.verify())
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE audit_nodes SET hash = '00' || substr(hash, 3) WHERE level = 7 AND idx = 3"
        )
    (report,) = audit.verify()
    assert report["first_bad_index"] == 3 << 7 and "level 7, index 3" in report["problems"][0]


def test_the_migration_stores_the_subtrees_of_an_existing_log(database_url: str) -> None:
    from alembic import command
    from alembic.config import Config

    from tokenport.audit.merkle import Frontier
    from tokenport.store.db import MIGRATIONS, connect

    engine = connect(database_url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0013")
    frontier, rows, expected = Frontier(), [], {}
    for i in range(200):
        entry = json.dumps({"type": "request", "request_id": f"req_{i}"}).encode()
        for level, idx, h in frontier.append(leaf_hash(entry)):
            if level >= 6:
                expected[(level, idx)] = h.hex()
        rows.append(
            {
                "zone": "overseas",
                "idx": i,
                "at": T0,
                "entry": entry.decode(),
                "leaf": leaf_hash(entry).hex(),
                "root": frontier.root().hex(),
                "ref": f"req_{i}",
            }
        )
    from sqlalchemy import insert

    from tokenport.store.schema import audit_entries

    with engine.begin() as conn:
        conn.execute(insert(audit_entries), rows)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    assert AuditStore(engine).nodes("overseas") == expected and len(expected) == 3 + 1
    engine.dispose()
