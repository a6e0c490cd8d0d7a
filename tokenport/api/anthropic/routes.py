"""The Anthropic Messages endpoint: the same hot-path endpoint as OpenAI's (`api/endpoint.py`),
with the request translated on the way in (`protocol.py`) and the answer on the way out
(`serving.py`); and `count_tokens`."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tokenport.api.anthropic.protocol import parse_messages, translate
from tokenport.api.anthropic.serving import AnthropicSink, anthropic_error
from tokenport.api.endpoint import WireFormat
from tokenport.api.errors import error_headers
from tokenport.api.middleware import REQUEST_ID_KEY
from tokenport.api.openai.protocol import parse_body
from tokenport.gateway.device_gate import check_standing
from tokenport.gateway.errors import ApiError
from tokenport.gateway.token_count import count_prompt_tokens

if TYPE_CHECKING:
    from tokenport.api.services import CountingServices


def messages(aliases: dict[str, str]) -> WireFormat:
    """`POST /v1/messages` (`?beta=true` accepted: routing is on the path), with the configured
    model aliases."""
    return WireFormat("messages", partial(parse_messages, aliases=aliases), AnthropicSink)


async def count_tokens(request: Request) -> Response:
    """`POST /v1/messages/count_tokens`: the prompt tokens a message would bill as input, counted
    by the engine that would serve it (its tokenizer and chat template). Free, like Anthropic's."""
    svc: CountingServices = request.app.state.services
    gateway = svc.gateway
    rid = request.scope.get(REQUEST_ID_KEY, "")
    try:
        headers = dict(request.scope["headers"])
        key, device = await gateway.authenticate(headers, request.client.host if request.client else None)
        if device is not None:  # a revoked, quarantined or expired device is not served here either
            check_standing(device, svc.clock.now())
        zone = gateway.zone(key, headers)
        body = parse_body(await request.body())
        _, chat = translate({"max_tokens": 1, **body}, svc.settings.model_aliases)
        tokens = await count_prompt_tokens(svc.session, gateway.route(chat["model"], zone), chat)
    except ApiError as err:
        payload = anthropic_error(err)
        headers = {
            k.decode(): v.decode() for k, v in error_headers(err, payload, ((b"request-id", rid.encode()),))
        }
        return Response(payload, err.status, headers=headers)
    return Response(
        orjson.dumps({"input_tokens": tokens}), media_type="application/json", headers={"request-id": rid}
    )


routes = [Route("/v1/messages/count_tokens", count_tokens, methods=["POST"])]
