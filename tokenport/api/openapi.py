"""The OpenAPI document for tokenport's own surface (admin API, ops, OpenAI-compatible routes)."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response

from tokenport import __version__

_ERROR = {"$ref": "#/components/schemas/Error"}


def _op(
    summary: str,
    tag: str,
    ok: str = "200",
    body: dict | None = None,
    params: list | None = None,
    secure: str = "apiKey",
    ok_schema: dict | None = None,
) -> dict:
    op: dict = {
        "summary": summary,
        "tags": [tag],
        "security": [{secure: []}],
        "responses": {
            ok: {"description": "Success", "content": {"application/json": {"schema": ok_schema or {}}}},
            "default": {"description": "Error", "content": {"application/json": {"schema": _ERROR}}},
        },
    }
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    if params:
        op["parameters"] = params
    return op


def _path(name: str) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _q(name: str, desc: str) -> dict:
    return {"name": name, "in": "query", "required": False, "description": desc, "schema": {"type": "string"}}


def _admin(summary: str, **kw) -> dict:
    return _op(summary, "admin", secure="adminToken", **kw)


CHAT_BODY = {
    "type": "object",
    "required": ["model", "messages"],
    "properties": {
        "model": {"type": "string"},
        "messages": {"type": "array", "items": {"type": "object"}},
        "stream": {"type": "boolean"},
        "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
        "max_tokens": {"type": "integer", "minimum": 1},
        "max_completion_tokens": {"type": "integer", "minimum": 1},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "top_p": {"type": "number", "minimum": 0, "maximum": 1},
        "stop": {
            "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": 4}]
        },
        "seed": {"type": "integer"},
        "tools": {"type": "array", "items": {"type": "object"}},
        "tool_choice": {"oneOf": [{"type": "string"}, {"type": "object"}]},
        "response_format": {"type": "object"},
    },
}
COMPLETION_BODY = {
    "type": "object",
    "required": ["model", "prompt"],
    "properties": {
        **{k: v for k, v in CHAT_BODY["properties"].items() if k != "messages"},
        "prompt": {"type": "string"},
    },
}

SPEC = {
    "openapi": "3.1.0",
    "info": {
        "title": "tokenport",
        "version": __version__,
        "description": "OpenAI-compatible token gateway with exact, content-free metering.",
    },
    "paths": {
        "/v1/chat/completions": {
            "post": _op("Chat completion (streaming with SSE)", "openai", body=CHAT_BODY)
        },
        "/v1/completions": {
            "post": _op("Text completion (streaming with SSE)", "openai", body=COMPLETION_BODY)
        },
        "/v1/embeddings": {
            "post": _op(
                "Embeddings, from a backend that serves them for the model",
                "openai",
                body={"type": "object", "required": ["model", "input"]},
            )
        },
        "/v1/responses": {
            "post": _op(
                "OpenAI Responses API: a response, streaming or not, with function tools "
                "(docs/openai-api.md)",
                "openai",
                body={"type": "object", "required": ["model", "input"]},
            )
        },
        "/v1/messages": {
            "post": _op(
                "Anthropic Messages API: a message, streaming or not (docs/anthropic-api.md); "
                "`?beta=true` accepted",
                "anthropic",
                body={"type": "object", "required": ["model", "max_tokens", "messages"]},
            )
        },
        "/v1/messages/count_tokens": {
            "post": _op(
                "The input tokens a message would bill, counted by the engine that would serve it",
                "anthropic",
                body={"type": "object", "required": ["model", "messages"]},
            )
        },
        "/v1/models": {"get": _op("Models served in the key's zone", "openai")},
        "/v1/account/invoices": {"get": _op("The key's tenant's invoices", "account")},
        "/v1/account/invoices/upcoming": {
            "get": _op(
                "The key's tenant's invoice for the running month (or `period`) to date, from the "
                "ledger; nothing is issued or stored (`status: preview`, `id: null`)",
                "account",
                params=[
                    _q("period", "YYYY-MM (default: the running month)"),
                    _q("format", "json, csv or html"),
                ],
            )
        },
        "/v1/account/invoices/{invoice_id}": {
            "get": {
                **_op(
                    "One invoice (JSON; ?format=csv or html)",
                    "account",
                    params=[_q("format", "json, csv or html")],
                ),
                "parameters": [
                    {"name": "invoice_id", "in": "path", "required": True, "schema": {"type": "string"}},
                    _q("format", "json, csv or html"),
                ],
            }
        },
        "/v1/account/balance": {
            "get": _op("The key's tenant: available credit, lots in burn order", "account")
        },
        "/v1/account/usage": {
            "get": _op(
                "The key's tenant: usage and cost grouped by day, model or key",
                "account",
                params=[
                    _q("group_by", "day (default), model or key"),
                    _q("start", "ISO 8601, inclusive"),
                    _q("end", "ISO 8601, exclusive"),
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "description": "at most this many groups, the first in order (`has_more` says "
                        "whether there are others; `totals` cover them all)",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 100000},
                    },
                ],
            )
        },
        "/.well-known/tokenport/keys": {
            "get": {
                "summary": "The zones' public signing keys (Ed25519, hex)",
                "tags": ["audit"],
                "responses": {"200": {"description": "The keys"}},
            }
        },
        "/v1/receipts/{request_id}": {
            "get": {
                **_op(
                    "The signed processing receipt of one of the key's tenant's requests (its id is "
                    "the response's x-tokenport-receipt-id header)",
                    "audit",
                ),
                "parameters": [_path("request_id")],
            }
        },
        "/v1/account/green": {
            "get": _op(
                "The key's tenant's green report for a month: energy, green energy with its "
                "certificates, carbon (location- and market-based), intensity per million tokens",
                "account",
                params=[_q("period", "YYYY-MM (default: this month)"), _q("format", "json, csv or html")],
            )
        },
        "/v1/retained/{request_id}": {
            "get": {
                **_op("What the tenant opted to retain of one request, decrypted", "account"),
                "parameters": [_path("request_id")],
            }
        },
        "/v1/audit/head": {"get": _op("The key's zone: its latest signed audit tree head", "audit")},
        "/v1/audit/proof/inclusion": {
            "get": _op(
                "The key's zone: an inclusion proof (RFC 6962) of entry `index` in the tree of `size`",
                "audit",
                params=[_q("index", "entry index"), _q("size", "tree size")],
            )
        },
        "/v1/audit/proof/consistency": {
            "get": _op(
                "The key's zone: a consistency proof (RFC 6962) between two tree sizes",
                "audit",
                params=[_q("first", "the earlier size"), _q("second", "the later size")],
            )
        },
        "/health": {
            "get": {
                "summary": "200 when ready, 503 while the engine loads",
                "tags": ["ops"],
                "responses": {"200": {"description": "Ready"}, "503": {"description": "Loading"}},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "tags": ["ops"],
                "responses": {"200": {"description": "Prometheus text format"}},
            }
        },
        "/admin/v1/tenants": {
            "get": _admin("List tenants"),
            "post": _admin(
                "Create a tenant (zone defaults to the configured default; immutable)",
                ok="201",
                body={
                    "type": "object",
                    "required": ["name"],
                    "properties": {"name": {"type": "string"}, "zone": {"type": "string"}},
                },
            ),
        },
        "/admin/v1/keys": {
            "get": _admin("List keys (never their secrets)", params=[_q("tenant", "Tenant name")]),
            "post": _admin(
                "Create a key; the answer carries the secret `key`, shown only once",
                ok="201",
                body={
                    "type": "object",
                    "required": ["tenant"],
                    "properties": {
                        "tenant": {"type": "string"},
                        "label": {"type": "string"},
                        "rpm_limit": {"type": "integer", "minimum": 1},
                        "tpm_limit": {"type": "integer", "minimum": 1},
                        "budget_usd": {"type": "string", "description": "decimal USD"},
                        "budget_period": {"type": "string", "enum": ["day", "month"]},
                    },
                },
            ),
        },
        "/admin/v1/tenants/{name}/retention": {
            "post": {
                **_admin(
                    "Opt the tenant in to encrypted retention for `ttl_s` seconds, or out (null)",
                    body={"type": "object", "properties": {"ttl_s": {"type": ["integer", "null"]}}},
                ),
                "parameters": [_path("name")],
            },
        },
        "/admin/v1/tenants/{name}/purge": {
            "post": {
                **_admin("Delete all the tenant's retained data; answers the signed deletion receipt"),
                "parameters": [_path("name")],
            },
        },
        "/admin/v1/keys/{key_id}/revoke": {
            "post": {
                **_admin("Revoke a key (running servers refuse it within 1 s)"),
                "parameters": [
                    {"name": "key_id", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
            },
        },
        "/admin/v1/usage": {
            "get": _admin(
                "Per-request usage records and totals",
                params=[
                    _q("tenant", "Tenant name"),
                    _q("since", "ISO 8601 timestamp with zone"),
                    _q("limit", "Maximum records (default 1000)"),
                ],
            ),
        },
    },
    "components": {
        "securitySchemes": {
            "apiKey": {"type": "http", "scheme": "bearer", "description": "Tenant API key (or x-api-key)"},
            "adminToken": {"type": "http", "scheme": "bearer", "description": "server.admin_token"},
        },
        "schemas": {
            "Error": {
                "type": "object",
                "properties": {
                    "error": {
                        "type": "object",
                        "properties": {
                            "message": {"type": "string"},
                            "type": {"type": "string"},
                            "param": {"type": ["string", "null"]},
                            "code": {"type": ["string", "null"]},
                        },
                    }
                },
            }
        },
    },
}

_BODY = orjson.dumps(SPEC)


async def openapi(request: Request) -> Response:
    return Response(_BODY, media_type="application/json")
