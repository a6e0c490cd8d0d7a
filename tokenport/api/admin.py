"""Admin HTTP API under /admin/v1: tenants, keys, retention, usage.

Guarded by an admin token: the configured `server.admin_token` acts on every zone; a token made
with `tokenport admins create` only on its zones. Reaching for another zone's object is refused
(403 `zone_forbidden`) and audited in that zone; listings show only the admin's zones."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tokenport.runtime import Runtime

import hmac
from datetime import UTC, datetime

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tokenport.api.views import key_view, tenant_view, usage_view
from tokenport.tenancy.admins import ADMIN_PREFIX, ROOT, Admin, OutOfZone, require
from tokenport.tenancy.keys import hash_key
from tokenport.tenancy.service import Conflict, InvalidInput, NotFound


def _json(obj: object, status: int = 200) -> Response:
    return Response(orjson.dumps(obj), status, media_type="application/json")


def _error(status: int, message: str, type_: str, code: str) -> Response:
    return _json({"error": {"message": message, "type": type_, "param": None, "code": code}}, status)


def _admin(rt: Runtime, given: str) -> Admin | None:
    token = rt.settings.admin_token
    if token and hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        return ROOT
    scheme, _, secret = given.partition(" ")
    if scheme.lower() == "bearer" and secret.startswith(ADMIN_PREFIX):
        return rt.admins.find(hash_key(secret))
    return None


def guarded(handler: Callable[..., Any]):
    """Check the admin token and its zones, map domain errors to HTTP, run blocking work off
    the loop. `handler(rt, request, body, admin)`."""

    async def endpoint(request: Request) -> Response:
        rt = request.app.state.runtime
        given = request.headers.get("authorization", "")
        admin = await run_in_threadpool(_admin, rt, given)
        if admin is None:
            if not rt.settings.admin_token and not given.partition(" ")[2].startswith(ADMIN_PREFIX):
                return _error(
                    403,
                    "The admin API is disabled: set server.admin_token or TOKENPORT_ADMIN_TOKEN, "
                    "or use a token from `tokenport admins create`",
                    "permission_error",
                    "admin_disabled",
                )
            return _error(401, "Invalid admin token", "authentication_error", "invalid_admin_token")
        body = None
        if request.method == "POST":
            raw = await request.body()
            try:
                body = orjson.loads(raw) if raw else {}
            except orjson.JSONDecodeError:
                return _error(400, "Invalid JSON body", "invalid_request_error", "invalid_json")
            if not isinstance(body, dict):
                return _error(400, "The body must be a JSON object", "invalid_request_error", "invalid_json")
        try:
            status, result = await run_in_threadpool(handler, rt, request, body, admin)
        except OutOfZone as exc:
            await run_in_threadpool(rt.admins.audit_refusal, exc.admin, exc.zone, exc.action, rt.clock.now())
            return _error(403, str(exc), "permission_error", "zone_forbidden")
        except InvalidInput as exc:
            return _error(400, str(exc), "invalid_request_error", "invalid_request")
        except NotFound as exc:
            return _error(404, str(exc), "invalid_request_error", "not_found")
        except Conflict as exc:
            return _error(409, str(exc), "invalid_request_error", "conflict")
        return _json(result, status)

    return endpoint


def _tenant(rt: Runtime, name: str, admin: Admin, action: str):
    """The named tenant, if the admin may act on its zone."""
    if not isinstance(name, str):
        raise InvalidInput("'tenant' is required")
    tenant = rt.tenancy.tenant(name)
    require(admin, tenant.zone, action)
    return tenant


def list_tenants(rt: Runtime, request: Request, body: dict, admin: Admin):
    tenants = [t for t in rt.tenancy.list_tenants() if admin.may(t.zone)]
    return 200, {"object": "list", "data": [tenant_view(t) for t in tenants]}


def create_tenant(rt: Runtime, request: Request, body: dict, admin: Admin):
    zone = body.get("zone") or rt.settings.default_zone
    if isinstance(zone, str):
        require(admin, zone, "tenant.create")
    return 201, tenant_view(rt.tenancy.create_tenant(body.get("name"), zone))


def set_retention(rt: Runtime, request: Request, body: dict, admin: Admin):
    tenant = _tenant(rt, request.path_params["name"], admin, "tenant.retention")
    return 200, tenant_view(rt.tenancy.set_retention(tenant.name, body.get("ttl_s")))


def purge_tenant(rt: Runtime, request: Request, body: dict, admin: Admin):
    """Delete everything retained for the tenant; the signed deletion receipt."""
    tenant = _tenant(rt, request.path_params["name"], admin, "retention.purge")
    return 200, rt.vault.purge_tenant(tenant)


def list_keys(rt: Runtime, request: Request, body: dict, admin: Admin):
    name = request.query_params.get("tenant")
    if name is not None:
        _tenant(rt, name, admin, "key.list")
    keys = [k for k in rt.tenancy.list_keys(name) if admin.may(k.zone)]
    return 200, {"object": "list", "data": [key_view(k) for k in keys]}


def create_key(rt: Runtime, request: Request, body: dict, admin: Admin):
    tenant = _tenant(rt, body.get("tenant"), admin, "key.create").name
    info, secret = rt.tenancy.create_key(
        tenant,
        body.get("label"),
        body.get("rpm_limit"),
        body.get("tpm_limit"),
        body.get("budget_usd"),
        body.get("budget_period"),
    )
    return 201, key_view(info, secret)


def revoke_key(rt: Runtime, request: Request, body: dict, admin: Admin):
    key_id = request.path_params["key_id"]
    zone = rt.tenancy.store.key_zone(key_id)
    if zone is not None:
        require(admin, zone, "key.revoke")
    rt.tenancy.revoke_key(key_id)
    return 200, {"id": key_id, "revoked": True}


def usage(rt: Runtime, request: Request, body: dict, admin: Admin):
    q = request.query_params
    tenant = q.get("tenant")
    if tenant is not None:
        _tenant(rt, tenant, admin, "usage.read")
    elif admin.zones is not None:
        raise InvalidInput("a zone-scoped admin must name the tenant: ?tenant=NAME")
    since = parse_since(q.get("since"))
    try:
        limit = int(q.get("limit", "1000"))
    except ValueError:
        raise InvalidInput("'limit' must be an integer") from None
    rows = rt.usage_store.query(tenant, since, limit=max(1, min(limit, 100_000)))
    energy = rt.energy.request_figures(rows)
    return 200, {
        "object": "list",
        "data": [{**usage_view(r), "energy": energy.get(r["request_id"])} for r in rows],
        "totals": rt.usage_store.totals(tenant, since),
    }


def parse_since(value: str | None) -> datetime | None:
    return parse_timestamp(value, "'since'")


def parse_timestamp(value: str | None, what: str) -> datetime | None:
    """ISO 8601 with a timezone, as UTC; None stays None."""
    if value is None:
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(f"{what} must be an ISO 8601 timestamp") from None
    if dt.tzinfo is None:
        raise InvalidInput(f"{what} must include a timezone (e.g. 2026-01-01T00:00:00Z)")
    try:
        return dt.astimezone(UTC)
    except OverflowError:
        raise InvalidInput(f"{what} is out of range") from None


routes = [
    Route("/admin/v1/tenants", guarded(list_tenants), methods=["GET"]),
    Route("/admin/v1/tenants", guarded(create_tenant), methods=["POST"]),
    Route("/admin/v1/tenants/{name}/retention", guarded(set_retention), methods=["POST"]),
    Route("/admin/v1/tenants/{name}/purge", guarded(purge_tenant), methods=["POST"]),
    Route("/admin/v1/keys", guarded(list_keys), methods=["GET"]),
    Route("/admin/v1/keys", guarded(create_key), methods=["POST"]),
    Route("/admin/v1/keys/{key_id}/revoke", guarded(revoke_key), methods=["POST"]),
    Route("/admin/v1/usage", guarded(usage), methods=["GET"]),
]
