"""Serving: the gateway and, on first run, a demo tenant."""

from __future__ import annotations

import signal
import sys

from tokenport import logs
from tokenport.cli.common import (
    _settings,
)
from tokenport.config import Settings


def cmd_serve(args) -> int:
    import uvicorn

    from tokenport.api.app import TokenportApp
    from tokenport.runtime import Runtime

    settings = _settings(args)
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    if overrides:
        settings = Settings(**{**settings.__dict__, **overrides})
    logs.configure(settings.log_level)
    say = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    runtime = Runtime(settings, say=say)
    _first_run_demo(runtime, settings)
    say(f"tokenport serving on http://{settings.host}:{settings.port} (data: {settings.home})")
    config = uvicorn.Config(
        TokenportApp(runtime),
        host=settings.host,
        port=settings.port,
        lifespan="on",
        access_log=False,
        log_level="debug" if settings.log_level == "debug" else "warning",
        loop=_loop(),
        http="httptools",
        timeout_graceful_shutdown=30,
        proxy_headers=False,
    )
    # uvicorn re-raises SIGTERM/SIGINT once it has shut down gracefully; that is a clean exit.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(0))
    uvicorn.Server(config).run()
    return 0


def _loop() -> str:
    try:
        import uvloop  # noqa: F401

        return "uvloop"
    except ImportError:
        return "asyncio"


def _first_run_demo(runtime, settings: Settings) -> None:
    """On an empty database: a demo tenant and key, and ready-to-paste examples."""
    if runtime.tenant_store.count_tenants():
        return
    from tokenport.billing.service import BillingService
    from tokenport.store.billing import BillingStore

    runtime.tenancy.create_tenant("demo")
    info, secret = runtime.tenancy.create_key("demo", "created on first run")
    billing = BillingService(BillingStore(runtime.db), runtime.tenancy, runtime.clock)
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

pip install openai && python - <<'PY'
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


def register(sub, command) -> None:
    s = command(sub, "serve", cmd_serve, "run the gateway (and the embedded engine)")
    s.add_argument("--host")
    s.add_argument("--port", type=int)
