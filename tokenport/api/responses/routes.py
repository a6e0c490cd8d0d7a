"""The OpenAI Responses endpoint (`POST /v1/responses`): the request translated to a chat
completion (`protocol.py`), the answer to Responses items and events (`serving.py`)."""

from __future__ import annotations

from tokenport.api.endpoint import WireFormat
from tokenport.api.responses.protocol import parse_responses
from tokenport.api.responses.serving import ResponsesSink

RESPONSES = WireFormat("responses", parse_responses, ResponsesSink)
