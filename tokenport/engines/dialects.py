"""What each kind of engine needs in a request, and what it puts in an answer that the OpenAI API
does not define.

Requests: reasoning (an Anthropic `thinking` block, Codex's `reasoning.effort`, an OpenAI
`reasoning_effort`) in the fields each engine reads: vLLM and SGLang take `reasoning_effort`
and the chat template's `enable_thinking`; vLLM a `thinking_token_budget`, SGLang a
`thinking_budget` in `chat_template_kwargs`; llama.cpp's server the template kwargs only
(`enable_thinking`, `reasoning_effort`); a plain OpenAI-compatible server `reasoning_effort`
only. Efforts are sent as low / medium / high, the levels all of them accept.

Answers: llama.cpp's server adds `timings` (which the gateway asks for: they carry the running
token counts), a `system_fingerprint` of its build (`b0-unknown` in a packaged build), and ids
starting `chatcmpl-` on legacy completions. `llamacpp_cleaner` removes the first two and gives
completions `cmpl-` ids, after the gateway has read what it needs.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
# The three levels vLLM and SGLang accept (and OpenAI's older reasoning models).
_LEVEL = {"minimal": "low", "low": "low", "medium": "medium", "high": "high", "xhigh": "high", "max": "high"}
_TEMPLATE_KINDS = ("vllm", "sglang", "llamacpp")  # engines that render the chat template themselves


@dataclass(frozen=True, slots=True)
class Reasoning:
    """What the client asked of the model's thinking, whatever its protocol."""

    on: bool = True  # False: the client turned thinking off
    effort: str | None = None  # one of EFFORTS; None: the engine's default
    budget: int | None = None  # thinking tokens at most (Anthropic's `budget_tokens`)
    shown: bool = True  # False: the client wants the thinking's signature only (`display: omitted`)

    @property
    def level(self) -> str | None:
        """low / medium / high: the effort asked for, or one derived from the budget."""
        if self.effort in _LEVEL:
            return _LEVEL[self.effort]
        if self.budget is not None:
            return "low" if self.budget < 4096 else "medium" if self.budget < 16384 else "high"
        return None


def with_reasoning(r: Reasoning, kind: str, body: dict) -> dict:
    """The engine's body with the reasoning fields its kind reads; what the client set in the
    engine's own terms (`chat_template_kwargs`, `reasoning_effort`) is kept."""
    out = dict(body)
    level = r.level if r.on else None
    if kind not in _TEMPLATE_KINDS:  # a plain OpenAI-compatible server
        if level is not None:
            out.setdefault("reasoning_effort", level)
        return out
    kwargs = dict(body.get("chat_template_kwargs") or {})
    kwargs.setdefault("enable_thinking", r.on)
    if r.on and r.budget is not None and kind == "sglang":
        kwargs.setdefault("thinking_budget", r.budget)
    if level is not None and kind == "llamacpp":
        kwargs.setdefault("reasoning_effort", level)  # llama.cpp hands it to the template
    out["chat_template_kwargs"] = kwargs
    if level is None or kind == "llamacpp":
        out.pop("reasoning_effort", None)  # "none" and the like are not theirs: the kwargs say it
    else:
        out["reasoning_effort"] = _LEVEL.get(body.get("reasoning_effort"), level)
    if r.on and r.budget is not None and kind == "vllm":
        out["thinking_token_budget"] = r.budget
    return out


def effort_reasoning(effort: object) -> Reasoning | None:
    """An OpenAI-style effort (chat's `reasoning_effort`, Responses' `reasoning.effort`), if it
    names one we know; `none` turns thinking off."""
    if effort not in EFFORTS:
        return None
    return Reasoning(on=effort != "none", effort=effort)


# --- llama.cpp's answers ---

_TIMINGS = re.compile(rb',"timings":\{[^{}]*\}|"timings":\{[^{}]*\},?')
_FINGERPRINT = re.compile(rb',"system_fingerprint":"[^"]*"|"system_fingerprint":"[^"]*",?')
_CHAT_ID = b'"id":"chatcmpl-'


def llamacpp_cleaner(endpoint: str) -> Callable[[bytes], bytes]:
    """A function from one llama.cpp SSE event (or whole answer) to the same without the fields
    the OpenAI API does not define; for legacy completions, with a `cmpl-` id."""
    completions = endpoint == "completions"

    def clean(data: bytes) -> bytes:
        if b'"timings"' in data:
            data = _TIMINGS.sub(b"", data)
        if b'"system_fingerprint"' in data:
            data = _FINGERPRINT.sub(b"", data)
        if completions and _CHAT_ID in data:
            data = data.replace(_CHAT_ID, b'"id":"cmpl-')
        return data

    return clean
