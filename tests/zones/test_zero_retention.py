"""No prompt or completion text is stored or logged anywhere (retention is off by default)."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import openai
import pytest
from support.live import wait_until


def all_bytes_under(root: Path) -> list[tuple[Path, bytes]]:
    return [(p, p.read_bytes()) for p in root.rglob("*") if p.is_file()]


def test_canaries_appear_in_no_file_database_or_log(engine_server):
    _, secret = engine_server.new_key("canary-tenant")
    client = openai.OpenAI(base_url=engine_server.base_url + "/v1", api_key=secret, max_retries=0)
    canaries = [f"CANARY{uuid.uuid4().hex}" for _ in range(8)]
    completions: list[str] = []

    reply = client.chat.completions.create(
        model="smollm2-135m-instruct",
        max_tokens=24,
        messages=[
            {"role": "system", "content": canaries[0]},
            {"role": "user", "content": f"Repeat {canaries[1]}"},
        ],
    )
    completions.append(reply.choices[0].message.content or "")
    stream = client.chat.completions.create(
        model="smollm2-135m-instruct",
        max_tokens=24,
        stream=True,
        messages=[{"role": "user", "content": f"Say {canaries[2]} twice"}],
    )
    completions.append("".join(c.choices[0].delta.content or "" for c in stream if c.choices))
    text = client.completions.create(model="smollm2-135m-instruct", prompt=canaries[3], max_tokens=24)
    completions.append(text.choices[0].text)
    # Rejected requests too: content in an invalid body must not leak into logs or records.
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model="smollm2-135m-instruct", messages=[{"role": canaries[4], "content": canaries[4]}]
        )
    # Engine-side failures too: a tool with a broken schema, a schema llama.cpp cannot compile,
    # and a raw grammar (which llama.cpp would print to stderr: the gateway refuses it).
    client.chat.completions.create(
        model="smollm2-135m-instruct",
        max_tokens=2,
        messages=[{"role": "user", "content": "x"}],
        tools=[{"type": "function", "function": {"name": canaries[5], "parameters": canaries[5]}}],
    )
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model="smollm2-135m-instruct",
            max_tokens=2,
            messages=[{"role": "user", "content": "x"}],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "s", "schema": {"type": canaries[6]}},
            },
        )
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(
            model="smollm2-135m-instruct",
            max_tokens=2,
            messages=[{"role": "user", "content": "x"}],
            extra_body={"grammar": f"root ::= {canaries[7]}"},
        )
    assert exc.value.param == "grammar"
    r = httpx.post(
        engine_server.base_url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {secret}"},
        content=b'{"model": "smollm2-135m-instruct", "messages": [' + canaries[4].encode(),
    )
    assert r.status_code == 400

    # All eight requests were authenticated, so all eight are metered: wait for the writer.
    wait_until(lambda: engine_server.usage("canary-tenant")["totals"]["requests"] == 8, 5, 0.1, "records")
    needles = [c.encode() for c in canaries]
    # Whole completions (long enough to be unique) must not be stored either.
    needles += [c.strip().encode() for c in completions if len(c.strip()) >= 24]
    found = [
        (path.name, needle[:16])
        for path, data in all_bytes_under(engine_server.home)
        for needle in needles
        if needle in data
    ]
    assert not found, f"request content persisted: {found}"
    metrics = httpx.get(engine_server.base_url + "/metrics").content
    log = engine_server.log().encode()
    assert b"DEBUG sqlalchemy.engine" in log  # the log was at debug level
    assert not [n[:16] for n in needles if n in metrics or n in log]
