"""The Anthropic Messages endpoint (`POST /v1/messages`, `?beta=true` accepted: routing is on the
path): the same hot-path endpoint as OpenAI's, with the request translated on the way in and the
answer on the way out (`anthropic_protocol.py`, `anthropic_sink.py`)."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tokenport.api.anthropic_protocol import parse_messages, translate
from tokenport.api.anthropic_sink import AnthropicSink, anthropic_error
from tokenport.api.errors import error_headers
from tokenport.api.middleware import REQUEST_ID_KEY
from tokenport.api.openai_protocol import ParsedRequest, parse_body
from tokenport.api.openai_routes import AsgiSink, CompletionEndpoint
from tokenport.clock import Clock
from tokenport.gateway.errors import ApiError
from tokenport.gateway.token_count import count_prompt_tokens
from tokenport.gateway.zone import ZONE_HEADER, resolve_zone


class MessagesEndpoint(CompletionEndpoint):
    def __init__(self, gateway_ref, clock: Clock, max_body: int, aliases: dict[str, str]) -> None:
        super().__init__(
            "messages", lambda raw: parse_messages(raw, aliases)[1], gateway_ref, clock, max_body
        )
        self.aliases = aliases

    def make_sink(self, sink: AsgiSink, request_id: str) -> AnthropicSink:
        return AnthropicSink(sink, request_id)

    def parser(self, sink: AnthropicSink):
        def parse(raw: bytes) -> ParsedRequest:
            sink.model, parsed = parse_messages(raw, self.aliases)
            if parsed.reasoning is not None and parsed.reasoning.on:
                sink.thinking, sink.thinking_shown = True, parsed.reasoning.shown
            return parsed

        return parse


async def count_tokens(request: Request) -> Response:
    """`POST /v1/messages/count_tokens`: the prompt tokens a message would bill as input, counted
    by the engine that would serve it (its tokenizer and chat template). Free, like Anthropic's."""
    rt = request.app.state.runtime
    rid = request.scope.get(REQUEST_ID_KEY, "")
    try:
        h = request.headers
        key = rt.keys.authenticate(
            h.get("authorization", "").encode("latin-1") or None,
            h.get("x-api-key", "").encode("latin-1") or None,
            request.client.host if request.client else None,
        )
        zone = resolve_zone(key.zone, h.get(ZONE_HEADER.decode(), "").encode("latin-1") or None)
        body = parse_body(await request.body())
        _, chat = translate({"max_tokens": 1, **body}, rt.settings.model_aliases)
        backend = rt.pool.route(chat["model"], zone)
        tokens = await count_prompt_tokens(rt.session, backend, chat)
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
