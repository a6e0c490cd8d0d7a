"""Pure ASGI middleware (no buffering): a request id on every response, and no 500 escapes
without the OpenAI error shape."""

from __future__ import annotations

import logging
import secrets
import traceback

from tokenport.api.errors import send_error
from tokenport.gateway.errors import ApiError

log = logging.getLogger("tokenport.api")

REQUEST_ID_KEY = "tokenport.request_id"


def new_request_id() -> str:
    return "req_" + secrets.token_hex(12)


class RequestIdMiddleware:
    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid = new_request_id()
        scope[REQUEST_ID_KEY] = rid
        header = (b"x-request-id", rid.encode())
        started = False

        async def send_with_id(message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:  # a bug, never bad input: log the type only (no content)
            log.error("unhandled %s in %s at %s", type(exc).__name__, scope.get("path"), _where(exc))
            if not started:
                await send_error(
                    send_with_id,
                    ApiError(
                        500, "Internal error; the request id identifies it", "server_error", "internal_error"
                    ),
                )


def _where(exc: BaseException) -> str:
    """Frames only: an exception's message may quote request content, so it is never logged."""
    return " <- ".join(
        f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} {f.name}"
        for f in reversed(traceback.extract_tb(exc.__traceback__)[-6:])
    )
