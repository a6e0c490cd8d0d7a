"""The base of the sinks that answer in another protocol (Anthropic, Responses): they wrap the
HTTP sink, pass the lifecycle's flags through to it, and split the engine's SSE into events."""

from __future__ import annotations

import orjson

from tokenport.api.openai_routes import AsgiSink


def _through(name: str) -> property:
    """An attribute the lifecycle and the disconnect watcher read and set on their sink."""
    return property(lambda s: getattr(s.inner, name), lambda s, v: setattr(s.inner, name, v))


class TranslatingSink:
    disconnected = _through("disconnected")
    cancellable = _through("cancellable")
    delivered = _through("delivered")
    receipted = _through("receipted")
    started = property(lambda s: s.inner.started)
    finished = property(lambda s: s.inner.finished)

    def __init__(self, inner: AsgiSink) -> None:
        self.inner = inner
        self._buf = b""

    def response_sha256(self) -> str:
        return self.inner.response_sha256()

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

    def chunks(self, data: bytes) -> list[dict]:
        """The engine's JSON chunks in the whole SSE events received so far (not `[DONE]`)."""
        self._buf += data
        out = []
        while (cut := self._buf.find(b"\n\n")) >= 0:
            event, self._buf = self._buf[:cut], self._buf[cut + 2 :]
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
