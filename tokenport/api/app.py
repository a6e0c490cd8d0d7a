"""The ASGI application: hot OpenAI endpoints dispatched directly, everything else via Starlette."""

from __future__ import annotations

from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from tokenport.api import account, admin, audit, devices, ops
from tokenport.api.anthropic import routes as anthropic_routes
from tokenport.api.anthropic.serving import anthropic_error
from tokenport.api.endpoint import Endpoint
from tokenport.api.errors import openai_error_body
from tokenport.api.middleware import INTERNAL_ERROR, REQUEST_ID_KEY, RequestIdMiddleware
from tokenport.api.openai.routes import CHAT, COMPLETIONS, EMBEDDINGS
from tokenport.api.openapi import openapi
from tokenport.api.responses.routes import RESPONSES
from tokenport.gateway.errors import ApiError
from tokenport.runtime import Runtime

ANTHROPIC_PREFIX = "/v1/messages"  # the Anthropic Messages API's paths


async def _not_found(request: Request, exc: Exception) -> Response:
    """404 / 405 in the shape of the API the path belongs to (Anthropic's under /v1/messages)."""
    status = getattr(exc, "status_code", 404)
    err = ApiError(
        status,
        f"No route for {request.method} {request.url.path}",
        "invalid_request_error",
        "not_found" if status == 404 else "method_not_allowed",
    )
    headers = dict(getattr(exc, "headers", None) or {})  # a 405's `allow`
    if request.url.path.startswith(ANTHROPIC_PREFIX):
        headers["request-id"] = request.scope.get(REQUEST_ID_KEY, "")
        return Response(anthropic_error(err), status, headers=headers, media_type="application/json")
    return Response(openai_error_body(err), status, headers=headers, media_type="application/json")


async def _internal(request: Request, exc: Exception) -> Response:
    """A bug, never bad input; the middleware logs where (not what). Still the OpenAI shape.
    (A client gone while its body was read is neither: `RequestIdMiddleware` lets it go.)"""
    return Response(openai_error_body(INTERNAL_ERROR), 500, media_type="application/json")


async def _client_gone(request: Request, exc: Exception) -> Response:
    """The client went away (or was cut by a bound on sending) while its body was read: the
    answer goes nowhere, and nothing is logged as an error."""
    return Response(status_code=499)


class TokenportApp:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        s = runtime.settings
        wire = {  # the hot path: each protocol's endpoint called directly, no framework between
            "/v1/chat/completions": CHAT,
            "/v1/completions": COMPLETIONS,
            "/v1/messages": anthropic_routes.messages(s.model_aliases),
            "/v1/responses": RESPONSES,
            "/v1/embeddings": EMBEDDINGS,
        }
        gateway = lambda: runtime.gateway  # noqa: E731 (built at startup)
        self.hot = {path: Endpoint(w, gateway, runtime.clock, s.max_body_bytes) for path, w in wire.items()}

        @asynccontextmanager
        async def lifespan(app: ASGIApp):
            await runtime.start()
            try:
                yield
            finally:
                await runtime.stop()

        routes = [  # Starlette answers HEAD wherever it answers GET
            Route("/", ops.root, methods=["GET"]),
            Route("/health", ops.health, methods=["GET"]),
            Route("/metrics", ops.metrics, methods=["GET"]),
            Route("/v1/models", ops.models, methods=["GET"]),
            Route("/openapi.json", openapi, methods=["GET"]),
            *account.routes,
            *anthropic_routes.routes,
            *audit.routes,
            *devices.routes,
            *admin.routes,
        ]
        self.starlette = Starlette(
            routes=routes,
            lifespan=lifespan,
            exception_handlers={
                404: _not_found,
                405: _not_found,
                ClientDisconnect: _client_gone,
                Exception: _internal,
            },
        )
        self.starlette.state.services = runtime  # each handler sees its surface's view of it
        self._http = RequestIdMiddleware(self.starlette)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            endpoint = self.hot.get(scope["path"])
            if endpoint is not None:  # the hot path: straight to the endpoint
                return await endpoint(scope, receive, send)
            return await self._http(scope, receive, send)
        return await self.starlette(scope, receive, send)
