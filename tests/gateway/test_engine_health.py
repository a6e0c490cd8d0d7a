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


def test_health_reports_loading_until_the_engine_answers(tmp_path):
    """The states in order, deterministically (in process, no lifespan): loading while the model
    loads, still loading until the first health check of the loaded engine, then ok."""
    from starlette.testclient import TestClient

    from tokenport.api.app import TokenportApp
    from tokenport.config import settings_from_dict
    from tokenport.runtime import Runtime

    runtime = Runtime(settings_from_dict({}, tmp_path), say=lambda _: None)
    client = TestClient(TokenportApp(runtime))  # not entered: nothing starts, the engine never loads
    engine = runtime.pool.backends[-1]

    def health():
        r = client.get("/health")
        return r.status_code, r.json()["status"], r.json()["engine"]["state"], r.headers["x-request-id"]

    assert health()[:3] == (503, "loading", "loading")
    runtime.started = True
    runtime.engine.ready.set()  # loaded; its HTTP server not yet checked
    assert health()[:3] == (503, "loading", "ready")
    engine.healthy = True
    assert health()[:3] == (200, "ok", "ready")


def test_health_becomes_ok_with_the_real_engine(tmp_path, default_model):
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
        # Whatever came before (the model may load before the first poll) was "loading".
        assert all(state == "ok" or (status, state) == (503, "loading") for status, state in seen), seen
    finally:
        server.stop()
