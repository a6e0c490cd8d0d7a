"""A request as the lifecycle takes it: parsed and checked by its protocol (`api/*_protocol.py`),
in the chat-completions shape the engines are sent."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tokenport.engines.dialects import Reasoning


@dataclass(slots=True)
class ParsedRequest:
    endpoint: str  # "chat" | "completions"
    model: str
    stream: bool
    include_usage: bool  # the client asked for the usage chunk
    body: dict[str, Any]
    reasoning: Reasoning | None = None  # what the client asked of the model's thinking

    @property
    def max_output(self) -> int | None:
        """The most output tokens the request allows (None: up to the context); held for."""
        if self.endpoint == "embeddings":
            return 0
        given = [v for v in (self.body.get("max_tokens"), self.body.get("max_completion_tokens")) if v]
        return max(given) if given else None  # both given: an engine may honour either
