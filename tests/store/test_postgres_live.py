"""The same server, on PostgreSQL: metering, keys and revocation work unchanged."""

from __future__ import annotations

import openai
import pytest
from support.live import mock_config, start_server


@pytest.mark.postgres
def test_live_server_on_postgres(tmp_path, postgres_server, mock_engine):
    url = postgres_server.create_database("live_pg")
    server = start_server(tmp_path / "home", mock_config(mock_engine.url), {"TOKENPORT_DATABASE_URL": url})
    try:
        key_id, secret = server.new_key("pg-tenant")
        client = openai.OpenAI(base_url=server.base_url + "/v1", api_key=secret, max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model="mock-model",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        usage = list(raw.parse())[-1].usage
        record = server.record(raw.headers["x-request-id"])
        assert (record["prompt_tokens"], record["completion_tokens"]) == (usage.prompt_tokens, 20)
        server.cli("keys", "revoke", key_id)
        server.wait_key_status(secret, 403)
    finally:
        server.stop()
    assert not (tmp_path / "home" / "tokenport.db").exists(), "SQLite was used instead of PostgreSQL"
