"""Key lifecycle on a running server: changes made by the CLI take effect within 1 second."""

from __future__ import annotations

import time

import openai
import pytest


def test_new_key_and_revocation_propagate_within_one_second(mock_server):
    key_id, secret = mock_server.new_key("revoke-tenant")
    client = openai.OpenAI(base_url=mock_server.base_url + "/v1", api_key=secret, max_retries=0)
    reply = client.chat.completions.create(model="mock-model", messages=[{"role": "user", "content": "hi"}])
    assert reply.usage.completion_tokens == 20

    mock_server.cli("keys", "revoke", key_id)
    revoked_at = time.monotonic()
    while mock_server.key_status(secret) != 403:
        assert time.monotonic() - revoked_at < 1.0, "revocation not seen within 1 s"
        time.sleep(0.02)
    with pytest.raises(openai.PermissionDeniedError) as exc:
        client.chat.completions.create(model="mock-model", messages=[{"role": "user", "content": "hi"}])
    assert exc.value.status_code == 403
    assert exc.value.code == "key_revoked"
    assert exc.value.request_id and exc.value.request_id.startswith("req_")
    assert exc.value.response.headers["x-should-retry"] == "false"


def test_key_created_out_of_process_is_accepted_within_one_second(mock_server):
    mock_server.cli("tenants", "create", "late-tenant")
    key = mock_server.cli_json("keys", "create", "--tenant", "late-tenant")
    assert mock_server.wait_key_accepted(key["key"], timeout=1.0) < 1.0


def test_unknown_and_missing_keys(mock_server):
    bad = openai.OpenAI(base_url=mock_server.base_url + "/v1", api_key="tpk_not-a-real-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as exc:
        bad.chat.completions.create(model="mock-model", messages=[{"role": "user", "content": "hi"}])
    assert exc.value.request_id and exc.value.request_id.startswith("req_")
    assert exc.value.code == "invalid_api_key"


def test_unknown_model_is_not_found(mock_server):
    _, secret = mock_server.new_key("nf-tenant")
    client = openai.OpenAI(base_url=mock_server.base_url + "/v1", api_key=secret, max_retries=0)
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert exc.value.code == "model_not_found"
    assert exc.value.request_id
