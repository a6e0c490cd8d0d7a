"""Exact prompt token counts, from the engine that would serve the request (its own tokenizer and
chat template): llama.cpp's /apply-template + /tokenize, vLLM's and SGLang's /tokenize."""

from __future__ import annotations

import aiohttp
import orjson

from tokenport.gateway.backends import Backend
from tokenport.gateway.errors import ApiError

COUNTING_KINDS = ("llamacpp", "vllm", "sglang")


async def _post(session: aiohttp.ClientSession, backend: Backend, path: str, body: dict) -> dict:
    headers = {"content-type": "application/json"}
    if backend.config.api_key:
        headers["authorization"] = f"Bearer {backend.config.api_key}"
    try:
        async with session.post(
            backend.url + path,
            data=orjson.dumps(body),
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=30),
        ) as resp:
            raw = await resp.read()
            if resp.status != 200:
                raise ApiError(
                    502,
                    f"Backend '{backend.name}' could not count tokens (HTTP {resp.status})",
                    "server_error",
                    "upstream_error",
                )
            return orjson.loads(raw)
    except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as exc:
        raise ApiError(
            503, f"Backend '{backend.name}' is unavailable", "service_unavailable", "backend_unavailable"
        ) from exc


def _tokens(found: dict) -> int:
    if found.get("count") is not None:
        return int(found["count"])
    return len(found.get("tokens") or [])


async def count_prompt_tokens(session: aiohttp.ClientSession, backend: Backend, chat: dict) -> int:
    """The prompt tokens `chat` (an OpenAI chat body) makes on `backend`."""
    kind = backend.config.kind
    fields = {k: chat[k] for k in ("messages", "tools", "tool_choice") if k in chat}
    if kind == "llamacpp":
        prompt = (await _post(session, backend, "/apply-template", fields)).get("prompt")
        if not isinstance(prompt, str):
            raise ApiError(502, "The backend returned no prompt", "server_error", "upstream_error")
        return await _count_text(session, backend, prompt, chat.get("model", ""))
    if kind in ("vllm", "sglang"):
        found = await _post(
            session, backend, "/tokenize", {"model": chat["model"], **fields, "add_generation_prompt": True}
        )
        return _tokens(found)
    raise ApiError(
        400,
        f"Token counting is not available for this model's engine ({kind})",
        "invalid_request_error",
        "unsupported",
    )


async def _count_text(session: aiohttp.ClientSession, backend: Backend, text: str, model: str) -> int:
    if backend.config.kind == "llamacpp":
        body = {"content": text, "add_special": True, "parse_special": True}
    else:
        body = {"model": model, "prompt": text}
    return _tokens(await _post(session, backend, "/tokenize", body))


async def count_request_tokens(session: aiohttp.ClientSession, backend: Backend, body: dict) -> int | None:
    """A chat or legacy completion request's prompt tokens on `backend`; None when the engine
    cannot say (its kind has no tokenizer endpoint, or it did not answer)."""
    if backend.config.kind not in COUNTING_KINDS:
        return None
    try:
        if "messages" in body:
            return await count_prompt_tokens(session, backend, body)
        prompt = body.get("prompt")
        if isinstance(prompt, list):
            prompt = prompt[0] if prompt else ""
        if not isinstance(prompt, str):
            return None
        return await _count_text(session, backend, prompt, body.get("model", ""))
    except (ApiError, TypeError, ValueError):
        return None
