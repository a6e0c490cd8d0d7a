"""Engines registered at run time."""

from __future__ import annotations

import argparse
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any

from tokenport.cli.common import (
    _print,
    _service,
    _settings,
)


def cmd_backends_add(args: argparse.Namespace) -> int:
    from tokenport.clock import SystemClock
    from tokenport.config import BACKEND_KINDS, BackendConfig, without_v1
    from tokenport.store.backends import BackendExists, BackendStore
    from tokenport.tenancy.keys import NAME_RE
    from tokenport.tenancy.service import Conflict, InvalidInput

    svc, engine = _service(args)
    settings = _settings(args)
    url = args.url.rstrip("/")
    if (base := without_v1(url)) is not None:
        print(
            f"note: --url {args.url} ends in /v1; a backend's URL is the engine's root (tokenport asks "
            f"it for /health and /v1/...): registering {base}",
            file=sys.stderr,
        )
        url = base
    models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    embeddings = tuple(m.strip() for m in (args.embeddings or "").split(",") if m.strip())
    zone = args.zone or settings.default_zone
    if zone == settings.default_zone:  # as `tenants create`: the default zone exists once named
        svc.ensure_zones({zone})
    problems = [
        "name: 1-64 letters, digits, '.', '_' or '-'"
        if not NAME_RE.fullmatch(args.name) or len(args.name) > 64
        else "",
        "the name is a configured backend's"
        if args.name in {b.name for b in settings.backends} | {"embedded"}
        else "",
        "--url must start with http:// or https://" if not url.startswith(("http://", "https://")) else "",
        f"there is no zone {zone!r}; create it first: tokenport zones create {zone}"
        if not svc.store.zone_exists(zone)
        else "",
        "--models must name at least one model" if not models else "",
        "--embeddings must name some of --models" if any(e not in models for e in embeddings) else "",
        f"--kind must be one of {', '.join(BACKEND_KINDS)}" if args.kind not in BACKEND_KINDS else "",
        *(f"--{flag} must be a positive number of seconds" for flag, v in _timeouts(args) if not v > 0),
    ]
    if any(problems):
        raise InvalidInput("; ".join(p for p in problems if p))
    cfg = BackendConfig(
        args.name,
        url,
        zone,
        models,
        args.kind,
        None,
        args.context,
        embeddings,
        max(1, args.weight),
        args.max_inflight,
    )
    try:
        waits = {TIMEOUT_FLAGS[flag]: v for flag, v in _timeouts(args)}
        BackendStore(engine).add(cfg, args.api_key_env, SystemClock().now(), waits)
    except BackendExists as exc:
        raise Conflict(str(exc)) from None
    view = {"name": cfg.name, "url": cfg.url, "zone": zone, "models": list(models), "kind": cfg.kind}
    _print(view, args.json, [f"added backend {cfg.name} ({cfg.url}) in zone {zone}: {', '.join(models)}"])
    return 0


TIMEOUT_FLAGS = {  # as the [[backends]] keys (config.WAIT_KEYS); unset: [upstream]'s
    "connect-timeout": "connect",
    "headers-timeout": "headers",
    "first-token-timeout": "first_token",
    "idle-timeout": "idle",
    "total-timeout": "total",
}


def _timeouts(args: argparse.Namespace) -> list[tuple[str, float]]:
    given = ((flag, getattr(args, flag.replace("-", "_"))) for flag in TIMEOUT_FLAGS)
    return [(flag, v) for flag, v in given if v is not None]


def cmd_backends_list(args: argparse.Namespace) -> int:
    from tokenport.store.backends import BackendStore

    settings = _settings(args)
    _, engine = _service(args)
    registered = BackendStore(engine, settings.waits).load()
    items = [
        {
            "name": b.name,
            "url": b.url,
            "zone": b.zone,
            "models": list(b.models),
            "kind": b.kind,
            "source": source,
            "timeouts_s": asdict(b.waits or settings.waits),
        }
        for source, group in (("config", settings.backends), ("registered", registered))
        for b in group
    ]
    if not args.no_probe:
        with ThreadPoolExecutor(max_workers=8) as pool:
            for b, health in zip(items, pool.map(lambda b: probe(b["url"]), items), strict=True):
                b["health"] = health
    lines = [
        f"{b['name']:16} {b['zone']:12} {b['kind']:9} {b['url']:32} {','.join(b['models'])} ({b['source']})"
        + (f"  {b['health']}" if "health" in b else "")
        for b in items
    ]
    _print(items, args.json, lines or ["no backends (besides the embedded engine)"])
    return 0


PROBE_TIMEOUT_S = 2.0  # as the gateway's own health checks
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # as the gateway: no proxy


def probe(url: str) -> str:
    """`healthy`, or why the gateway would find the backend unhealthy: what GET /health did."""
    try:
        with _DIRECT.open(url + "/health", timeout=PROBE_TIMEOUT_S) as r:
            return "healthy" if r.status == 200 else f"unhealthy: GET /health answered {r.status}"
    except urllib.error.HTTPError as exc:
        return f"unhealthy: GET /health answered {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return f"unreachable: {_why(getattr(exc, 'reason', exc))}"


def _why(reason: object) -> str:
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, TimeoutError):
        return f"no answer within {PROBE_TIMEOUT_S:g} s"
    if isinstance(reason, socket.gaierror):
        return "cannot resolve the host name"
    return reason if isinstance(reason, str) else type(reason).__name__


def cmd_backends_remove(args: argparse.Namespace) -> int:
    from tokenport.clock import SystemClock
    from tokenport.store.backends import BackendStore
    from tokenport.tenancy.service import NotFound

    _, engine = _service(args)
    if not BackendStore(engine).remove(args.name, SystemClock().now()):
        raise NotFound(f"no registered backend named {args.name!r} (configured ones live in the file)")
    print(f"removed backend {args.name}")
    return 0


def register(sub: Any, command: Callable[..., argparse.ArgumentParser]) -> None:
    backends = sub.add_parser("backends", help="engines registered at run time").add_subparsers(
        dest="sub", required=True
    )
    c = command(
        backends,
        "add",
        cmd_backends_add,
        "register an OpenAI-compatible engine (vLLM, SGLang, ...)",
        creates=True,
    )
    c.add_argument("name")
    c.add_argument("--url", required=True)
    c.add_argument("--zone", help="default: the default zone; fixed for good")
    c.add_argument("--models", required=True, help="comma-separated model ids")
    c.add_argument("--kind", default="openai", help="vllm | sglang | llamacpp | openai")
    c.add_argument("--weight", type=int, default=1)
    c.add_argument("--max-inflight", type=int)
    c.add_argument("--context", type=int, default=131072)
    c.add_argument("--embeddings", help="comma-separated models (among --models) it embeds with")
    c.add_argument("--api-key-env", help="the environment variable holding its API key")
    for flag in TIMEOUT_FLAGS:
        c.add_argument(f"--{flag}", type=float, metavar="S", help="seconds (default: [upstream]'s)")
    c.add_argument("--json", action="store_true")
    c = command(
        backends, "list", cmd_backends_list, "configured and registered backends, and their GET /health"
    )
    c.add_argument("--no-probe", action="store_true", help="do not ask each backend for /health")
    c.add_argument("--json", action="store_true")
    c = command(backends, "remove", cmd_backends_remove, "remove a registered backend")
    c.add_argument("name")
