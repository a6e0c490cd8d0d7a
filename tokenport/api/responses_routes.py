"""The OpenAI Responses endpoint (`POST /v1/responses`): the hot-path endpoint with the request
translated to a chat completion and the answer to Responses items and events."""

from __future__ import annotations

from tokenport.api.openai_protocol import ParsedRequest
from tokenport.api.openai_routes import AsgiSink, CompletionEndpoint
from tokenport.api.responses_protocol import parse_responses
from tokenport.api.responses_sink import ResponsesSink
from tokenport.clock import Clock


class ResponsesEndpoint(CompletionEndpoint):
    def __init__(self, gateway_ref, clock: Clock, max_body: int) -> None:
        super().__init__("responses", lambda raw: parse_responses(raw)[1], gateway_ref, clock, max_body)

    def make_sink(self, sink: AsgiSink, request_id: str) -> ResponsesSink:
        return ResponsesSink(sink, request_id)

    def parser(self, sink: ResponsesSink):
        def parse(raw: bytes) -> ParsedRequest:
            sink.request, parsed, sink.tools = parse_responses(raw)
            sink.streaming = parsed.stream
            return parsed

        return parse
