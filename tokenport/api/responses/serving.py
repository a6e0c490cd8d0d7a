"""Responses API answers from the engine's OpenAI chat output (a sink around the HTTP sink).

Streaming, the events Codex relies on, each with `event:` and a `sequence_number`:
`response.created`, `response.in_progress`; per output item `response.output_item.added`, then
for a message `response.content_part.added`, `response.output_text.delta`...,
`response.output_text.done`, `response.content_part.done`, or for a function call
`response.function_call_arguments.delta`..., `response.function_call_arguments.done`; then
`response.output_item.done`; for a custom tool's call `response.custom_tool_call_input.delta`
and `.done`; for the engine's reasoning a `reasoning` item with `response.reasoning_text.delta`
events; finally `response.completed` (or `response.incomplete` when the token limit cut it) with
the whole response and `usage` (input, cached, output, reasoning, total tokens; and
`clamped_max_tokens` when the gateway lowered the output limit to what the context leaves).
Tool calls carry the client's own tool names and namespaces (responses_tools.py). A failure
once the request is known to stream is `response.failed` with its `code`
(`insufficient_quota`, `rate_limit_exceeded`, `context_length_exceeded`, ...).
"""

from __future__ import annotations

import time

import orjson

from tokenport.api.asgi_sink import AsgiSink
from tokenport.api.errors import error_headers, openai_error_body
from tokenport.api.responses.protocol import ResponsesView
from tokenport.api.responses.tools import ToolMap
from tokenport.api.translating_sink import TranslatingSink, reasoning_text, stream_error
from tokenport.gateway.errors import ApiError


def responses_usage(usage: dict | None) -> dict:
    usage = usage or {}
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    reasoning = int((usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0)
    out = {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": prompt + completion,
    }
    for extra in ("cost", "clamped_max_tokens"):  # the gateway's own, documented fields
        if extra in usage:
            out[extra] = usage[extra]
    return out


def call_item(tools: ToolMap, item_id: str, call_id: str, engine_name: str, arguments: str) -> dict:
    """The client's call item for a call the engine made: a `function_call` (with its
    `namespace` if the tool came from one) or a `custom_tool_call` with the free-form input."""
    tool = tools.client_tool(engine_name)
    if tool.kind == "custom":
        item = {"type": "custom_tool_call", "id": "ctc" + item_id[2:], "call_id": call_id, "name": tool.name}
        item["input"] = custom_input(arguments)
    else:
        item = {"type": "function_call", "id": item_id, "call_id": call_id, "name": tool.name}
        item["arguments"] = arguments
    if tool.namespace is not None:
        item["namespace"] = tool.namespace
    return item


def custom_input(arguments: str) -> str:
    """A custom tool's input from the engine's arguments, `{"input": ...}`; other JSON or text
    passes as it is (the engine did not follow the wrapping)."""
    try:
        args = orjson.loads(arguments) if arguments else {}
    except orjson.JSONDecodeError:
        return arguments
    if isinstance(args, dict) and isinstance(args.get("input"), str):
        return args["input"]
    return arguments


class ResponsesSink(TranslatingSink):
    def __init__(self, inner: AsgiSink, request_id: str, view: ResponsesView | None = None) -> None:
        super().__init__(inner)
        view = view or ResponsesView()
        self.request: dict = view.request  # the client's request, for the echoed fields
        self.tools = view.tools  # the client's tools behind the engine's function names
        self.streaming = view.stream  # the client asked to stream (False before a parse)
        self.id = "resp_" + request_id.removeprefix("req_")
        self.created_at = int(time.time())
        self._seq = 0
        self._opened = False  # response.created sent
        self._ended = False
        self._output: list[dict] = []  # finished items
        self._text: dict | None = None  # the message item being written
        self._thought: dict | None = None  # the reasoning item being written
        self._calls: dict[int, dict] = {}  # the engine's tool-call index -> function_call item
        self._finish: str | None = None

    def _response(self, status: str, output: list[dict], usage: dict | None = None, **extra) -> dict:
        r = self.request
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "model": r.get("model", ""),
            "output": output,
            "instructions": r.get("instructions"),
            "max_output_tokens": r.get("max_output_tokens"),
            "parallel_tool_calls": r.get("parallel_tool_calls", True),
            "temperature": r.get("temperature"),
            "top_p": r.get("top_p"),
            "tool_choice": r.get("tool_choice", "auto"),
            "tools": r.get("tools") or [],
            "text": r.get("text") or {"format": {"type": "text"}},
            "store": False,
            "error": None,
            "incomplete_details": None,
            "metadata": r.get("metadata") or {},
            "usage": usage,
            **extra,
        }

    def _event(self, kind: str, **data) -> bytes:
        body = {"type": kind, "sequence_number": self._seq, **data}
        self._seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(body) + b"\n\n"

    async def start(self, status: int, content_type: bytes, length: int | None = None) -> None:
        if content_type == b"text/event-stream":
            await self.inner.start(status, content_type)
            await self.inner.send(self._open())

    def _open(self) -> bytes:
        self._opened = True
        created = self._response("in_progress", [])
        return self._event("response.created", response=created) + self._event(
            "response.in_progress", response=created
        )

    async def send(self, data: bytes) -> None:
        if not self.streaming:
            body = orjson.dumps(self._whole(orjson.loads(data)))
            await self.inner.start(200, b"application/json", len(body))
            await self.inner.send(body)
            return
        await self.send_events([data])

    async def error(self, err: ApiError) -> None:
        if not self.streaming or self._ended:
            if not self.inner.started:
                body = openai_error_body(err)
                await self.inner.raw_error(err.status, error_headers(err, body, self.inner.ids()), body)
            return
        out = []
        if not self.inner.started:
            await self.inner.start(200, b"text/event-stream")
            out.append(self._open())
        self._ended = True
        failed = self._response(
            "failed", self._output, error={"code": err.code or err.type, "message": err.message}
        )
        out.append(self._event("response.failed", response=failed))
        await self.inner.send(b"".join(out))

    # --- streaming ---

    def _data(self, obj: dict) -> list[bytes]:
        if self._ended:
            return []
        if (error := stream_error(obj)) is not None:
            self._ended = True
            return [
                self._event("response.failed", response=self._response("failed", self._output, error=error))
            ]
        out: list[bytes] = []
        for choice in obj.get("choices") or []:
            delta = choice.get("delta") or {}
            if (thought := reasoning_text(delta)) is not None:
                out += self._reasoning_delta(thought)
            if delta.get("content"):
                self._text_delta(out, delta["content"])
            for call in delta.get("tool_calls") or []:
                out += self._call_delta(call)
            if choice.get("finish_reason"):
                self._finish = choice["finish_reason"]
        if obj.get("usage") and not obj.get("choices"):  # the final usage chunk: the response ends
            self._end(out, responses_usage(obj["usage"]))
        return out

    def _text_delta(self, out: list[bytes], text: str) -> None:
        """Appends to the chunk's `out` (no list of its own per delta)."""
        if self._text is None:
            out += self._close_reasoning() + self._close_calls()
            out += self._open_text()
        self._text["content"][0]["text"] += text
        out.append(
            self._event(
                "response.output_text.delta",
                item_id=self._text["id"],
                output_index=self._text["_index"],
                content_index=0,
                delta=text,
            )
        )

    def _end(self, out: list[bytes], usage: dict) -> None:
        """The open items close, then `response.completed` (`response.incomplete` when the token
        limit cut the answer)."""
        out += self._close_reasoning() + self._close_text() + self._close_calls()
        self._ended = True
        if self._finish == "length":
            details = {"reason": "max_output_tokens"}
            done = self._response("incomplete", self._output, usage, incomplete_details=details)
            out.append(self._event("response.incomplete", response=done))
        else:
            out.append(
                self._event("response.completed", response=self._response("completed", self._output, usage))
            )

    def _open_text(self) -> list[bytes]:
        index = len(self._output)
        self._text = {
            "type": "message",
            "id": f"msg_{self.id[5:]}_{index}",
            "status": "in_progress",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "", "annotations": []}],
            "_index": index,
        }
        item = {**_public(self._text), "content": []}
        return [
            self._event("response.output_item.added", output_index=index, item=item),
            self._event(
                "response.content_part.added",
                item_id=self._text["id"],
                output_index=index,
                content_index=0,
                part={"type": "output_text", "text": "", "annotations": []},
            ),
        ]

    def _close_text(self) -> list[bytes]:
        if self._text is None:
            return []
        item, self._text = self._text, None
        item["status"] = "completed"
        part = item["content"][0]
        self._output.append(_public(item))
        i = item["_index"]
        return [
            self._event(
                "response.output_text.done",
                item_id=item["id"],
                output_index=i,
                content_index=0,
                text=part["text"],
            ),
            self._event(
                "response.content_part.done", item_id=item["id"], output_index=i, content_index=0, part=part
            ),
            self._event("response.output_item.done", output_index=i, item=_public(item)),
        ]

    def _call_delta(self, call: dict) -> list[bytes]:
        """A function call's item opens on its first delta; a function's arguments stream as
        they come, a custom tool's input is sent whole when the call ends (the engine writes
        it inside a JSON string)."""
        k = call.get("index", 0)
        fn = call.get("function") or {}
        out: list[bytes] = []
        if k not in self._calls:
            out += self._close_reasoning() + self._close_text()
            index = len(self._output) + len(self._calls)
            item = call_item(
                self.tools, f"fc_{self.id[5:]}_{k}", call.get("id") or f"call_{k}", fn.get("name") or "", ""
            )
            item.update(status="in_progress", _index=index, _args="")
            self._calls[k] = item
            out.append(self._event("response.output_item.added", output_index=index, item=_public(item)))
        item = self._calls[k]
        if fn.get("arguments"):
            item["_args"] += fn["arguments"]
            if item["type"] == "function_call":
                item["arguments"] = item["_args"]
                out.append(
                    self._event(
                        "response.function_call_arguments.delta",
                        item_id=item["id"],
                        output_index=item["_index"],
                        delta=fn["arguments"],
                    )
                )
        return out

    def _close_calls(self) -> list[bytes]:
        out = []
        for item in sorted(self._calls.values(), key=lambda x: x["_index"]):
            item["status"] = "completed"
            where = {"item_id": item["id"], "output_index": item["_index"]}
            if item["type"] == "custom_tool_call":
                item["input"] = custom_input(item["_args"])
                out.append(self._event("response.custom_tool_call_input.delta", **where, delta=item["input"]))
                out.append(self._event("response.custom_tool_call_input.done", **where, input=item["input"]))
            else:
                out.append(
                    self._event("response.function_call_arguments.done", **where, arguments=item["arguments"])
                )
            self._output.append(_public(item))
            out.append(
                self._event("response.output_item.done", output_index=item["_index"], item=_public(item))
            )
        self._calls = {}
        return out

    def _reasoning_delta(self, text: str) -> list[bytes]:
        out: list[bytes] = []
        if self._thought is None:
            out += self._close_text() + self._close_calls()
            index = len(self._output)
            self._thought = {
                "type": "reasoning",
                "id": f"rs_{self.id[5:]}_{index}",
                "summary": [],
                "_index": index,
            }
            self._thought["content"] = [{"type": "reasoning_text", "text": ""}]
            added = {**_public(self._thought), "content": []}
            out.append(self._event("response.output_item.added", output_index=index, item=added))
        self._thought["content"][0]["text"] += text
        where = {"item_id": self._thought["id"], "output_index": self._thought["_index"], "content_index": 0}
        return [*out, self._event("response.reasoning_text.delta", **where, delta=text)]

    def _close_reasoning(self) -> list[bytes]:
        if self._thought is None:
            return []
        item, self._thought = self._thought, None
        self._output.append(_public(item))
        where = {"item_id": item["id"], "output_index": item["_index"], "content_index": 0}
        return [
            self._event("response.reasoning_text.done", **where, text=item["content"][0]["text"]),
            self._event("response.output_item.done", output_index=item["_index"], item=_public(item)),
        ]

    # --- a whole answer ---

    def _whole(self, obj: dict) -> dict:
        choice = (obj.get("choices") or [{}])[0]
        msg = choice.get("message") or {}
        output: list[dict] = []
        if (thought := reasoning_text(msg)) is not None:
            content = [{"type": "reasoning_text", "text": thought}]
            output.append(
                {"type": "reasoning", "id": f"rs_{self.id[5:]}_0", "summary": [], "content": content}
            )
        if msg.get("content"):
            output.append(
                {
                    "type": "message",
                    "id": f"msg_{self.id[5:]}_{len(output)}",
                    "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": msg["content"], "annotations": []}],
                }
            )
        for k, call in enumerate(msg.get("tool_calls") or []):
            fn = call.get("function") or {}
            item_id, call_id = f"fc_{self.id[5:]}_{k}", call.get("id") or f"call_{k}"
            item = call_item(self.tools, item_id, call_id, fn.get("name") or "", fn.get("arguments") or "")
            output.append({**item, "status": "completed"})
        usage = responses_usage(obj.get("usage"))
        if choice.get("finish_reason") == "length":
            return self._response(
                "incomplete", output, usage, incomplete_details={"reason": "max_output_tokens"}
            )
        return self._response("completed", output, usage)


def _public(item: dict) -> dict:
    return {k: v for k, v in item.items() if not k.startswith("_")}
