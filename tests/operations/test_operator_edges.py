"""A new operator's rough edges (issue 16): reports over rejected requests and missing inputs, the
invoice preview, output into a closed pipe, a wrong data directory, backends given as an OpenAI
`base_url`, why a backend stays unhealthy, HEAD, answers with only the OpenAI API's fields, Ctrl-C
with streams in flight, the first-run snippet, and the engine's console lines."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import logging
import re
import signal
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import httpx
import pytest
from sqlalchemy import func, select
from support.cli import Cli
from support.live import (
    TOKENPORT,
    LiveServer,
    MockProcess,
    free_port,
    mock_config,
    start_server,
    wait_until,
)
from support.rows import usage_row

from tokenport.config import BackendConfig
from tokenport.gateway.backends import UNHEALTHY_LOG_EVERY_S, Backend, BackendPool
from tokenport.store.db import open_database
from tokenport.store.schema import invoices, ledger_transactions
from tokenport.store.tenants import TenantStore
from tokenport.store.usage import UsageStore


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path / "home")


def _insert_rejected(cli: Cli, tenant: str, at: datetime) -> None:
    """A request refused before routing (a 400), as the gateway records it: no model, no tokens."""
    engine = open_database(f"sqlite:///{cli.db}")
    try:
        tenant_id = next(t.id for t in TenantStore(engine).list_tenants() if t.name == tenant)
        row = usage_row("req_rejected", tenant_id, at, model=None, backend=None, status=400)
        row.update(prompt_tokens=0, cached_tokens=0, completion_tokens=0, error_code="invalid_request")
        UsageStore(engine).insert_many([row])
    finally:
        engine.dispose()


def test_reports_over_a_rejected_request_with_no_tariff_or_rate(cli: Cli) -> None:
    """`economics --format html` crashed on a usage record with no model; every report and format
    now groups it as rejected requests, and says what is missing instead of printing None."""
    now = datetime.now(UTC)
    period = now.strftime("%Y-%m")
    cli.ok("tenants", "create", "demo")
    _insert_rejected(cli, "demo", now - timedelta(seconds=5))
    tariff = f"no tariff for {period}: tokenport energy tariff --period {period} --cny-per-kwh X"
    fx = f"no CNY/USD rate for {period}: tokenport fx set --period {period} --cny-per-usd X"
    for fmt in ("text", "csv", "html"):
        out = cli.out("economics", "--period", period, "--format", fmt)
        assert "None" not in out and "(rejected requests)" in out
        assert tariff in out and fx in out
    doc = json.loads(cli.out("economics", "--period", period, "--format", "json"))
    assert [r["name"] for r in doc["by_model"]] == ["(rejected requests)"]
    assert doc["electricity"]["cny"] is None and doc["missing"]["electricity.cny"] == tariff
    for fmt in ("json", "csv", "html"):
        out = cli.out("green", "report", "--tenant", "demo", "--period", period, "--format", fmt)
        assert "None" not in out and f"no energy metered for demo in {period}" in out
    usage = cli.out("usage", "--tenant", "demo")
    assert "(rejected)" in usage and "total: 1 requests" in usage
    preview = cli.json("invoices", "preview", "--tenant", "demo")
    assert preview["rejected_requests"] == 1 and preview["total_nano_usd"] == 0
    assert "rejected requests" in cli.out("invoices", "preview", "--tenant", "demo")


def test_invoice_preview_from_the_cli_issues_nothing(cli: Cli) -> None:
    cli.ok("tenants", "create", "acme")
    cli.ok("plans", "create", "pro", "--fee-usd", "20", "--five-hour", "100", "--weekly", "1000")
    cli.ok("plans", "assign", "acme", "pro")
    text = cli.out("invoices", "preview", "--tenant", "acme")
    assert "preview as of" in text and "the month is still running" in text and "plan fee: pro" in text
    doc = cli.json("invoices", "preview", "--tenant", "acme")
    assert doc["status"] == "preview" and doc["id"] is None and doc["period_ended"] is False
    assert doc["total_usd"] == "20.000000000" and doc["period"] == datetime.now(UTC).strftime("%Y-%m")
    for fmt in ("csv", "html"):
        assert "20.000000000" in cli.out("invoices", "preview", "--tenant", "acme", "--format", fmt)
    assert cli.json("invoices", "list") == []  # nothing was issued
    engine = open_database(f"sqlite:///{cli.db}")
    try:
        with engine.connect() as conn:  # no plan fee posted, no invoice audited
            assert conn.execute(select(func.count()).select_from(ledger_transactions)).scalar() == 0
            assert conn.execute(select(func.count()).select_from(invoices)).scalar() == 0
    finally:
        engine.dispose()
    assert "has not started" in cli.fails("invoices", "preview", "--tenant", "acme", "--period", "2999-01")
    assert "has not ended yet" in cli.fails(
        "invoices", "issue", "--tenant", "acme", "--period", doc["period"]
    )


def test_the_running_months_invoice_and_a_limited_usage_from_the_api(mock_server: LiveServer) -> None:
    """`GET /v1/account/invoices/upcoming`: the month to date, equal to the ledger, nothing issued;
    `GET /v1/account/usage?limit=N`: at most N groups (the totals cover them all)."""
    _, secret = mock_server.new_key("edges-upcoming")
    mock_server.cli("credits", "grant", "edges-upcoming", "1")
    headers = {"Authorization": f"Bearer {secret}"}

    def call(model: str) -> httpx.Response:
        return httpx.post(
            mock_server.base_url + "/v1/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20},
            headers=headers,
            timeout=10,
        )

    first = wait_until(lambda: (r := call("paid-model")).status_code == 200 and r, 5, 0.1, "credit to arrive")
    for r in (first, call("paid-model"), call("mock-model")):
        assert r.status_code == 200
        mock_server.record(r.headers["x-request-id"])

    def get(path: str, **params) -> httpx.Response:
        return httpx.get(mock_server.base_url + path, params=params, headers=headers, timeout=10)

    spent = 10**9 - get("/v1/account/balance").json()["available_nano_usd"]
    doc = get("/v1/account/invoices/upcoming").json()
    assert doc["status"] == "preview" and doc["id"] is None and doc["period_ended"] is False
    assert doc["period"] == datetime.now(UTC).strftime("%Y-%m") and doc["tenant"]["name"] == "edges-upcoming"
    assert doc["total_nano_usd"] == spent == 2 * 27_000  # the ledger's charges, to the nano-USD
    assert {line["model"]: line["requests"] for line in doc["lines"]} == {"paid-model": 2, "mock-model": 1}
    csv_page = get("/v1/account/invoices/upcoming", format="csv")
    assert csv_page.headers["content-type"].startswith("text/csv") and "0.000054000" in csv_page.text
    assert get("/v1/account/invoices").json()["data"] == []  # nothing was issued
    future = get("/v1/account/invoices/upcoming", period="2999-01")
    assert future.status_code == 400 and future.json()["error"]["param"] == "period"
    assert get("/v1/account/invoices/upcoming", format="pdf").json()["error"]["param"] == "format"

    everything = get("/v1/account/usage", group_by="model").json()
    assert len(everything["data"]) == 2 and everything["has_more"] is False
    one = get("/v1/account/usage", group_by="model", limit="1").json()
    assert len(one["data"]) == 1 and one["has_more"] is True
    assert one["data"][0] == everything["data"][0] and one["totals"] == everything["totals"]
    for bad in ("0", "-1", "abc", "1.5", "100001", ""):
        r = get("/v1/account/usage", limit=bad)
        err = r.json()["error"]
        assert r.status_code == 400 and err["param"] == "limit" and err["type"] == "invalid_request_error"
        assert "'limit' must be an integer from 1 to 100000" in err["message"]


@pytest.mark.parametrize(
    "args",
    [
        ("prices", "list", "--json"),
        ("prices", "list"),
        ("usage", "--json"),
        ("economics", "--period", "2026-10", "--format", "html"),
    ],
)
def test_output_into_a_closed_pipe_exits_quietly(cli: Cli, args) -> None:
    """`tokenport ... | head`: the reader went away before the output was written."""
    for model in ("m-a", "m-b"):
        cli.ok("prices", "set", model, "--input", "1", "--output", "2")
    proc = subprocess.Popen(
        [TOKENPORT, *args], env=cli.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    proc.stdout.close()  # before the command has written anything
    _, err = proc.communicate(timeout=60)
    assert err == "", err
    assert proc.returncode == 141  # as any tool killed by SIGPIPE


def test_a_wrong_data_directory_is_an_error_not_an_empty_database(tmp_path: Path) -> None:
    cli = Cli(tmp_path / "typo")
    for args in (
        ("tenants", "list"),
        ("usage",),
        ("balance", "demo"),
        ("keys", "list", "--tenant", "demo"),
        ("ledger", "verify"),
        ("audit", "verify"),
        ("invoices", "preview", "--tenant", "demo"),
        ("invoices", "list"),
        ("economics", "--period", "2026-10"),
        ("green", "report", "--tenant", "demo", "--period", "2026-10"),
        ("backends", "list"),
        ("keys", "create", "--tenant", "demo"),
    ):
        err = cli.fails(*args)
        assert f"no tokenport database at {cli.db}" in err, err
        assert f"TOKENPORT_HOME={cli.home}" in err and "nothing was created" in err
    assert not cli.db.exists() and not cli.home.exists()
    # a config file naming the database: the message names the file
    config = tmp_path / "other.toml"
    config.write_text(f'[database]\nurl = "sqlite:///{tmp_path / "elsewhere.db"}"\n')
    err = cli.fails("tenants", "list", "--config", str(config))
    assert f"no tokenport database at {tmp_path / 'elsewhere.db'}" in err and str(config) in err
    # commands that create things still create it
    cli.ok("tenants", "create", "demo")
    assert cli.db.exists() and [t["name"] for t in cli.json("tenants", "list")] == ["demo"]


def test_a_database_url_without_tokenport_data_is_an_error(tmp_path: Path, postgres_server) -> None:
    url = postgres_server.create_database("edges_empty")
    cli = Cli(tmp_path / "home", {"TOKENPORT_DATABASE_URL": url})
    err = cli.fails("tenants", "list")
    assert "holds no tokenport data" in err and "from TOKENPORT_DATABASE_URL" in err
    cli.ok("tenants", "create", "demo")
    assert [t["name"] for t in cli.json("tenants", "list")] == ["demo"]


def test_backend_urls_given_as_an_openai_base_url(cli: Cli, mock_engine: MockProcess) -> None:
    added = cli.run(
        "backends", "add", "v1-style", "--url", mock_engine.url + "/v1/", "--models", "m", "--json"
    )
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["url"] == mock_engine.url
    assert "ends in /v1" in added.stderr and f"registering {mock_engine.url}" in added.stderr
    dead = f"http://127.0.0.1:{free_port()}"
    cli.ok("backends", "add", "dead", "--url", dead, "--models", "m")
    cli.ok("backends", "add", "wrong-path", "--url", mock_engine.url + "/nothere", "--models", "m")
    health = {b["name"]: b["health"] for b in cli.json("backends", "list")}
    assert health == {
        "v1-style": "healthy",
        "dead": "unreachable: connection refused",
        "wrong-path": "unhealthy: GET /health answered 404",
    }
    listed = cli.out("backends", "list")
    assert "unreachable: connection refused" in listed and "GET /health answered 404" in listed
    assert "health" not in cli.json("backends", "list", "--no-probe")[0]

    (cli.home / "tokenport.toml").write_text(
        f'[[backends]]\nname = "vllm-a"\nurl = "{mock_engine.url}/v1"\nmodels = ["m"]\n'
    )
    err = cli.fails("backends", "list")
    assert "ends in /v1" in err and f"use url = '{mock_engine.url}'" in err


def test_a_backend_registered_with_v1_serves_and_a_dead_one_is_logged(
    mock_server: LiveServer, mock_engine: MockProcess
) -> None:
    mock_server.cli("prices", "set", "v1-model", "--free")
    mock_server.cli(
        "backends",
        "add",
        "v1-style",
        "--url",
        mock_engine.url + "/v1",
        "--models",
        "v1-model",
        "--kind",
        "llamacpp",
    )
    _, secret = mock_server.new_key("edges-v1")
    body = {"model": "v1-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}

    def served() -> bool:
        r = httpx.post(
            mock_server.base_url + "/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {secret}"},
            timeout=10,
        )
        return r.status_code == 200

    try:
        wait_until(served, 10, 0.2, "the backend registered with /v1 serving")
    finally:
        mock_server.cli("backends", "remove", "v1-style")
    # the configured backend `dead` never answered: the log says so, and why
    assert "backend dead is unhealthy: unreachable: connection refused" in mock_server.log()


class _Health(http.server.BaseHTTPRequestHandler):
    status = 404

    def do_GET(self) -> None:
        self.send_response(type(self).status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_an_unhealthy_backend_is_logged_with_why_then_periodically(caplog) -> None:
    """Not on every check: when it turns (or starts) unhealthy, when the reason changes, and every
    UNHEALTHY_LOG_EVERY_S while it stays so; never request content."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = free_port()
    now = [0.0]
    backend = Backend(BackendConfig("b1", f"http://127.0.0.1:{port}", "overseas", ("m",)))
    pool = BackendPool([backend], monotonic=lambda: now[0])

    async def checks(times: list[float]) -> None:
        async with aiohttp.ClientSession() as session:
            for t in times:
                now[0] = t
                await pool.check(session, backend)

    def logged() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "tokenport.backends"]

    caplog.set_level(logging.INFO, logger="tokenport.backends")
    asyncio.run(checks([0, 2, 4, 6]))
    assert logged() == [f"backend b1 is unhealthy: unreachable: connection refused (http://127.0.0.1:{port})"]
    assert backend.unhealthy_reason == "unreachable: connection refused" and not backend.healthy
    asyncio.run(checks([UNHEALTHY_LOG_EVERY_S + 1, UNHEALTHY_LOG_EVERY_S + 3]))
    assert len(logged()) == 2 and "unhealthy (still): unreachable: connection refused" in logged()[1]

    caplog.clear()
    backend.config = BackendConfig("b1", f"http://127.0.0.1:{server.server_port}", "overseas", ("m",))
    asyncio.run(checks([100, 102]))  # another reason: said at once, then not again
    assert logged() == [
        f"backend b1 is unhealthy (still): GET /health answered 404 (http://127.0.0.1:{server.server_port})"
    ]
    _Health.status = 200
    asyncio.run(checks([104, 106]))
    assert logged()[1:] == ["backend b1 is healthy"] and backend.healthy and backend.unhealthy_reason is None
    server.shutdown()
    _Health.status = 404


# --- what clients see: HEAD, and only the OpenAI API's own fields ---


def test_head_answers_wherever_get_does(mock_server: LiveServer) -> None:
    _, secret = mock_server.new_key("edges-head")
    root = httpx.get(mock_server.base_url + "/")
    assert root.status_code == 200 and root.json()["service"] == "tokenport"
    for path, headers in (
        ("/", {}),
        ("/health", {}),
        ("/metrics", {}),
        ("/v1/models", {"x-api-key": secret}),
    ):
        r = httpx.head(mock_server.base_url + path, headers=headers)
        assert r.status_code == 200 and r.content == b"" and r.headers["x-request-id"], path


def test_embedded_engine_answers_carry_only_openai_fields(engine_server: LiveServer) -> None:
    """llama.cpp adds `timings` and `system_fingerprint`, and gives legacy completions
    `chatcmpl-` ids: none of it reaches the client."""
    _, secret = engine_server.new_key("edges-fields")
    headers = {"authorization": f"Bearer {secret}"}
    chat = {
        "model": "smollm2-135m-instruct",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 4,
    }
    legacy = {"model": "smollm2-135m-instruct", "prompt": "Once upon a time", "max_tokens": 4}
    for path, body in (("/v1/chat/completions", chat), ("/v1/completions", legacy)):
        whole = httpx.post(engine_server.base_url + path, json=body, headers=headers, timeout=60)
        assert whole.status_code == 200, whole.text
        with httpx.stream(
            "POST", engine_server.base_url + path, json={**body, "stream": True}, headers=headers, timeout=60
        ) as r:
            chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
        for obj in (whole.json(), *chunks):
            assert not {"timings", "system_fingerprint"} & set(obj), obj
        prefix = "chatcmpl-" if path.endswith("chat/completions") else "cmpl-"
        assert whole.json()["id"].startswith(prefix) and all(c["id"].startswith(prefix) for c in chunks)


# --- the server's console ---


def test_ctrl_c_says_what_it_drains_and_a_second_one_stops_at_once(
    tmp_path: Path, mock_engine: MockProcess
) -> None:
    server = start_server(tmp_path / "home", mock_config(mock_engine.url))
    # The first-run snippet installs the SDK with the interpreter tokenport runs in (its venv).
    python = Path(TOKENPORT).read_text().splitlines()[0].removeprefix("#!")
    assert f"{python} -m pip install -q openai && {python} - <<'PY'" in server.log()
    _, secret = server.new_key("edges-ctrl-c")
    body = {
        "model": "mock-model",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "mock_chunk_delay_ms": 500,  # 20 tokens: 10 s
    }
    got: list[bytes] = []
    first = threading.Event()

    def stream() -> None:
        with (
            contextlib.suppress(httpx.HTTPError),
            httpx.stream(
                "POST",
                server.base_url + "/v1/chat/completions",
                json=body,
                headers={"authorization": f"Bearer {secret}"},
                timeout=30,
            ) as r,
        ):
            for chunk in r.iter_bytes():
                got.append(chunk)
                first.set()

    client = threading.Thread(target=stream)
    client.start()
    assert first.wait(10)
    t0 = time.monotonic()
    server.proc.send_signal(signal.SIGINT)
    wait_until(lambda: "draining 1 request(s)" in server.log(), 5, 0.05, "the draining notice")
    assert "press Ctrl-C again to stop now" in server.log()
    server.proc.send_signal(signal.SIGINT)
    assert server.proc.wait(8) == 0
    assert time.monotonic() - t0 < 6  # well before the stream's 10 s
    assert "Stopping now: cutting 1 request(s) in flight" in server.log()
    client.join(10)
    (record,) = server.usage("edges-ctrl-c")["data"]
    assert 0 < record["completion_tokens"] < 20  # billed for what it delivered
    server.verify_ledger()


def test_the_engines_console_lines_are_folded_into_the_log_format(tmp_path: Path) -> None:
    """What llama.cpp writes to descriptor 2 (colours, its own prefix) comes out as records of
    `tokenport.engine` in the gateway's format; the gateway's own lines pass as they are."""
    script = (
        "import logging, os, time\n"
        "from tokenport import logs\n"
        "logs.fold_native_output()\n"
        "logs.configure('info')\n"
        "os.write(2, b'\\x1b[31m0.01.002.003 E failed to open slot\\x1b[0m\\n')\n"
        "os.write(2, b'W tokenizer is old\\n')\n"
        "logging.getLogger('tokenport.test').warning('our own line')\n"
        "time.sleep(0.5)\n"
    )
    res = subprocess.run(
        [str(Path(TOKENPORT).parent / "python"), "-c", script], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    lines = res.stderr.splitlines()
    assert "\x1b[" not in res.stderr and len(lines) == 3, lines
    stamp = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")
    assert all(stamp.match(line) for line in lines), lines
    assert sorted(stamp.sub("", line) for line in lines) == [  # the pump thread runs beside ours
        "ERROR tokenport.engine: failed to open slot",
        "WARNING tokenport.engine: tokenizer is old",
        "WARNING tokenport.test: our own line",
    ]
