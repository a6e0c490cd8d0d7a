"""Admin HTTP API under /admin/v1: tenants, keys, retention, usage.

Guarded by an admin token: the configured `server.admin_token` acts on every zone; a token made
with `tokenport admins create` only on its zones. Reaching for another zone's object is refused
(403 `zone_forbidden`) and audited in that zone; listings show only the admin's zones."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tokenport.api.services import AdminServices

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


def _admin(svc: AdminServices, given: str) -> Admin | None:
    token = svc.settings.admin_token
    if token and hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        return ROOT
    scheme, _, secret = given.partition(" ")
    if scheme.lower() == "bearer" and secret.startswith(ADMIN_PREFIX):
        return svc.admins.find(hash_key(secret))
    return None


DOMAIN_ERRORS: tuple[tuple[type[Exception], int, str], ...] = (  # (error, status, code)
    (InvalidInput, 400, "invalid_request"),
    (NotFound, 404, "not_found"),
    (Conflict, 409, "conflict"),
)


def _refused(svc: AdminServices, given: str) -> Response:
    """No admin behind the token: disabled (no root token, none of ours given) or invalid."""
    if not svc.settings.admin_token and not given.partition(" ")[2].startswith(ADMIN_PREFIX):
        return _error(
            403,
            "The admin API is disabled: set server.admin_token or TOKENPORT_ADMIN_TOKEN, "
            "or use a token from `tokenport admins create`",
            "permission_error",
            "admin_disabled",
        )
    return _error(401, "Invalid admin token", "authentication_error", "invalid_admin_token")


async def _body(request: Request) -> dict | Response | None:
    """A POST's JSON object (an empty body is `{}`), a 400 if it is not one; None for a GET."""
    if request.method != "POST":
        return None
    raw = await request.body()
    try:
        body = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        return _error(400, "Invalid JSON body", "invalid_request_error", "invalid_json")
    if not isinstance(body, dict):
        return _error(400, "The body must be a JSON object", "invalid_request_error", "invalid_json")
    return body


def guarded(handler: Callable[..., Any]):
    """Check the admin token and its zones, map domain errors to HTTP, run blocking work off
    the loop. `handler(services, request, body, admin)`."""

    async def endpoint(request: Request) -> Response:
        svc: AdminServices = request.app.state.services
        given = request.headers.get("authorization", "")
        admin = await run_in_threadpool(_admin, svc, given)
        if admin is None:
            return _refused(svc, given)
        body = await _body(request)
        if isinstance(body, Response):
            return body
        try:
            status, result = await run_in_threadpool(handler, svc, request, body, admin)
        except OutOfZone as exc:
            now = svc.clock.now()
            await run_in_threadpool(svc.admins.audit_refusal, exc.admin, exc.zone, exc.action, now)
            return _error(403, str(exc), "permission_error", "zone_forbidden")
        except (InvalidInput, NotFound, Conflict) as exc:
            status, code = next((st, c) for kind, st, c in DOMAIN_ERRORS if isinstance(exc, kind))
            return _error(status, str(exc), "invalid_request_error", code)
        return _json(result, status)

    return endpoint


def _tenant(svc: AdminServices, name: str, admin: Admin, action: str):
    """The named tenant, if the admin may act on its zone."""
    if not isinstance(name, str):
        raise InvalidInput("'tenant' is required")
    tenant = svc.tenancy.tenant(name)
    require(admin, tenant.zone, action)
    return tenant


def list_tenants(svc: AdminServices, request: Request, body: dict, admin: Admin):
    tenants = [t for t in svc.tenancy.list_tenants() if admin.may(t.zone)]
    return 200, {"object": "list", "data": [tenant_view(t) for t in tenants]}


def create_tenant(svc: AdminServices, request: Request, body: dict, admin: Admin):
    zone = body.get("zone") or svc.settings.default_zone
    if isinstance(zone, str):
        require(admin, zone, "tenant.create")
    return 201, tenant_view(svc.tenancy.create_tenant(body.get("name"), zone))


def set_retention(svc: AdminServices, request: Request, body: dict, admin: Admin):
    tenant = _tenant(svc, request.path_params["name"], admin, "tenant.retention")
    return 200, tenant_view(svc.tenancy.set_retention(tenant.name, body.get("ttl_s")))


def purge_tenant(svc: AdminServices, request: Request, body: dict, admin: Admin):
    """Delete everything retained for the tenant; the signed deletion receipt."""
    tenant = _tenant(svc, request.path_params["name"], admin, "retention.purge")
    return 200, svc.vault.purge_tenant(tenant)


def list_keys(svc: AdminServices, request: Request, body: dict, admin: Admin):
    name = request.query_params.get("tenant")
    if name is not None:
        _tenant(svc, name, admin, "key.list")
    keys = [k for k in svc.tenancy.list_keys(name) if admin.may(k.zone)]
    return 200, {"object": "list", "data": [key_view(k) for k in keys]}


def create_key(svc: AdminServices, request: Request, body: dict, admin: Admin):
    tenant = _tenant(svc, body.get("tenant"), admin, "key.create").name
    info, secret = svc.tenancy.create_key(
        tenant,
        body.get("label"),
        body.get("rpm_limit"),
        body.get("tpm_limit"),
        body.get("budget_usd"),
        body.get("budget_period"),
    )
    return 201, key_view(info, secret)


def revoke_key(svc: AdminServices, request: Request, body: dict, admin: Admin):
    key_id = request.path_params["key_id"]
    zone = svc.tenancy.store.key_zone(key_id)
    if zone is not None:
        require(admin, zone, "key.revoke")
    svc.tenancy.revoke_key(key_id)
    return 200, {"id": key_id, "revoked": True}


def usage(svc: AdminServices, request: Request, body: dict, admin: Admin):
    q = request.query_params
    tenant = q.get("tenant")
    if tenant is not None:
        _tenant(svc, tenant, admin, "usage.read")
    elif admin.zones is not None:
        raise InvalidInput("a zone-scoped admin must name the tenant: ?tenant=NAME")
    since = parse_since(q.get("since"))
    try:
        limit = int(q.get("limit", "1000"))
    except ValueError:
        raise InvalidInput("'limit' must be an integer") from None
    rows = svc.usage_store.query(tenant, since, limit=max(1, min(limit, 100_000)))
    energy = svc.request_energy.request_figures(rows)
    return 200, {
        "object": "list",
        "data": [{**usage_view(r), "energy": energy.get(r["request_id"])} for r in rows],
        "totals": svc.usage_store.totals(tenant, since),
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
