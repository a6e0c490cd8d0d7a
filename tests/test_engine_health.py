"""/health answers 503 until the embedded engine is ready, and says why."""

from __future__ import annotations

import json

import httpx
from support.live import start_server, wait_until


def test_health_is_503_while_the_engine_cannot_serve(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + bytes(4096))  # not a loadable model
    server = start_server(tmp_path / "home", {"engine": {"model_path": str(bad)}}, wait_healthy=False)
    try:

        def failed():
            r = httpx.get(server.base_url + "/health")
            return r if json.loads(r.content).get("engine", {}).get("state") == "failed" else None

        r = wait_until(failed, 30, 0.1, "engine load to fail")
        assert r.status_code == 503
        assert r.json()["status"] == "unavailable" and r.json()["backends"]["embedded"]["healthy"] is False
        assert r.headers["x-request-id"]
        _, secret = server.new_key("h-tenant")
        r = httpx.post(
            server.base_url + "/v1/chat/completions",
            headers={"Authorization": f"Bearer {secret}"},
            json={"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "x"}]},
        )
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "no_healthy_backend"
    finally:
        server.stop()


def test_health_reports_loading_then_ok(tmp_path, default_model):
    server = start_server(
        tmp_path / "home", {"engine": {"model_path": str(default_model)}}, wait_healthy=False
    )
    try:
        seen = [server.extra["first_health"]]  # the first answer, as soon as the port was open

        def ok():
            r = httpx.get(server.base_url + "/health")
            seen.append((r.status_code, r.json()["status"]))
            return r.status_code == 200

        wait_until(ok, 60, 0.01, "engine ready")
        assert seen[-1] == (200, "ok")
        assert len(seen) > 1, "never saw the loading state (the model loads in about a second)"
        assert all(status == 503 and state == "loading" for status, state in seen[:-1])
    finally:
        server.stop()
