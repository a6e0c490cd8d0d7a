"""The base of the sinks that answer in another protocol (Anthropic, Responses): they wrap the
HTTP sink, pass the lifecycle's flags through to it, and translate the engine's SSE events (framed
once, by the relay) chunk by chunk."""

from __future__ import annotations

import orjson

from tokenport.api.asgi_sink import AsgiSink


def _through(name: str) -> property:
    """An attribute the lifecycle sets on its sink."""
    return property(lambda s: getattr(s.inner, name), lambda s, v: setattr(s.inner, name, v))


class TranslatingSink:
    receipted = _through("receipted")
    started = property(lambda s: s.inner.started)
    finished = property(lambda s: s.inner.finished)

    def __init__(self, inner: AsgiSink) -> None:
        self.inner = inner

    def response_sha256(self) -> str:
        return self.inner.response_sha256()

    def header(self, name: bytes, value: bytes) -> None:
        self.inner.header(name, value)

    def keep(self) -> None:
        self.inner.keep()

    def kept_body(self) -> bytes:
        return self.inner.kept_body()

    async def finish(self) -> None:
        await self.inner.finish()

    def hold(self) -> None:
        self.inner.hold()

    async def release(self) -> None:
        await self.inner.release()

    async def send_events(self, events: list[bytes]) -> None:
        """Whole SSE events, as the relay framed them (once): each engine chunk translated."""
        out = [event for chunk in _chunks(events) for event in self._data(chunk)]
        if out:
            await self.inner.send(b"".join(out))

    def _data(self, obj: dict) -> list[bytes]:
        """One engine chunk in, the client's events out (each protocol's)."""
        raise NotImplementedError


def _chunks(events: list[bytes]) -> list[dict]:
    """The engine's JSON chunks in these events (not `[DONE]`)."""
    out = []
    for event in events:
        for line in event.split(b"\n"):
            if line.startswith(b"data:") and line[5:].strip() != b"[DONE]":
                try:
                    obj = orjson.loads(line[5:])
                except orjson.JSONDecodeError:
                    continue
                if isinstance(obj, dict):
                    out.append(obj)
    return out


def reasoning_text(part: dict) -> str | None:
    """The engine's reasoning in a delta or message: `reasoning_content` (llama.cpp, SGLang,
    DeepSeek), or `reasoning` (vLLM)."""
    text = part.get("reasoning_content") or part.get("reasoning")
    return text if isinstance(text, str) and text else None


def stream_error(obj: dict) -> dict | None:
    """An error event from the engine (or the relay), as {"code", "message"}; None otherwise."""
    if not obj.get("error"):
        return None
    e = obj["error"] if isinstance(obj["error"], dict) else {"message": str(obj["error"])}
    return {
        "code": str(e.get("code") or e.get("type") or "server_error"),
        "message": str(e.get("message") or ""),
    }
