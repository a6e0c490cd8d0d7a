"""`POST /v1/embeddings`: passed to a backend that serves embeddings for the model, metered and
billed as input tokens; a clear error for a model that does not serve them."""

from __future__ import annotations

import openai
import pytest
from support.live import wait_until


@pytest.fixture(scope="module")
def client(mock_server) -> openai.OpenAI:
    _, secret = mock_server.new_key("embedder")
    mock_server.cli("credits", "grant", "embedder", "1")

    return openai.OpenAI(base_url=mock_server.base_url + "/v1", api_key=secret, max_retries=0)


def test_embeddings_are_served_and_billed(mock_server, client) -> None:
    def admitted():  # the running server sees the grant through its change feed
        try:
            return client.embeddings.with_raw_response.create(model="mock-embed", input=["a", "b"])
        except openai.RateLimitError:
            return None

    raw = wait_until(admitted, 5, 0.05, "the grant to reach the running server")
    r = raw.parse()
    assert [len(d.embedding) for d in r.data] == [8, 8] and r.usage.prompt_tokens == 20
    record = mock_server.record(raw.headers["x-request-id"])
    assert record["endpoint"] == "embeddings"
    assert (record["prompt_tokens"], record["completion_tokens"]) == (20, 0)
    assert record["cost_nano_usd"] == 20 * 300  # $0.30 per million input tokens
    single = client.embeddings.create(model="mock-embed", input="one")
    assert len(single.data) == 1 and single.usage.prompt_tokens == 10


def test_models_that_do_not_embed_are_refused_clearly(client) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client.embeddings.create(model="mock-model", input="x")
    assert exc.value.code == "model_not_embedding" and "does not serve embeddings" in exc.value.message
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="no-such-model", input="x")
    with pytest.raises(openai.BadRequestError) as bad:
        client.embeddings.create(model="mock-embed", input=[])
    assert bad.value.param == "input"
