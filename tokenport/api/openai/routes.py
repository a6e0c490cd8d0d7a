"""OpenAI's protocols on the hot path: chat completions, completions, embeddings; the engine's
answer goes back as it is (`endpoint.plain_sink`)."""

from __future__ import annotations

from tokenport.api.endpoint import WireFormat, plain_sink
from tokenport.api.openai.protocol import parse_chat, parse_completion, parse_embeddings

CHAT = WireFormat("chat", lambda raw: (parse_chat(raw), None), plain_sink)
COMPLETIONS = WireFormat("completions", lambda raw: (parse_completion(raw), None), plain_sink)
EMBEDDINGS = WireFormat("embeddings", lambda raw: (parse_embeddings(raw), None), plain_sink)
