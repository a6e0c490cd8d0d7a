"""Fit: a request in its engine's context window, before the engine or the money sees it.

A prompt that cannot fit is refused with each protocol's own error (`ContextExceeded`: OpenAI's
`context_length_exceeded`, Anthropic's "prompt is too long: N tokens > M maximum"); an output
limit above what the context leaves is lowered to it, and the hold is taken on the lowered one.
Counting asks the engine's tokenizer, so it is done only where the body could come near the
window: a token covers at least one byte, so a body of B bytes makes at most B tokens (plus what
the chat template adds, `TEMPLATE_SLACK`). An engine that cannot count (kind `openai`) decides
itself, and its refusal is mapped to the same errors (`gateway/relay.py`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from tokenport.gateway.backends import Backend
from tokenport.gateway.errors import ApiError
from tokenport.gateway.request import ParsedRequest

TEMPLATE_SLACK = 256  # tokens a chat template may add (role markers, a default system prompt)
BYTES_PER_TOKEN = 4  # a request body's bytes per prompt token, for an estimate (English and JSON)


class ContextExceeded(ApiError):
    """The prompt leaves no room for output in the context window."""

    def __init__(self, prompt: int | None, context: int | None) -> None:
        if prompt is not None and context is not None:
            message = (
                f"This model's maximum context length is {context} tokens. However, your messages "
                f"resulted in {prompt} tokens. Please reduce the length of the messages."
            )
        else:
            message = "The prompt is too long for this model's context window. Please reduce its length."
        super().__init__(400, message, "invalid_request_error", "context_length_exceeded", "messages")
        self.prompt = prompt
        self.context = context

    @property
    def anthropic_message(self) -> str:
        """Anthropic's wording, which Claude Code reads to compact the conversation."""
        if self.prompt is not None and self.context is not None:
            return f"prompt is too long: {self.prompt} tokens > {self.context - 1} maximum"
        return "prompt is too long"


@dataclass(slots=True)
class Fit:
    prompt_bound: int  # the most prompt tokens the request can bill (counted, or the body's bytes)
    max_output: int | None  # the most output tokens (None: up to the context)
    clamped: int | None = None  # the output limit the request now carries, if it was lowered
    counted: bool = False  # prompt_bound is the engine's own count of the prompt

    @property
    def prompt_estimate(self) -> int:
        """The prompt's tokens for billing when the engine does not say (a stream cut before
        its usage, from an engine with no running counts): the count, or the body's bytes / 4."""
        return self.prompt_bound if self.counted else math.ceil(self.prompt_bound / BYTES_PER_TOKEN)


Counter = Callable[[Backend, dict], Awaitable[int | None]]


class ContextWindow:
    def __init__(self, count: Counter) -> None:
        self.count = count  # the engine's own prompt count (None: it cannot say)

    async def fit(self, req: ParsedRequest, backend: Backend, body_size: int) -> Fit:
        max_output = req.max_output
        context = backend.config.context
        if req.endpoint == "embeddings" or body_size + TEMPLATE_SLACK + (max_output or 1) <= context:
            return Fit(body_size, max_output)  # fits whatever the tokenizer says
        prompt = await self.count(backend, req.body)
        if prompt is None:
            return Fit(body_size, max_output)
        if prompt >= context:
            raise ContextExceeded(prompt, context)
        room = context - prompt
        if max_output is None or max_output <= room:
            return Fit(prompt, max_output if max_output is not None else room, counted=True)
        for name in ("max_tokens", "max_completion_tokens"):
            if name in req.body:
                req.body[name] = room
        return Fit(prompt, room, clamped=room, counted=True)


# What engines say when a prompt does not fit: llama.cpp ("request (N tokens) exceeds the
# available context size (M tokens)", with n_prompt_tokens / n_ctx), vLLM ("maximum context
# length is M tokens ... N ..."), SGLang ("The input (N tokens) is longer than the model's
# context length (M tokens)").
_LLAMACPP = re.compile(r"\((\d+) tokens\) exceeds the available context size \((\d+) tokens\)")
_VLLM = re.compile(r"maximum context length is (\d+) tokens.*?(?:requested|resulted in|has) (\d+)", re.S)
_SGLANG = re.compile(r"input \((\d+) tokens\) is longer than the model's context length \((\d+) tokens\)")


def engine_context_error(message: str, error: dict) -> ContextExceeded | None:
    """The engine's refusal of a prompt too long for its context, in our terms; None if it is
    something else. The engine's own text is not passed on."""
    if isinstance(error.get("n_prompt_tokens"), int) and isinstance(error.get("n_ctx"), int):
        return ContextExceeded(error["n_prompt_tokens"], error["n_ctx"])
    if m := _LLAMACPP.search(message):
        return ContextExceeded(int(m.group(1)), int(m.group(2)))
    if m := _SGLANG.search(message):
        return ContextExceeded(int(m.group(1)), int(m.group(2)))
    if m := _VLLM.search(message):
        return ContextExceeded(int(m.group(2)), int(m.group(1)))
    if error.get("type") == "exceed_context_size_error" or "context" in message.lower():
        return ContextExceeded(None, None)
    return None
