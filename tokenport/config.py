"""Settings: defaults, then the TOML file, then environment variables."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path

from tokenport.energy.config import EnergyConfig, EnergyConfigError, energy_config

DEFAULT_MODEL_ID = "smollm2-135m-instruct"
BACKEND_KINDS = ("llamacpp", "vllm", "sglang", "openai")


class ConfigError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Waits:
    """How long each part of a request to an engine may take, in seconds. The defaults let a
    busy engine queue a request and work through a long prompt without being cut."""

    connect: float = 5.0  # a connection to the engine
    headers: float = 60.0  # the request sent -> the answer's headers (a whole answer's: `total`)
    first_token: float = 300.0  # the headers -> the first piece of the body (queue, prompt)
    idle: float = 120.0  # between two pieces of the body
    total: float = 1800.0  # the whole exchange

    def unary(self) -> Waits:
        """For a whole (non-streamed) answer: its headers come with it, when it is done."""
        return Waits(self.connect, self.total, self.total, self.idle, self.total)


@dataclass(frozen=True, slots=True)
class ClientBounds:
    """How long a client may take to send a request, and how many connections one address may
    hold ([server]; api/http_protocol.py). Answers are not bounded here: a long stream is the
    engine's time, bounded by `Waits`."""

    header_timeout_s: float = 10.0  # a request's first byte (or the connection) -> its whole headers
    body_timeout_s: float = 10.0  # the longest gap while its body arrives
    read_timeout_s: float = 60.0  # a request's first byte -> its whole body
    keepalive_timeout_s: float = 5.0  # an idle connection between requests
    max_connections_per_client: int = 1000  # per client address; 0: no cap


WAIT_KEYS = {  # config keys (in [upstream] and [[backends]]) -> Waits fields
    "connect_timeout_s": "connect",
    "headers_timeout_s": "headers",
    "first_token_timeout_s": "first_token",
    "idle_timeout_s": "idle",
    "total_timeout_s": "total",
}


@dataclass(frozen=True)
class BackendConfig:
    """An OpenAI-compatible engine reached over HTTP."""

    name: str
    url: str
    zone: str
    models: tuple[str, ...]
    kind: str = "openai"  # how to ask the engine for per-chunk token counts
    api_key: str | None = None
    context: int = 131072  # the models' context window, in tokens: bounds what a request can cost
    embeddings: tuple[str, ...] = ()  # the models (among `models`) it serves /v1/embeddings for
    weight: int = 1  # its share of the load, relative to the zone's other backends for a model
    max_inflight: int | None = None  # no more requests than this at once (None: no limit)
    waits: Waits | None = None  # its own bounds on each wait (None: the [upstream] defaults)


@dataclass(frozen=True)
class EngineConfig:
    """The embedded llama.cpp engine (xllamacpp), served on loopback."""

    enabled: bool = True
    model_id: str = DEFAULT_MODEL_ID
    model_path: str | None = None  # any GGUF; None = SmolLM2-135M-Instruct from PyPI
    model_cache: Path = field(default_factory=lambda: _cache_home() / "tokenport" / "models")
    n_ctx: int = 8192
    parallel: int = 4
    threads: int = 0  # 0 = one per core
    port: int = 0  # loopback port of the engine's HTTP server; 0 = any free port
    zone: str | None = None  # None = the default zone


@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: str
    host: str = "127.0.0.1"
    port: int = 8000
    default_zone: str = "overseas"
    max_body_bytes: int = 4 * 1024 * 1024
    admin_token: str | None = None
    default_rpm: int = 0  # per-key requests per minute; 0 = unlimited
    auth_failures_per_minute: int = 30  # per client address, then 429; 0 = no throttling
    device_challenges_per_minute: int = 600  # per client address (a factory's line), then 429; 0 = off
    usage_flush_ms: int = 200
    usage_batch_size: int = 500
    journal_fsync_ms: int = 200  # a machine crash loses at most this much of the journal
    key_refresh_ms: int = 250
    health_interval_s: float = 2.0
    shared: bool = False  # several gateway processes on one database (see docs/billing.md)
    redis_url: str | None = None  # shared mode's admission state and change broadcast in Redis
    expire_credits_every_s: float = 300.0  # post due credit expiries; 0 = leave it to the CLI
    audit_sign_every_s: float = 10.0  # sign each zone's audit tree head when it grew; 0 = off
    audit_keys_dir: Path | None = None  # the zones' signing keys; None = $TOKENPORT_HOME/keys
    log_level: str = "info"  # debug | info | warning | error (content is never logged at any level)
    retention_purge_every_s: float = 60.0  # delete expired retained records; 0 = off
    waits: Waits = field(default_factory=Waits)  # [upstream]: every backend's, unless its own
    client_bounds: ClientBounds = field(default_factory=ClientBounds)  # [server]

    @property
    def keys_dir(self) -> Path:
        return self.audit_keys_dir or self.home / "keys"

    engine: EngineConfig = field(default_factory=EngineConfig)
    backends: tuple[BackendConfig, ...] = ()
    energy: EnergyConfig = field(default_factory=EnergyConfig)
    # Model names clients may use for a served model (glob patterns allowed), e.g. Claude Code's
    # `claude-*` for the embedded model. Applied to Anthropic requests.
    model_aliases: dict[str, str] = field(default_factory=dict)


def _cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


def home_dir() -> Path:
    return Path(os.environ.get("TOKENPORT_HOME") or Path.home() / ".tokenport").expanduser()


def load_settings(config_file: str | Path | None = None) -> Settings:
    home = home_dir()
    path = Path(config_file) if config_file else home / "tokenport.toml"
    data: dict = {}
    if config_file and not path.exists():
        raise ConfigError(f"config file not found: {path}")
    if path.exists():
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
    return settings_from_dict(data, home)


def settings_from_dict(data: dict, home: Path) -> Settings:
    server = data.get("server", {})
    db = data.get("database", {})
    limits = data.get("limits", {})
    metering = data.get("metering", {})
    cluster = data.get("cluster", {})
    billing = data.get("billing", {})
    default_zone = server.get("default_zone", "overseas")
    url = os.environ.get("TOKENPORT_DATABASE_URL") or db.get("url") or f"sqlite:///{home / 'tokenport.db'}"
    engine = _engine(data.get("engine", {}))
    waits = _waits(data.get("upstream", {}), Waits(), "[upstream]")
    backends = tuple(_backend(b, default_zone, waits) for b in data.get("backends", []))
    try:
        energy = energy_config(data.get("energy", {}))
    except EnergyConfigError as exc:
        raise ConfigError(str(exc)) from None
    shared = _flag(os.environ.get("TOKENPORT_SHARED"), cluster.get("shared", False))
    redis_url = os.environ.get("TOKENPORT_REDIS_URL") or cluster.get("redis_url") or None
    if redis_url and not redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError("[cluster] redis_url must be a redis://, rediss:// or unix:// URL")
    if redis_url and not shared:
        raise ConfigError("[cluster] redis_url is for shared mode: set shared = true (or TOKENPORT_SHARED=1)")
    names = [b.name for b in backends]
    if len(set(names)) != len(names) or (engine.enabled and "embedded" in names):
        raise ConfigError("backend names must be unique (and 'embedded' is reserved)")
    return Settings(
        home=home,
        database_url=url,
        host=server.get("host", "127.0.0.1"),
        port=int(server.get("port", 8000)),
        default_zone=default_zone,
        max_body_bytes=int(server.get("max_body_bytes", 4 * 1024 * 1024)),
        admin_token=os.environ.get("TOKENPORT_ADMIN_TOKEN") or server.get("admin_token") or None,
        default_rpm=int(limits.get("default_rpm", 0)),
        waits=waits,
        client_bounds=_client_bounds(server),
        auth_failures_per_minute=int(limits.get("auth_failures_per_minute", 30)),
        device_challenges_per_minute=int(limits.get("device_challenges_per_minute", 600)),
        usage_flush_ms=int(metering.get("flush_interval_ms", 200)),
        usage_batch_size=int(metering.get("batch_size", 500)),
        journal_fsync_ms=max(1, int(metering.get("journal_fsync_ms", 200))),
        key_refresh_ms=int(metering.get("key_refresh_ms", 250)),
        health_interval_s=float(server.get("health_interval_s", 2.0)),
        shared=shared,
        redis_url=redis_url,
        expire_credits_every_s=float(billing.get("expire_credits_every_s", 300.0)),
        audit_sign_every_s=float(data.get("audit", {}).get("sign_every_s", 10.0)),
        log_level=_log_level(os.environ.get("TOKENPORT_LOG_LEVEL") or server.get("log_level") or "info"),
        retention_purge_every_s=float(data.get("retention", {}).get("purge_every_s", 60.0)),
        audit_keys_dir=Path(data["audit"]["keys_dir"]).expanduser()
        if data.get("audit", {}).get("keys_dir")
        else None,
        engine=engine,
        backends=backends,
        energy=energy,
        model_aliases=_aliases(data.get("models", {}).get("aliases"), engine),
    )


def _flag(env: str | None, default: bool) -> bool:
    if env is None or env == "":
        return bool(default)
    if env.lower() in ("1", "true", "yes", "on"):
        return True
    if env.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"expected a yes/no value, got {env!r}")


def _engine(raw: dict) -> EngineConfig:
    base = EngineConfig()
    return EngineConfig(
        enabled=bool(raw.get("enabled", True)),
        model_id=raw.get("model_id", base.model_id),
        model_path=raw.get("model_path") or None,
        model_cache=Path(raw["model_cache"]).expanduser() if raw.get("model_cache") else base.model_cache,
        n_ctx=int(raw.get("n_ctx", base.n_ctx)),
        parallel=int(raw.get("parallel", base.parallel)),
        threads=int(raw.get("threads", base.threads)),
        port=int(raw.get("port", 0)),
        zone=raw.get("zone") or None,
    )


def _seconds(raw: dict, key: str, where: str) -> float:
    """`raw[key]` as a positive number of seconds, or a ConfigError."""
    try:
        value = float(raw[key])
    except (TypeError, ValueError):
        value = 0.0
    if not value > 0:
        raise ConfigError(f"{where}: {key} must be a positive number of seconds")
    return value


def _client_bounds(server: dict) -> ClientBounds:
    timeouts = ("header_timeout_s", "body_timeout_s", "read_timeout_s", "keepalive_timeout_s")
    values: dict = {name: _seconds(server, name, "[server]") for name in timeouts if name in server}
    if "max_connections_per_client" in server:
        cap = server["max_connections_per_client"]
        if not isinstance(cap, int) or isinstance(cap, bool) or cap < 0:
            raise ConfigError("[server]: max_connections_per_client must be a whole number (0: no cap)")
        values["max_connections_per_client"] = cap
    return ClientBounds(**values)


def _waits(raw: dict, base: Waits, where: str) -> Waits:
    """`base` with the timeouts `raw` sets (positive seconds)."""
    values = {name: _seconds(raw, key, where) for key, name in WAIT_KEYS.items() if key in raw}
    return replace(base, **values) if values else base


def _backend(raw: dict, default_zone: str, waits: Waits | None = None) -> BackendConfig:
    try:
        name, url, models = raw["name"], raw["url"].rstrip("/"), tuple(raw["models"])
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"backend needs name, url and models: {raw!r}") from exc
    if (base := without_v1(url)) is not None:
        raise ConfigError(
            f"backend {name}: url {url!r} ends in /v1, but a backend's url is the engine's root "
            f"(tokenport asks it for /health and /v1/...): use url = {base!r}"
        )
    kind = raw.get("kind", "openai")
    if kind not in BACKEND_KINDS:
        raise ConfigError(f"backend {name}: kind must be one of {', '.join(BACKEND_KINDS)}")
    return BackendConfig(
        name=name,
        url=url,
        zone=raw.get("zone", default_zone),
        models=models,
        kind=kind,
        api_key=raw.get("api_key") or None,
        context=int(raw.get("context", 131072)),
        embeddings=_embeddings(name, raw.get("embeddings", ()), models),
        weight=max(1, int(raw.get("weight", 1))),
        max_inflight=int(raw["max_inflight"]) if raw.get("max_inflight") else None,
        waits=_waits(raw, waits or Waits(), f"backend {name}") if WAIT_KEYS.keys() & raw.keys() else None,
    )


def without_v1(url: str) -> str | None:
    """A backend URL given as an OpenAI `base_url` (`http://host:8000/v1`): the engine's root
    without the `/v1`; None when the URL has no such ending."""
    trimmed = url.rstrip("/")
    return trimmed[: -len("/v1")] if trimmed.endswith("/v1") else None


def _embeddings(backend: str, names: object, models: tuple[str, ...]) -> tuple[str, ...]:
    names = tuple(names)
    if any(n not in models for n in names):
        raise ConfigError(f"backend {backend}: embeddings must name some of its models")
    return names


def _log_level(value: str) -> str:
    level = str(value).lower()
    if level not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"log_level must be debug, info, warning or error, not {value!r}")
    return level


def _aliases(configured: object, engine: EngineConfig) -> dict[str, str]:
    """Configured aliases; by default any `claude-*` name means the embedded model, if it runs."""
    if configured is None:
        return {"claude-*": engine.model_id} if engine.enabled else {}
    if not isinstance(configured, dict) or not all(isinstance(v, str) for v in configured.values()):
        raise ConfigError("models.aliases must map names (or glob patterns) to model names")
    return dict(configured)
