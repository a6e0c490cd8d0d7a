"""Error bodies in the OpenAI shape: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

import orjson
from starlette.types import Send

from tokenport.gateway.errors import ApiError

RETRYABLE_429 = ("rate_limit_exceeded", "device_concurrency_exceeded")  # worth an SDK's retry


def openai_error_body(err: ApiError) -> bytes:
    return orjson.dumps(
        {"error": {"message": err.message, "type": err.type, "param": err.param, "code": err.code}}
    )


def error_headers(err: ApiError, body: bytes, extra: tuple = ()) -> list[tuple[bytes, bytes]]:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra]
    headers += [(k.encode(), v.encode()) for k, v in err.headers.items()]
    if err.status == 429 or err.status == 401 or err.status == 403:
        # insufficient_quota and auth failures must not be retried by the SDKs; rate limits may.
        retry = "true" if err.code in RETRYABLE_429 else "false"
        headers.append((b"x-should-retry", retry.encode()))
    return headers


async def send_error(send: Send, err: ApiError, extra_headers: tuple = ()) -> None:
    body = openai_error_body(err)
    headers = error_headers(err, body, extra_headers)
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
