"""The `tokenport` command's contract: real subprocesses over a fresh data directory."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from uuid import uuid4

import pytest
from support.cli import Cli
from support.live import LiveServer, wait_until

from tokenport.store.db import open_database
from tokenport.store.tenants import TenantStore
from tokenport.store.usage import UsageStore
from tokenport.tenancy.keys import hash_key


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path / "home")


def test_tenants_create_and_list(cli: Cli) -> None:
    a = cli.json("tenants", "create", "acme")
    assert set(a) >= {"id", "name", "zone", "created_at"}
    assert (a["name"], a["zone"]) == ("acme", "overseas")
    assert a["id"].startswith("ten_")
    assert "no zone 'domestic'" in cli.fails("tenants", "create", "globex", "--zone", "domestic")
    assert cli.json("zones", "create", "domestic") == {"name": "domestic"}
    assert "already exists" in cli.fails("zones", "create", "domestic")
    b = cli.json("tenants", "create", "globex", "--zone", "domestic")
    assert [z["name"] for z in cli.json("zones", "list")] == ["domestic", "overseas"]
    assert (b["name"], b["zone"]) == ("globex", "domestic")
    assert (cli.home / "tokenport.db").exists()  # SQLite under TOKENPORT_HOME by default

    listed = cli.json("tenants", "list")
    assert isinstance(listed, list)
    assert [(t["id"], t["name"], t["zone"]) for t in listed] == [
        (a["id"], "acme", "overseas"),
        (b["id"], "globex", "domestic"),
    ]
    human = cli.ok("tenants", "list").stdout
    assert "acme" in human and "globex" in human and b["id"] in human

    assert "already exists" in cli.fails("tenants", "create", "acme")
    assert "tenant name" in cli.fails("tenants", "create", "bad name")
    assert "zone" in cli.fails("tenants", "create", "initech", "--zone", "Not_A_Zone")
    assert [t["name"] for t in cli.json("tenants", "list")] == ["acme", "globex"]


def test_default_zone_from_config(cli: Cli) -> None:
    cli.home.mkdir(parents=True)
    (cli.home / "tokenport.toml").write_text('[server]\ndefault_zone = "eu-west"\n')
    assert cli.json("tenants", "create", "acme")["zone"] == "eu-west"


def test_keys_create_list_revoke(cli: Cli) -> None:
    cli.ok("zones", "create", "domestic")
    cli.ok("tenants", "create", "acme", "--zone", "domestic")
    key = cli.json("keys", "create", "--tenant", "acme", "--label", "ci runner")
    assert key["id"].startswith("key_")
    secret = key["key"]
    assert secret.startswith("tpk_") and len(secret) > 20
    assert (key["tenant"], key["zone"], key["label"], key["revoked"]) == (
        "acme",
        "domestic",
        "ci runner",
        False,
    )
    limited = cli.json("keys", "create", "--tenant", "acme", "--rpm", "30")
    assert limited["rpm_limit"] == 30

    human = cli.ok("keys", "create", "--tenant", "acme").stdout  # the secret is printed for humans too
    assert any(line.startswith("tpk_") for line in human.splitlines())

    res = cli.ok("keys", "list", "--tenant", "acme", "--json")
    assert secret not in res.stdout and secret[12:] not in res.stdout
    listed = json.loads(res.stdout)
    assert len(listed) == 3
    for k in listed:
        assert "key" not in k
    by_id = {k["id"]: k for k in listed}
    assert by_id[key["id"]]["label"] == "ci runner"
    assert by_id[key["id"]]["prefix"] == secret[:12]
    assert by_id[key["id"]]["zone"] == "domestic"

    res = cli.ok("keys", "revoke", key["id"])
    assert key["id"] in res.stdout
    after = {k["id"]: k for k in cli.json("keys", "list", "--tenant", "acme")}
    assert after[key["id"]]["revoked"] is True and after[key["id"]]["revoked_at"]
    assert after[limited["id"]]["revoked"] is False

    err = cli.fails("keys", "revoke", "key_doesnotexist")
    assert "key_doesnotexist" in err

    # the database holds the hash, never the secret
    engine = open_database(f"sqlite:///{cli.home / 'tokenport.db'}")
    try:
        with engine.connect() as conn:
            records = TenantStore(engine).load_key_records(conn)
    finally:
        engine.dispose()
    mine = {r.id: r for r in records}[key["id"]]
    assert mine.key_hash == hash_key(secret)
    assert mine.revoked is True


def test_unknown_tenant(cli: Cli) -> None:
    cli.ok("tenants", "create", "acme")
    for args in (
        ("keys", "create", "--tenant", "nobody"),
        ("keys", "list", "--tenant", "nobody"),
        ("usage", "--tenant", "nobody"),
    ):
        assert "nobody" in cli.fails(*args)
    assert cli.json("keys", "list", "--tenant", "acme") == []


def test_usage(cli: Cli) -> None:
    assert "no tokenport database" in cli.fails("usage")  # a read-only command creates nothing
    assert not cli.home.exists()
    cli.ok("tenants", "create", "someone")
    empty = cli.json("usage")
    assert empty == {
        "data": [],
        "totals": {"requests": 0, "prompt_tokens": 0, "cached_tokens": 0, "completion_tokens": 0},
    }
    assert cli.json("usage", "--since", "2026-01-01T00:00:00Z")["data"] == []
    assert cli.json("usage", "--since", "2026-01-01T00:00:00+08:00")["totals"]["requests"] == 0

    for bad in ("yesterday", "2026-01-01T00:00:00", "2026-02-30T00:00:00Z"):
        assert "since" in cli.fails("usage", "--since", bad)
    assert "total: 0 requests" in cli.ok("usage").stdout


def test_usage_since_out_of_range(cli: Cli) -> None:
    """A well-formed timestamp that cannot be converted to UTC is bad input, not a crash."""
    cli.fails("usage", "--since", "0001-01-01T00:00:00+01:00")


def test_database_url_env_is_honoured(tmp_path: Path, postgres_server) -> None:
    url = postgres_server.create_database(f"cli_{uuid4().hex[:12]}")
    cli = Cli(tmp_path / "home", {"TOKENPORT_DATABASE_URL": url})
    # even over a config file that names another database
    cli.home.mkdir(parents=True)
    (cli.home / "tokenport.toml").write_text(f'[database]\nurl = "sqlite:///{tmp_path / "other.db"}"\n')
    t = cli.json("tenants", "create", "pg-tenant")
    key = cli.json("keys", "create", "--tenant", "pg-tenant")
    assert [x["name"] for x in cli.json("tenants", "list")] == ["pg-tenant"]
    assert cli.json("usage")["totals"]["requests"] == 0

    engine = open_database(url)
    try:
        tenants = TenantStore(engine).list_tenants()
        keys = TenantStore(engine).list_keys("pg-tenant")
    finally:
        engine.dispose()
    assert [(x.id, x.name) for x in tenants] == [(t["id"], "pg-tenant")]
    assert [k.id for k in keys] == [key["id"]]
    assert not (cli.home / "tokenport.db").exists()
    assert not (tmp_path / "other.db").exists()


# --- with a running server --------------------------------------------------------------------


def test_cli_against_a_running_server(mock_server: LiveServer) -> None:
    """The CLI and a live server share the database: changes reach the server within 1 s."""
    tenant = f"cli-{uuid4().hex[:8]}"
    created = mock_server.cli_json("tenants", "create", tenant)
    assert created["zone"] == "overseas"
    key = mock_server.cli_json("keys", "create", "--tenant", tenant, "--label", "live")
    wait_until(lambda: mock_server.key_status(key["key"]) == 200, 1.0, 0.02, "CLI key accepted by server")

    req = urllib.request.Request(
        mock_server.base_url + "/v1/chat/completions",
        data=json.dumps({"model": "mock-model", "messages": [{"role": "user", "content": "hi"}]}).encode(),
        headers={"Authorization": f"Bearer {key['key']}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200
        request_id = r.headers["x-request-id"]

    record = mock_server.record(request_id)
    assert (record["tenant"], record["key_id"]) == (tenant, key["id"])
    assert (record["prompt_tokens"], record["completion_tokens"]) == (10, 20)
    report = mock_server.cli_json("usage", "--tenant", tenant)
    assert [r["request_id"] for r in report["data"]] == [request_id]
    assert report["totals"] == {
        "requests": 1,
        "prompt_tokens": 10,
        "cached_tokens": 0,
        "completion_tokens": 20,
    }

    res = mock_server.cli("keys", "revoke", key["id"])
    assert res.returncode == 0
    wait_until(lambda: mock_server.key_status(key["key"]) == 403, 1.0, 0.02, "CLI revocation seen by server")

    # the CLI reads what the server wrote, through the same store
    engine = open_database(f"sqlite:///{mock_server.home / 'tokenport.db'}")
    try:
        assert UsageStore(engine).totals(tenant)["completion_tokens"] == 20
    finally:
        engine.dispose()
