"""Durability of usage records: a graceful stop loses nothing (`kill -9`: tests/faults/)."""

from __future__ import annotations

import signal
import time

from support.live import mock_config, start_server
from support.load import Load


def test_graceful_shutdown_under_load_loses_no_usage_record(tmp_path, mock_engine):
    server = start_server(tmp_path / "home", mock_config(mock_engine.url))
    _, key = server.new_key("shutdown-tenant")
    with Load(server.base_url + "/v1/chat/completions", key, model="mock-model", chunk_delay_ms=20) as load:
        time.sleep(2.0)
        assert server.stop(signal.SIGTERM) == 0  # in-flight requests finish, then the writer drains
    completed = load.whole()
    assert len(completed) > 20
    usage = server.usage("shutdown-tenant")
    ids = [r["request_id"] for r in usage["data"]]
    assert len(ids) == len(set(ids))
    assert completed <= set(ids), "a completed request has no usage record"
    assert usage["totals"]["requests"] == len(completed)
    assert usage["totals"]["completion_tokens"] == 5 * len(completed)
