"""Serving: the gateway and, on first run, a demo tenant."""

from __future__ import annotations

import argparse
import socket
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import uvicorn

    from tokenport.runtime import Runtime

import shlex
import signal
import sys

from tokenport import logs
from tokenport.cli.common import (
    _settings,
)
from tokenport.config import Settings

DRAIN_S = 30  # a graceful stop waits this long for the requests in flight


def _server(config: uvicorn.Config, runtime: Runtime, say: Callable[[str], None]):
    """uvicorn's server, saying what a stop waits for: the first Ctrl-C (or SIGTERM) drains the
    requests in flight for up to DRAIN_S; a second Ctrl-C cuts them at once. Either way every
    request is settled and its usage written before the process exits: a cut stream is billed
    for what it delivered."""
    import asyncio

    import uvicorn

    class Server(uvicorn.Server):
        loop: asyncio.AbstractEventLoop | None = None

        async def serve(self, sockets: list[socket.socket] | None = None) -> None:
            self.loop = asyncio.get_running_loop()
            await super().serve(sockets)

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            n = runtime.gateway.in_flight if runtime.gateway is not None else 0
            if self.should_exit and sig == signal.SIGINT:
                say(f"Stopping now: cutting {n} request(s) in flight (each billed for what it delivered)")
                self.force_exit = True
                if self.loop is not None:  # the handlers settle as they are cancelled
                    self.loop.call_soon_threadsafe(self._cut)
                return
            if not self.should_exit:
                say(
                    f"Shutting down: draining {n} request(s) in flight (up to {DRAIN_S} s); "
                    "press Ctrl-C again to stop now"
                )
            self.should_exit = True

        def _cut(self) -> None:
            for task in list(self.server_state.tasks):
                task.cancel()

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            await super().shutdown(sockets)
            if self.force_exit:  # uvicorn skips the lifespan's end then: write the usage anyway
                await self.lifespan.shutdown()

    return Server(config)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from tokenport.api.app import TokenportApp
    from tokenport.api.http_protocol import guarded_protocol
    from tokenport.runtime import Runtime

    settings = _settings(args)
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    if overrides:
        settings = Settings(**{**settings.__dict__, **overrides})
    if settings.engine.enabled:
        logs.fold_native_output()  # llama.cpp's console lines, in this log's format
    logs.configure(settings.log_level)
    say = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    runtime = Runtime(settings, say=say)
    _first_run_demo(runtime, settings)
    say(f"tokenport serving on http://{settings.host}:{settings.port} (data: {settings.home})")
    bounds = settings.client_bounds
    refused = runtime.metrics.client_refusals
    config = uvicorn.Config(
        TokenportApp(runtime),
        host=settings.host,
        port=settings.port,
        lifespan="on",
        access_log=False,
        log_level="debug" if settings.log_level == "debug" else "warning",
        loop=_loop(),
        http=guarded_protocol(bounds, lambda reason: refused.labels(reason).inc()),
        timeout_keep_alive=bounds.keepalive_timeout_s,
        timeout_graceful_shutdown=DRAIN_S,
        proxy_headers=False,
    )
    # uvicorn re-raises SIGTERM/SIGINT once it has shut down gracefully; that is a clean exit.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(0))
    _server(config, runtime, say).run()
    return 0


def _loop() -> str:
    try:
        import uvloop  # noqa: F401

        return "uvloop"
    except ImportError:
        return "asyncio"


def _first_run_demo(runtime: Runtime, settings: Settings) -> None:
    """On an empty database: a demo tenant and key, and ready-to-paste examples."""
    if runtime.tenant_store.count_tenants():
        return
    from tokenport.billing.service import BillingService
    from tokenport.store.repositories import billing_repositories

    runtime.tenancy.create_tenant("demo")
    info, secret = runtime.tenancy.create_key("demo", "created on first run")
    billing = BillingService(billing_repositories(runtime.db), runtime.tenancy, runtime.clock)
    model = (
        settings.engine.model_id
        if settings.engine.enabled
        else (settings.backends[0].models[0] if settings.backends else "MODEL")
    )
    priced = ""
    if settings.engine.enabled and billing.price_book().at(model, runtime.clock.now()) is None:
        billing.set_price(model, "0.02", "0.04")
        priced = f"Priced {model} at $0.02 / $0.04 per million input / output tokens (tokenport prices).\n"
    billing.grant("demo", "1", promo=True)
    base = f"http://{settings.host}:{settings.port}"
    python = shlex.quote(sys.executable)  # the interpreter tokenport runs in (its virtual environment)
    print(
        f"""
First run: created tenant 'demo' with $1 of promotional credit, and API key {info.id}
(shown once, keep it):

    {secret}

{priced}
Try it (once the model is loaded):

curl {base}/v1/chat/completions \\
  -H "Authorization: Bearer {secret}" -H "Content-Type: application/json" \\
  -d '{{"model": "{model}", "messages": [{{"role": "user", "content": "Say hello"}}], "max_tokens": 32}}'

{python} -m pip install -q openai && {python} - <<'PY'
from openai import OpenAI
client = OpenAI(base_url="{base}/v1", api_key="{secret}")
reply = client.chat.completions.create(model="{model}", max_tokens=32,
    messages=[{{"role": "user", "content": "Say hello"}}])
print(reply.choices[0].message.content, reply.usage)
PY
""",
        file=sys.stderr,
        flush=True,
    )


def register(sub: Any, command: Callable[..., argparse.ArgumentParser]) -> None:
    s = command(sub, "serve", cmd_serve, "run the gateway (and the embedded engine)")
    s.add_argument("--host")
    s.add_argument("--port", type=int)
