"""Durability of usage records: a graceful stop loses nothing; what `kill -9` can lose is bounded."""

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


def test_kill_9_loses_at_most_the_last_flush_interval(tmp_path, mock_engine):
    """Documented bound: records of requests finished within the last flush interval (200 ms)."""
    server = start_server(tmp_path / "home", mock_config(mock_engine.url))
    _, key = server.new_key("kill-tenant")
    stop, done, threads = _load(server, key, workers=4)
    time.sleep(2.5)
    server.stop(signal.SIGKILL)
    killed_at = time.monotonic()
    stop.set()
    for t in threads:
        t.join(30)
    usage = server.usage("kill-tenant")  # the CLI reads the same database after the crash
    rows = usage["data"]
    ids = [r["request_id"] for r in rows]
    assert len(ids) == len(set(ids))
    completed = dict(done)
    assert set(ids) <= set(completed), "a record exists for a request that never completed"
    for r in rows:  # whatever was written is whole
        assert r["status"] == 200 and r["completion_tokens"] == 5 and r["prompt_tokens"] == 10
    settled_long_before = {rid for rid, t in completed.items() if killed_at - t > 1.0}
    assert len(settled_long_before) > 10
    assert settled_long_before <= set(ids), "kill -9 lost records older than the flush interval"
