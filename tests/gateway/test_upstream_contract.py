"""What the gateway sends to an engine: the body it needs, its own request id, never the client's key."""

from __future__ import annotations

import openai


def test_engine_gets_request_id_and_never_the_client_key(mock_server, mock_engine):
    _, secret = mock_server.new_key("contract-tenant")
    client = openai.OpenAI(base_url=mock_server.base_url + "/v1", api_key=secret, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="mock-model",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        max_completion_tokens=4,
        extra_headers={"x-custom-client-header": "private"},
    )
    list(raw.parse())
    stats = mock_engine.stats()
    headers = stats["last_headers"]
    assert headers["x-request-id"] == raw.headers["x-request-id"]
    assert "authorization" not in headers and "x-api-key" not in headers
    assert secret not in repr(headers)
    assert "x-custom-client-header" not in headers
    # Streaming: usage always requested upstream; running counts the llama.cpp way (kind llamacpp).
    assert stats["last_stream_options"] == {"include_usage": True}
    assert "timings_per_token" in stats["last_request_keys"]
    assert "max_tokens" in stats["last_request_keys"]  # max_completion_tokens also sent by its old name
