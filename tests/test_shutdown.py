"""Durability of usage records: a graceful stop loses nothing (`kill -9`: tests/faults/)."""

from __future__ import annotations

import signal
import threading
import time

import httpx
from support.live import mock_config, start_server


def _worker(url: str, key: str, stream: bool, stop: threading.Event, done: list, lock: threading.Lock):
    body = {
        "model": "mock-model",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": stream,
        "max_tokens": 5,
        "mock_chunk_delay_ms": 20,
    }
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(timeout=30) as client:
        while not stop.is_set():
            try:
                if stream:
                    with client.stream("POST", url, json=body, headers=headers) as r:
                        text = b"".join(r.iter_bytes())
                        ok = r.status_code == 200 and text.rstrip().endswith(b"data: [DONE]")
                else:
                    r = client.post(url, json=body, headers=headers)
                    ok = r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 5
            except httpx.HTTPError:
                return  # the server has gone
            if ok:
                with lock:
                    done.append((r.headers["x-request-id"], time.monotonic()))


def _load(server, key: str, workers: int = 8):
    url = server.base_url + "/v1/chat/completions"
    stop, done, lock = threading.Event(), [], threading.Lock()
    threads = [
        threading.Thread(target=_worker, args=(url, key, i % 2 == 0, stop, done, lock))
        for i in range(workers)
    ]
    for t in threads:
        t.start()
    return stop, done, threads


def test_graceful_shutdown_under_load_loses_no_usage_record(tmp_path, mock_engine):
    server = start_server(tmp_path / "home", mock_config(mock_engine.url))
    _, key = server.new_key("shutdown-tenant")
    stop, done, threads = _load(server, key)
    time.sleep(2.0)
    assert server.stop(signal.SIGTERM) == 0  # in-flight requests finish, then the writer drains
    stop.set()
    for t in threads:
        t.join(30)
    assert len(done) > 20
    usage = server.usage("shutdown-tenant")
    ids = [r["request_id"] for r in usage["data"]]
    assert len(ids) == len(set(ids))
    completed = {rid for rid, _ in done}
    assert completed <= set(ids), "a completed request has no usage record"
    assert usage["totals"]["requests"] == len(completed)
    assert usage["totals"]["completion_tokens"] == 5 * len(completed)
