"""The audit log from outside: the zones' public keys (no key needed), and for a tenant's own
key, its requests' signed receipts, its zone's signed tree head and inclusion and consistency
proofs (hashes only).

Proofs read O(log n) stored subtree hashes and at most about 128 leaf hashes (in a thread)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from tokenport.tenancy.keys import KeyRecord

if TYPE_CHECKING:
    from tokenport.api.services import AuditServices

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tokenport.api.keyed import keyed, when_recorded
from tokenport.audit.merkle import EMPTY_ROOT, consistency_path, inclusion_path, range_root
from tokenport.clock import utc_iso
from tokenport.gateway.errors import ApiError, bad_request


def _json(obj: object) -> Response:
    return Response(orjson.dumps(obj), media_type="application/json")


async def public_keys(request: Request) -> Response:
    svc: AuditServices = request.app.state.services
    keys = await run_in_threadpool(svc.audit.store.public_keys)
    data = [
        {
            "key_id": k["key_id"],
            "zone": k["zone"],
            "alg": "Ed25519",
            "public_key": k["public_key"],
            "created_at": utc_iso(k["created_at"]),
        }
        for k in keys
    ]
    return _json({"keys": data})


@keyed
async def head(request: Request, svc: AuditServices, key: KeyRecord) -> Response:
    heads = await run_in_threadpool(svc.audit.store.heads, key.zone)
    if not heads:
        raise ApiError(
            404, f"zone '{key.zone}' has no signed tree head yet", "invalid_request_error", "not_found"
        )
    h = heads[-1]
    return _json({**h.head.__dict__, "key_id": h.key_id, "signature": h.signature})


def _int(request: Request, name: str) -> int:
    raw = request.query_params.get(name)
    if raw is None or not raw.isdigit():
        raise bad_request(f"'{name}' must be a non-negative integer", param=name)
    return int(raw)


@keyed
async def inclusion(request: Request, svc: AuditServices, key: KeyRecord) -> Response:
    index, size = _int(request, "index"), _int(request, "size")
    await run_in_threadpool(_check_size, svc, key.zone, size)
    if not index < size:
        raise bad_request(f"index {index} is not in a tree of {size}", param="index")

    def build(subtree: Callable[[int, int], bytes]):
        return subtree(0, index), range_root(0, size, subtree), inclusion_path(index, size, subtree)

    leaf, root_hash, proof = await run_in_threadpool(svc.audit.store.proof_source, key.zone, size, build)
    body = {"zone": key.zone, "index": index, "size": size, "leaf": leaf.hex(), "root": root_hash.hex()}
    return _json({**body, "proof": [p.hex() for p in proof]})


@keyed
async def consistency(request: Request, svc: AuditServices, key: KeyRecord) -> Response:
    first, second = _int(request, "first"), _int(request, "second")
    await run_in_threadpool(_check_size, svc, key.zone, second)
    if first > second:
        raise bad_request("'first' cannot be larger than 'second'", param="first")

    def build(subtree: Callable[[int, int], bytes]):
        first_root = range_root(0, first, subtree) if first else EMPTY_ROOT
        second_root = range_root(0, second, subtree) if second else EMPTY_ROOT
        return first_root, second_root, consistency_path(first, second, subtree)

    a, b, proof = await run_in_threadpool(svc.audit.store.proof_source, key.zone, second, build)
    body = {"zone": key.zone, "first": first, "second": second, "first_root": a.hex()}
    return _json({**body, "second_root": b.hex(), "proof": [p.hex() for p in proof]})


def _check_size(svc: AuditServices, zone: str, size: int) -> None:
    have = svc.audit.store.size(zone)
    if size > have:
        raise bad_request(f"zone '{zone}' has {have} entries, not {size}", param="size")


@keyed
async def receipt(request: Request, svc: AuditServices, key: KeyRecord) -> Response:
    """The signed processing receipt of one of the key's tenant's requests."""
    request_id = request.path_params["request_id"]
    doc = await when_recorded(svc.audit.receipt, request_id, key.tenant_id)
    if doc is not None:
        return _json(doc)
    raise ApiError(
        404,
        f"No receipt for request '{request_id}': not one of this tenant's requests, or not yet recorded",
        "invalid_request_error",
        "receipt_not_found",
    )


routes = [
    Route("/.well-known/tokenport/keys", public_keys, methods=["GET"]),
    Route("/v1/receipts/{request_id}", receipt, methods=["GET"]),
    Route("/v1/audit/head", head, methods=["GET"]),
    Route("/v1/audit/proof/inclusion", inclusion, methods=["GET"]),
    Route("/v1/audit/proof/consistency", consistency, methods=["GET"]),
]
