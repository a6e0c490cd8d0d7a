"""Starlette endpoints called with a tenant's API key (not the hot path): authenticate it, and
answer any ApiError in the OpenAI shape."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from tokenport.api.errors import error_headers, openai_error_body
from tokenport.gateway.errors import ApiError
from tokenport.tenancy.keys import KeyRecord

if TYPE_CHECKING:
    from tokenport.api.services import Keyed


def keyed(handler: Callable[[Request, Any, KeyRecord], Awaitable[Response]]):
    """`handler(request, services, key)`; the key comes from `Authorization: Bearer` or `x-api-key`;
    `services` is the app's (typed by the handler as its surface's view, `api/services.py`)."""

    async def endpoint(request: Request) -> Response:
        svc: Keyed = request.app.state.services
        h = request.headers
        try:
            key = svc.keys.authenticate(
                h.get("authorization", "").encode("latin-1") or None,
                h.get("x-api-key", "").encode("latin-1") or None,
                request.client.host if request.client else None,
            )
            return await handler(request, svc, key)
        except ApiError as err:
            body = openai_error_body(err)
            headers = {k.decode(): v.decode() for k, v in error_headers(err, body)}
            return Response(body, err.status, headers=headers)

    return endpoint


RECORD_TRIES = 40  # of 50 ms each: a request is recorded within the usage writer's flush interval


async def when_recorded(read: Callable[[], Any], *args):
    """`read(*args)` in a thread, retried until it finds what the usage writer is about to
    write (a just-finished request's receipt or retained record); None if it never appears."""
    for _ in range(RECORD_TRIES):
        found = await run_in_threadpool(read, *args)
        if found is not None:
            return found
        await asyncio.sleep(0.05)
    return None
