"""The admin HTTP API, the OpenAPI document and request ids, against a live `tokenport serve`."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from datetime import datetime, timedelta
from email.message import Message
from urllib.parse import quote, urlencode
from uuid import uuid4

import pytest
from support.live import ADMIN_TOKEN, LiveServer, wait_until

from tokenport.api import admin

ERROR_FIELDS = {"message", "type", "param", "code"}


class Reply:
    def __init__(self, status: int, headers: Message, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def json(self):
        return json.loads(self.body)

    def error_code(self) -> str | None:
        err = self.json["error"]
        assert set(err) == ERROR_FIELDS, err
        assert isinstance(err["message"], str) and err["message"]
        return err["code"]


def call(
    server: LiveServer,
    method: str,
    path: str,
    body=None,
    token: str | None = ADMIN_TOKEN,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> Reply:
    hdrs = dict(headers or {})
    if token is not None:
        hdrs["Authorization"] = f"Bearer {token}"
    data = raw
    if body is not None:
        data = json.dumps(body).encode()
        hdrs["Content-Type"] = "application/json"
    req = urllib.request.Request(server.base_url + path, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return Reply(r.status, r.headers, r.read())
    except urllib.error.HTTPError as e:
        return Reply(e.code, e.headers, e.read())


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid4().hex[:10]}"


def models_status(server: LiveServer, secret: str) -> int:
    return call(server, "GET", "/v1/models", token=secret).status


def new_key(server: LiveServer, zone: str | None = None) -> tuple[str, dict]:
    name = unique("t")
    assert (
        call(server, "POST", "/admin/v1/tenants", {"name": name, **({"zone": zone} if zone else {})}).status
        == 201
    )
    r = call(server, "POST", "/admin/v1/keys", {"tenant": name, "label": "test"})
    assert r.status == 201, r.body
    return name, r.json


def chat(server: LiveServer, secret: str) -> str:
    r = call(
        server,
        "POST",
        "/v1/chat/completions",
        {"model": "mock-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20},
        token=secret,
    )
    assert r.status == 200, r.body
    return r.headers["x-request-id"]


# --- auth -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/admin/v1/tenants"),
        ("POST", "/admin/v1/tenants"),
        ("GET", "/admin/v1/keys"),
        ("POST", "/admin/v1/keys"),
        ("POST", "/admin/v1/keys/key_x/revoke"),
        ("GET", "/admin/v1/usage"),
    ],
)
def test_admin_requires_the_token(mock_server: LiveServer, method: str, path: str) -> None:
    body = {"name": unique("never")} if method == "POST" else None
    for token, extra in [
        (None, {}),
        ("wrong-token", {}),
        (ADMIN_TOKEN + "x", {}),
        (None, {"Authorization": ADMIN_TOKEN}),  # no scheme
        (None, {"x-api-key": ADMIN_TOKEN}),  # the admin token only goes in Authorization
    ]:
        r = call(mock_server, method, path, body, token=token, headers=extra)
        assert r.status == 401, (token, extra, r.body)
        assert r.headers["content-type"].startswith("application/json")
        assert r.error_code() == "invalid_admin_token"
        assert r.json["error"]["type"] == "authentication_error"
    if method == "POST" and path.endswith("tenants"):  # nothing was created
        names = [t["name"] for t in call(mock_server, "GET", "/admin/v1/tenants").json["data"]]
        assert body["name"] not in names


def test_tenant_secret_is_not_an_admin_token(mock_server: LiveServer) -> None:
    _, key = new_key(mock_server)
    r = call(mock_server, "GET", "/admin/v1/tenants", token=key["key"])
    assert r.status == 401


# --- tenants ----------------------------------------------------------------------------------


def test_create_and_list_tenants(mock_server: LiveServer) -> None:
    name = unique("acme")
    r = call(mock_server, "POST", "/admin/v1/tenants", {"name": name})
    assert r.status == 201
    t = r.json
    assert t["name"] == name and t["zone"] == "overseas" and t["id"].startswith("ten_")
    assert t["created_at"].endswith("Z")

    other = unique("dom")
    r = call(mock_server, "POST", "/admin/v1/tenants", {"name": other, "zone": "domestic"})
    assert r.status == 201 and r.json["zone"] == "domestic"

    listed = call(mock_server, "GET", "/admin/v1/tenants")
    assert listed.status == 200 and listed.json["object"] == "list"
    by_name = {x["name"]: x for x in listed.json["data"]}
    assert by_name[name] == t
    assert by_name[other]["zone"] == "domestic"


def test_duplicate_tenant_conflicts(mock_server: LiveServer) -> None:
    name = unique("dup")
    assert call(mock_server, "POST", "/admin/v1/tenants", {"name": name}).status == 201
    r = call(mock_server, "POST", "/admin/v1/tenants", {"name": name, "zone": "domestic"})
    assert r.status == 409
    assert r.error_code() == "conflict"
    zones = [
        x["zone"] for x in call(mock_server, "GET", "/admin/v1/tenants").json["data"] if x["name"] == name
    ]
    assert zones == ["overseas"]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"name": ""},
        {"name": "has space"},
        {"name": "-dash"},
        {"name": 5},
        {"name": "ok", "zone": "Bad_Zone"},
    ],
)
def test_invalid_tenant_is_400(mock_server: LiveServer, body: dict) -> None:
    r = call(mock_server, "POST", "/admin/v1/tenants", body)
    assert r.status == 400
    assert r.error_code() == "invalid_request"


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b'"name"'])
def test_bad_json_body_is_400(mock_server: LiveServer, raw: bytes) -> None:
    r = call(mock_server, "POST", "/admin/v1/tenants", raw=raw, headers={"Content-Type": "application/json"})
    assert r.status == 400
    assert r.error_code() == "invalid_json"


# --- keys -------------------------------------------------------------------------------------


def test_created_key_works_then_revoked_key_is_refused(mock_server: LiveServer) -> None:
    tenant, key = new_key(mock_server)
    assert key["id"].startswith("key_")
    secret = key["key"]
    assert secret.startswith("tpk_") and key["prefix"] == secret[:12]
    assert (key["tenant"], key["zone"], key["label"], key["revoked"]) == (tenant, "overseas", "test", False)

    # the running server accepts it within 1 s
    wait_until(lambda: models_status(mock_server, secret) == 200, 1.0, 0.02, "new key accepted")
    models = call(mock_server, "GET", "/v1/models", token=secret).json
    assert [m["id"] for m in models["data"]] == [
        "dead-model",
        "mock-embed",
        "mock-midfail",
        "mock-model",
        "mock-think",
        "mock-tools",
        "paid-model",
    ]  # its zone only

    r = call(mock_server, "POST", f"/admin/v1/keys/{key['id']}/revoke")
    assert r.status == 200
    assert r.json == {"id": key["id"], "revoked": True}
    wait_until(lambda: models_status(mock_server, secret) == 403, 1.0, 0.02, "revoked key refused")
    refused = call(mock_server, "GET", "/v1/models", token=secret)
    assert refused.error_code() == "key_revoked"
    chat_refused = call(
        mock_server,
        "POST",
        "/v1/chat/completions",
        {"model": "mock-model", "messages": [{"role": "user", "content": "hi"}]},
        token=secret,
    )
    assert chat_refused.status == 403 and chat_refused.error_code() == "key_revoked"

    listed = call(mock_server, "GET", f"/admin/v1/keys?tenant={tenant}").json["data"]
    assert [(k["id"], k["revoked"]) for k in listed] == [(key["id"], True)]
    assert listed[0]["revoked_at"].endswith("Z")
    again = call(mock_server, "POST", f"/admin/v1/keys/{key['id']}/revoke")
    assert again.status == 200
    listed_again = call(mock_server, "GET", f"/admin/v1/keys?tenant={tenant}").json["data"]
    assert listed_again[0]["revoked_at"] == listed[0]["revoked_at"]


def test_key_inherits_tenant_zone(mock_server: LiveServer) -> None:
    _, key = new_key(mock_server, zone="domestic")
    assert key["zone"] == "domestic"
    wait_until(lambda: models_status(mock_server, key["key"]) == 200, 1.0, 0.02, "new key accepted")
    models = call(mock_server, "GET", "/v1/models", token=key["key"]).json
    assert [m["id"] for m in models["data"]] == ["domestic-model"]


def test_list_keys_never_includes_secrets(mock_server: LiveServer) -> None:
    tenant, k1 = new_key(mock_server)
    k2 = call(
        mock_server, "POST", "/admin/v1/keys", {"tenant": tenant, "label": "second", "rpm_limit": 30}
    ).json
    assert k2["rpm_limit"] == 30
    for path in (f"/admin/v1/keys?tenant={tenant}", "/admin/v1/keys"):
        r = call(mock_server, "GET", path)
        assert r.status == 200
        for secret in (k1["key"], k2["key"]):
            assert secret.encode() not in r.body
            assert secret[12:].encode() not in r.body
        for k in r.json["data"]:
            assert "key" not in k
            assert not any(isinstance(v, str) and v.startswith("tpk_") and len(v) > 12 for v in k.values())
    mine = call(mock_server, "GET", f"/admin/v1/keys?tenant={tenant}").json["data"]
    assert {k["id"] for k in mine} == {k1["id"], k2["id"]}
    assert {k["id"] for k in mine} <= {
        k["id"] for k in call(mock_server, "GET", "/admin/v1/keys").json["data"]
    }


def test_key_errors(mock_server: LiveServer) -> None:
    r = call(mock_server, "POST", "/admin/v1/keys", {"tenant": unique("nobody")})
    assert r.status == 404 and r.error_code() == "not_found"
    r = call(mock_server, "POST", "/admin/v1/keys", {"label": "no tenant"})
    assert r.status == 400 and r.error_code() == "invalid_request"
    tenant, _ = new_key(mock_server)
    r = call(mock_server, "POST", "/admin/v1/keys", {"tenant": tenant, "rpm_limit": 0})
    assert r.status == 400
    r = call(mock_server, "POST", "/admin/v1/keys/key_doesnotexist/revoke")
    assert r.status == 404 and r.error_code() == "not_found"
    r = call(mock_server, "GET", f"/admin/v1/keys?tenant={unique('nobody')}")
    assert r.status == 404


# --- usage ------------------------------------------------------------------------------------


def usage(server: LiveServer, **params) -> Reply:
    r = call(server, "GET", "/admin/v1/usage?" + urlencode(params))
    assert r.status < 500, f"/admin/v1/usage answered {r.status}: {r.body[:200]!r}"
    return r


def test_usage_records_totals_and_filters(mock_server: LiveServer) -> None:
    tenant_a, key_a = new_key(mock_server)
    tenant_b, key_b = new_key(mock_server)
    for secret in (key_a["key"], key_b["key"]):
        wait_until(lambda s=secret: models_status(mock_server, s) == 200, 1.0, 0.02, "new key accepted")
    first = chat(mock_server, key_a["key"])
    wait_until(lambda: usage(mock_server, tenant=tenant_a).json["data"], 5.0, 0.05, "first record")
    second = chat(mock_server, key_a["key"])
    chat(mock_server, key_b["key"])

    def both_written():
        return (
            len(usage(mock_server, tenant=tenant_a).json["data"]) == 2
            and usage(mock_server, tenant=tenant_b).json["data"]
        )

    wait_until(both_written, 5.0, 0.05, "usage records")

    r = usage(mock_server, tenant=tenant_a)
    assert r.status == 200
    data = r.json["data"]
    assert [x["request_id"] for x in data] == [first, second]
    for rec in data:
        assert rec["tenant"] == tenant_a
        assert rec["key_id"] == key_a["id"]
        assert rec["zone"] == "overseas"
        assert rec["model"] == "mock-model" and rec["backend"] == "mock"
        assert (rec["prompt_tokens"], rec["completion_tokens"], rec["status"]) == (10, 20, 200)
        assert rec["started_at"].endswith("Z") and rec["finished_at"].endswith("Z")
        assert "tenant_id" not in rec
    assert r.json["totals"] == {
        "requests": 2,
        "prompt_tokens": 20,
        "cached_tokens": 0,
        "completion_tokens": 40,
    }

    b = usage(mock_server, tenant=tenant_b).json
    assert [x["tenant"] for x in b["data"]] == [tenant_b]
    assert b["totals"]["requests"] == 1 and b["totals"]["completion_tokens"] == 20

    everyone = usage(mock_server, limit=100000).json
    ids = {x["request_id"] for x in everyone["data"]}
    assert {first, second} <= ids
    assert everyone["totals"]["requests"] >= 3

    # since: inclusive, with any zone offset
    start_1 = datetime.fromisoformat(data[0]["started_at"].replace("Z", "+00:00"))
    start_2 = datetime.fromisoformat(data[1]["started_at"].replace("Z", "+00:00"))
    assert start_2 > start_1
    after_first = (start_1 + timedelta(microseconds=1)).isoformat()
    r = usage(mock_server, tenant=tenant_a, since=after_first)
    assert [x["request_id"] for x in r.json["data"]] == [second]
    assert r.json["totals"]["requests"] == 1
    r = usage(mock_server, tenant=tenant_a, since=data[0]["started_at"])  # "...Z" form, inclusive
    assert [x["request_id"] for x in r.json["data"]] == [first, second]
    r = usage(mock_server, tenant=tenant_a, since=start_2.astimezone().isoformat())  # local offset
    assert [x["request_id"] for x in r.json["data"]] == [second]
    r = usage(mock_server, since="2999-01-01T00:00:00Z")
    assert r.json["data"] == [] and r.json["totals"]["requests"] == 0

    r = usage(mock_server, tenant=tenant_a, limit=1)
    assert [x["request_id"] for x in r.json["data"]] == [first]
    assert r.json["totals"]["requests"] == 2  # totals are not limited


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"since": "yesterday"}, 400),
        ({"since": "2026-13-01T00:00:00Z"}, 400),
        ({"since": "2026-01-01T00:00:00"}, 400),  # no zone
        ({"since": "0001-01-01T00:00:00+01:00"}, 400),  # valid ISO, but before year 1 in UTC
        ({"since": "9999-12-31T23:59:59-01:00"}, 400),  # after year 9999 in UTC
        ({"limit": "many"}, 400),
        ({"tenant": "no-such-tenant-" + uuid4().hex[:8]}, 404),
    ],
)
def test_usage_bad_parameters(mock_server: LiveServer, params: dict, status: int) -> None:
    r = call(mock_server, "GET", "/admin/v1/usage?" + urlencode(params))
    assert r.headers["content-type"].startswith("application/json"), (r.status, r.body[:200])
    assert r.status == status
    assert r.error_code() in ("invalid_request", "not_found")


# --- OpenAPI and request ids ------------------------------------------------------------------


def test_openapi_documents_every_route(mock_server: LiveServer) -> None:
    r = call(mock_server, "GET", "/openapi.json", token=None)
    assert r.status == 200
    assert r.headers["content-type"].startswith("application/json")
    spec = r.json
    assert spec["openapi"].startswith("3.")
    assert spec["info"]["title"] == "tokenport"
    paths = spec["paths"]

    served = {(route.path, m.lower()) for route in admin.routes for m in route.methods if m != "HEAD"}
    assert served, "no admin routes?"
    assert all(p.startswith("/admin/v1/") for p, _ in served)
    documented = {
        (p, m) for p, ops in paths.items() for m in ops if m in ("get", "post", "put", "patch", "delete")
    }
    assert served <= documented, served - documented
    assert {p for p, _ in documented if p.startswith("/admin/")} == {p for p, _ in served}
    for path, method in [
        ("/v1/chat/completions", "post"),
        ("/v1/completions", "post"),
        ("/v1/models", "get"),
        ("/health", "get"),
        ("/metrics", "get"),
        ("/.well-known/tokenport/keys", "get"),
        ("/v1/audit/head", "get"),
        ("/v1/audit/proof/inclusion", "get"),
        ("/v1/audit/proof/consistency", "get"),
    ]:
        assert method in paths.get(path, {}), path
    for path, method in served:
        assert paths[path][method]["security"] == [{"adminToken": []}]
    # every $ref resolves
    schemes = spec["components"]["securitySchemes"]
    for ops in paths.values():
        for op in ops.values():
            for req in op.get("security", []):
                assert set(req) <= set(schemes)
    assert "Error" in spec["components"]["schemas"]

    # and each documented admin route is really served (no 404/405 with the admin token)
    for path, method in sorted(documented):
        if not path.startswith("/admin/"):
            continue
        concrete = path.replace("{key_id}", quote("key_missing"))
        resp = call(mock_server, method.upper(), concrete, {} if method == "post" else None)
        assert resp.status != 405, (path, method)
        if resp.status == 404:  # an unknown key is fine; an unknown route is not
            assert not resp.json["error"]["message"].startswith("No route"), (path, method)


def test_every_response_carries_a_request_id(mock_server: LiveServer) -> None:
    _, key = new_key(mock_server)
    wait_until(lambda: models_status(mock_server, key["key"]) == 200, 1.0, 0.02, "new key accepted")
    replies = [
        call(mock_server, "GET", "/health", token=None),
        call(mock_server, "GET", "/metrics", token=None),
        call(mock_server, "GET", "/openapi.json", token=None),
        call(mock_server, "GET", "/v1/models", token=None),  # 401
        call(mock_server, "GET", "/v1/models", token=key["key"]),
        call(mock_server, "GET", "/admin/v1/tenants"),
        call(mock_server, "GET", "/admin/v1/tenants", token="wrong"),  # 401
        call(mock_server, "POST", "/admin/v1/tenants", {"name": unique("rid")}),  # 201
        call(mock_server, "POST", "/admin/v1/tenants", {"name": "bad name"}),  # 400
        call(mock_server, "POST", "/admin/v1/keys/key_missing/revoke"),  # 404
        call(mock_server, "GET", "/admin/v1/usage?since=bad"),  # 400
        call(mock_server, "GET", "/no/such/route", token=None),  # 404
        call(mock_server, "DELETE", "/admin/v1/tenants"),  # 405
        call(
            mock_server,
            "POST",
            "/v1/chat/completions",
            {"model": "mock-model", "messages": [{"role": "user", "content": "hi"}]},
            token=key["key"],
        ),
        call(mock_server, "POST", "/v1/chat/completions", {"model": "x"}, token=None),  # 401
    ]
    statuses = [r.status for r in replies]
    assert {200, 201, 400, 401, 404, 405} <= set(statuses), statuses
    ids = [r.headers.get("x-request-id") for r in replies]
    assert all(i and i.startswith("req_") for i in ids), list(zip(statuses, ids, strict=True))
    assert len(set(ids)) == len(ids)


def _audit_entries(server: LiveServer, zone: str) -> list[dict]:
    import sqlite3

    db = sqlite3.connect(server.home / "tokenport.db")
    try:
        rows = db.execute("SELECT entry FROM audit_entries WHERE zone = ? ORDER BY idx", (zone,)).fetchall()
    finally:
        db.close()
    return [json.loads(r[0]) for r in rows]


def test_zone_scoped_admins_act_only_on_their_zone(mock_server: LiveServer) -> None:
    name = f"ops-{uuid4().hex[:6]}"
    made = mock_server.cli_json("admins", "create", name, "--zones", "domestic")
    token = made["token"]
    assert token.startswith("tpa_") and made["zones"] == ["domestic"]
    mine, theirs = f"dom-{uuid4().hex[:6]}", f"over-{uuid4().hex[:6]}"
    assert (
        call(mock_server, "POST", "/admin/v1/tenants", {"name": mine, "zone": "domestic"}, token).status
        == 201
    )
    assert call(mock_server, "POST", "/admin/v1/tenants", {"name": theirs, "zone": "overseas"}).status == 201
    key = call(mock_server, "POST", "/admin/v1/keys", {"tenant": theirs}).json

    listed = call(mock_server, "GET", "/admin/v1/tenants", token=token).json["data"]
    assert mine in {t["name"] for t in listed} and {t["zone"] for t in listed} == {"domestic"}
    keys = call(mock_server, "GET", "/admin/v1/keys", token=token).json["data"]
    assert {k["zone"] for k in keys} <= {"domestic"}

    before = len(_audit_entries(mock_server, "overseas"))
    refused = [
        ("POST", "/admin/v1/tenants", {"name": f"x-{uuid4().hex[:6]}", "zone": "overseas"}),
        ("POST", "/admin/v1/keys", {"tenant": theirs}),
        ("GET", f"/admin/v1/keys?tenant={theirs}", None),
        ("POST", f"/admin/v1/keys/{key['id']}/revoke", {}),
        ("GET", f"/admin/v1/usage?tenant={theirs}", None),
        ("POST", f"/admin/v1/tenants/{theirs}/retention", {"ttl_s": 60}),
        ("POST", f"/admin/v1/tenants/{theirs}/purge", {}),
    ]
    for method, path, body in refused:
        r = call(mock_server, method, path, body, token)
        assert r.status == 403 and r.error_code() == "zone_forbidden", (path, r.body)
        assert r.headers["x-request-id"]
    denials = [
        e for e in _audit_entries(mock_server, "overseas")[before:] if e.get("action") == "admin.denied"
    ]
    assert [(e["admin"], e["zone"]) for e in denials] == [(name, "overseas")] * len(refused)
    assert [e["attempted"] for e in denials] == [
        "tenant.create",
        "key.create",
        "key.list",
        "key.revoke",
        "usage.read",
        "tenant.retention",
        "retention.purge",
    ]
    # The key was not revoked and the other zone's tenant is unchanged.
    assert call(mock_server, "GET", f"/admin/v1/keys?tenant={theirs}").json["data"][0]["revoked_at"] is None

    mock_server.cli("admins", "revoke", name)
    r = call(mock_server, "GET", "/admin/v1/tenants", token=token)
    assert r.status == 401 and r.error_code() == "invalid_admin_token"
    assert name in {a["name"] for a in mock_server.cli_json("admins", "list") if a["revoked_at"]}


def test_admins_need_existing_zones(mock_server: LiveServer) -> None:
    res = mock_server.cli("admins", "create", f"a-{uuid4().hex[:6]}", "--zones", "atlantis", check=False)
    assert res.returncode == 2 and "atlantis" in res.stderr


def test_retention_and_purge_over_the_admin_api(mock_server: LiveServer) -> None:
    from tokenport.audit.receipts import verify_receipt

    name = f"ret-{uuid4().hex[:6]}"
    assert call(mock_server, "POST", "/admin/v1/tenants", {"name": name}).status == 201
    on = call(mock_server, "POST", f"/admin/v1/tenants/{name}/retention", {"ttl_s": 600})
    assert on.status == 200 and on.json["retention_ttl_s"] == 600
    bad = call(mock_server, "POST", f"/admin/v1/tenants/{name}/retention", {"ttl_s": -1})
    assert bad.status == 400 and bad.error_code() == "invalid_request"
    receipt = call(mock_server, "POST", f"/admin/v1/tenants/{name}/purge", {}).json
    assert receipt["type"] == "tokenport.deletion_receipt.v1" and verify_receipt(receipt) == []
    off = call(mock_server, "POST", f"/admin/v1/tenants/{name}/retention", {"ttl_s": None})
    assert off.json["retention_ttl_s"] is None
