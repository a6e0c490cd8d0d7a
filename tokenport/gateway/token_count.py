"""Exact prompt token counts, from the engine that would serve the request (its own tokenizer and
chat template): llama.cpp's /apply-template + /tokenize, vLLM's and SGLang's /tokenize."""

from __future__ import annotations

import aiohttp
import orjson

from tokenport.gateway.backends import Backend
from tokenport.gateway.errors import ApiError


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


async def count_prompt_tokens(session: aiohttp.ClientSession, backend: Backend, chat: dict) -> int:
    """The prompt tokens `chat` (an OpenAI chat body) makes on `backend`."""
    kind = backend.config.kind
    fields = {k: chat[k] for k in ("messages", "tools", "tool_choice") if k in chat}
    if kind == "llamacpp":
        prompt = (await _post(session, backend, "/apply-template", fields)).get("prompt")
        if not isinstance(prompt, str):
            raise ApiError(502, "The backend returned no prompt", "server_error", "upstream_error")
        tokens = await _post(
            session, backend, "/tokenize", {"content": prompt, "add_special": True, "parse_special": True}
        )
        return len(tokens.get("tokens") or [])
    if kind in ("vllm", "sglang"):
        found = await _post(
            session, backend, "/tokenize", {"model": chat["model"], **fields, "add_generation_prompt": True}
        )
        return int(found.get("count") if found.get("count") is not None else len(found.get("tokens") or []))
    raise ApiError(
        400,
        f"Token counting is not available for this model's engine ({kind})",
        "invalid_request_error",
        "unsupported",
    )
