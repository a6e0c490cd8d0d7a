"""A device activates itself: `POST /v1/devices/challenge` (its serial) gives a single-use nonce;
`POST /v1/devices/activate` (serial, nonce, HMAC of both under the device's secret) gives a
device token and the entitlement (docs/fleets.md). No API key: the device proves its secret."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tokenport.api.errors import error_headers, openai_error_body
from tokenport.fleets.service import ActivationRefused
from tokenport.gateway.errors import ApiError, bad_request
from tokenport.tenancy.service import InvalidInput

if TYPE_CHECKING:
    from tokenport.api.services import DeviceServices

MAX_BODY = 4096


def _error(err: ApiError) -> Response:
    body = openai_error_body(err)
    headers = {k.decode(): v.decode() for k, v in error_headers(err, body)}
    return Response(body, err.status, headers=headers)


async def _body(request: Request) -> dict:
    """The JSON object sent, read no further than MAX_BODY (no key is needed here)."""
    too_large = ApiError(413, "The body is too large", "invalid_request_error", "body_too_large")
    declared = request.headers.get("content-length", "0")
    if not declared.isdigit() or int(declared) > MAX_BODY:
        raise too_large
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            raise too_large
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise bad_request("The body must be JSON", code="invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request("The body must be a JSON object", code="invalid_json")
    return body


def _refusal(exc: ActivationRefused) -> ApiError:
    kinds = {401: "authentication_error", 403: "permission_error"}
    return ApiError(exc.status, str(exc), kinds.get(exc.status, "invalid_request_error"), exc.code)


def _device_call(
    work: Callable[[DeviceServices, dict], dict], challenge: bool = False
) -> Callable[[Request], Any]:
    async def endpoint(request: Request) -> Response:
        svc: DeviceServices = request.app.state.services
        address = request.client.host if request.client else None
        try:
            if challenge and (over := svc.challenge_throttle.count(address)) is not None:
                raise over  # each challenge stores a nonce: a flood is refused
            if not challenge and (over := svc.activation_throttle.over(address)) is not None:
                raise over  # too many wrong answers already: no more work for this address
            body = await _body(request)
            result = await run_in_threadpool(work, svc, body)
        except ApiError as err:
            return _error(err)
        except InvalidInput as exc:
            return _error(bad_request(str(exc)))
        except ActivationRefused as exc:
            err = _refusal(exc)  # a wrong answer counts as a failed authentication
            return _error(svc.activation_throttle.failed(address, err) if exc.status == 401 else err)
        return Response(orjson.dumps(result), media_type="application/json")

    return endpoint


def challenge(svc: DeviceServices, body: dict) -> dict:
    return svc.fleets.challenge(body.get("serial"))


def activate(svc: DeviceServices, body: dict) -> dict:
    return svc.fleets.activate(body.get("serial"), body.get("nonce"), body.get("mac"))


routes = [
    Route("/v1/devices/challenge", _device_call(challenge, challenge=True), methods=["POST"]),
    Route("/v1/devices/activate", _device_call(activate), methods=["POST"]),
]
