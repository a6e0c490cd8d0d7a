"""Pure ASGI middleware (no buffering): a request id on every response, and no 500 escapes
without the OpenAI error shape."""

from __future__ import annotations

import logging
import traceback

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tokenport.api.errors import send_error
from tokenport.gateway.errors import ApiError
from tokenport.ids import random_hex

log = logging.getLogger("tokenport.api")

REQUEST_ID_KEY = "tokenport.request_id"


def new_request_id() -> str:
    """96 random bits: unique across processes and hosts (an id, not a secret)."""
    return f"req_{random_hex(96)}"


def internal_error() -> ApiError:
    """A 500: a bug, never bad input (a fresh one where it is raised, not only answered)."""
    return ApiError(500, "Internal error; the request id identifies it", "server_error", "internal_error")


INTERNAL_ERROR = internal_error()


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid = new_request_id()
        scope[REQUEST_ID_KEY] = rid
        header = (b"x-request-id", rid.encode())
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except ClientDisconnect:
            return  # gone while its body was read (or past a bound on it): nobody to answer
        except Exception as exc:
            log_unhandled(exc, scope.get("path"))
            if not started:
                await send_error(send_with_id, INTERNAL_ERROR)


def log_unhandled(exc: BaseException, path: str | None) -> None:
    """A bug, never bad input: log where it happened, not what (no exception message)."""
    log.error("unhandled %s in %s at %s", type(exc).__name__, path, _where(exc))


def _where(exc: BaseException) -> str:
    """Frames only: an exception's message may quote request content, so it is never logged."""
    return " <- ".join(
        f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} {f.name}"
        for f in reversed(traceback.extract_tb(exc.__traceback__)[-6:])
    )
