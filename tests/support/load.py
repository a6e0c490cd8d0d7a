"""Clients sending requests until stopped (half of them streaming), every answer noted: what the
durability and fault tests count records and money against."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass

import httpx


@dataclass(frozen=True)
class Answer:
    at: float  # monotonic, when it was complete
    status: int
    request_id: str
    code: str | None  # the error code, if any
    whole: bool  # the client received the whole answer (a stream to its [DONE])


class Load:
    def __init__(
        self, url: str, key: str, workers: int = 8, model: str = "paid-model", chunk_delay_ms: int = 0
    ) -> None:
        self.url, self.key = url, key
        self.body = {
            "model": model,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 5,
            "mock_chunk_delay_ms": chunk_delay_ms,
        }
        self.answers: list[Answer] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i % 2 == 0,)) for i in range(workers)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)

    def since(self, t: float) -> list[Answer]:
        with self._lock:
            return [a for a in self.answers if a.at >= t]

    def whole(self) -> set[str]:
        with self._lock:
            return {a.request_id for a in self.answers if a.whole}

    def _run(self, stream: bool) -> None:
        headers = {"Authorization": f"Bearer {self.key}"}
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                try:
                    if stream:
                        body = {**self.body, "stream": True}
                        with client.stream("POST", self.url, json=body, headers=headers) as r:
                            text = r.read()
                        whole = r.status_code == 200 and text.rstrip().endswith(b"data: [DONE]")
                    else:
                        r = client.post(self.url, json=self.body, headers=headers)
                        text = r.content
                        whole = r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 5
                    code = json.loads(text)["error"]["code"] if r.status_code != 200 else None
                except (httpx.HTTPError, ValueError):
                    return  # the server is gone (a cut answer is not a whole one)
                with self._lock:
                    self.answers.append(
                        Answer(time.monotonic(), r.status_code, r.headers["x-request-id"], code, whole)
                    )
                if r.status_code != 200:
                    time.sleep(0.05)
