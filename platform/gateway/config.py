"""Gateway configuration: one frozen dataclass per part, gathered in `GatewayConfig`.

Stable interface (other components build on it):

    GatewayConfig(...)                      frozen, slotted, validated in __post_init__ (ValueError
                                            names the field)
    GatewayConfig.from_mapping(dict)        from a parsed JSON/TOML document (nested sections)
    load_config(path) -> GatewayConfig      from a .json or .toml file
    default_database_url(data_dir=None)     the embedded SQLite ledger under the data dir

Environment variables are read in this module only (`env_*` functions below).
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import tomllib
from dataclasses import dataclass, field
from typing import Any, Mapping

# Environment variables, all in one place.
ENV_DATA_DIR = "MINIMAX_M1_DATA_DIR"
ENV_API_KEY = "MINIMAX_M1_API_KEY"
ENV_DATABASE = "MINIMAX_M1_GATEWAY_DATABASE"
ENV_LOG_LEVEL = "MINIMAX_M1_LOG_LEVEL"

BUDGET_PERIODS = ("hour", "day", "month")
TOKEN_ESTIMATES = ("utf8_bytes", "count_tokens")
QUOTA_STORES = ("memory", "redis")
HOOK_KINDS = ("webhook", "otel_metrics")


def env_data_dir() -> pathlib.Path:
    """$MINIMAX_M1_DATA_DIR, else $XDG_DATA_HOME/minimax-m1, else ~/.local/share/minimax-m1."""
    explicit = os.environ.get(ENV_DATA_DIR)
    if explicit:
        return pathlib.Path(explicit)
    xdg = os.environ.get("XDG_DATA_HOME") or str(pathlib.Path.home() / ".local" / "share")
    return pathlib.Path(xdg) / "minimax-m1"


def env_api_key() -> str | None:
    return os.environ.get(ENV_API_KEY) or None


def env_database_url() -> str | None:
    return os.environ.get(ENV_DATABASE) or None


def env_log_level() -> str:
    return os.environ.get(ENV_LOG_LEVEL) or "INFO"


def default_database_url(data_dir: str | os.PathLike[str] | None = None) -> str:
    """The embedded default ledger: `sqlite:///<data dir>/gateway.sqlite3`."""
    base = pathlib.Path(data_dir) if data_dir is not None else env_data_dir()
    return f"sqlite:///{base / 'gateway.sqlite3'}"


def _require(cond: bool, name: str, message: str) -> None:
    if not cond:
        raise ValueError(f"{name}: {message}")


def _non_negative(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        _require(isinstance(value, (int, float)) and value >= 0, name, f"must be >= 0, got {value!r}")


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """Server TLS from PEM files. Setting client_ca_file turns on mTLS (client certs required)."""

    cert_file: str
    key_file: str
    client_ca_file: str | None = None

    def __post_init__(self) -> None:
        for name in ("cert_file", "key_file", "client_ca_file"):
            path = getattr(self, name)
            if path is not None:
                _require(pathlib.Path(path).is_file(), f"tls.{name}", f"no such file {path!r}")


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    """Where requests go: any `minimax.m1.v1.Generation` server (Ray Serve's gRPC proxy in prod)."""

    target: str = "127.0.0.1:9000"
    # Added to every upstream call. Ray Serve routes on `application`.
    metadata: tuple[tuple[str, str], ...] = ()
    # Cap on one upstream call when the client sends no shorter deadline.
    timeout_s: float = 600.0
    # PEM CA bundle for a TLS upstream; None means plaintext.
    ca_file: str | None = None
    # How input tokens are reserved before the upstream counts them (see docs/gateway.md).
    token_estimate: str = "utf8_bytes"
    # ListModels answers are cached this long (model names and max context for validation).
    models_cache_s: float = 30.0

    def __post_init__(self) -> None:
        _require(":" in self.target, "upstream.target", f"must be host:port, got {self.target!r}")
        _require(self.timeout_s > 0, "upstream.timeout_s", f"must be > 0, got {self.timeout_s!r}")
        _require(self.token_estimate in TOKEN_ESTIMATES, "upstream.token_estimate",
                 f"must be one of {TOKEN_ESTIMATES}, got {self.token_estimate!r}")
        _non_negative(self, "models_cache_s")
        for key, _ in self.metadata:
            _require(key == key.lower() and key and not key.startswith("grpc-"), "upstream.metadata",
                     f"keys must be lower-case and not reserved, got {key!r}")


@dataclass(frozen=True, slots=True)
class QuotaLimits:
    """Per-tenant limits. 0 means unlimited for every field."""

    requests_per_minute: int = 0
    tokens_per_minute: int = 0
    max_concurrent: int = 0  # concurrent calls (unary or streaming) in flight
    max_context: int = 0  # input + max_output_tokens per request
    budget_tokens: int = 0  # input + output tokens per billing period
    budget_period: str = "month"

    def __post_init__(self) -> None:
        _non_negative(self, "requests_per_minute", "tokens_per_minute", "max_concurrent",
                      "max_context", "budget_tokens")
        _require(self.budget_period in BUDGET_PERIODS, "budget_period",
                 f"must be one of {BUDGET_PERIODS}, got {self.budget_period!r}")


@dataclass(frozen=True, slots=True)
class QuotaConfig:
    store: str = "memory"
    redis_url: str | None = None
    default: QuotaLimits = field(default_factory=QuotaLimits)
    tenants: tuple[tuple[str, QuotaLimits], ...] = ()
    # A crashed gateway's concurrency slot frees itself after this long.
    lease_s: float = 900.0

    def __post_init__(self) -> None:
        _require(self.store in QUOTA_STORES, "quotas.store", f"must be one of {QUOTA_STORES}, got {self.store!r}")
        _require(self.store != "redis" or bool(self.redis_url), "quotas.redis_url", "required when store is redis")
        _require(self.lease_s > 0, "quotas.lease_s", f"must be > 0, got {self.lease_s!r}")

    def limits_for(self, tenant: str) -> QuotaLimits:
        for name, limits in self.tenants:
            if name == tenant:
                return limits
        return self.default


@dataclass(frozen=True, slots=True)
class HookConfig:
    """One billing sink fed by the outbox."""

    kind: str
    name: str = ""
    url: str | None = None  # webhook only
    headers: tuple[tuple[str, str], ...] = ()
    timeout_s: float = 10.0
    batch_size: int = 100
    backoff_base_s: float = 0.5
    backoff_max_s: float = 60.0

    def __post_init__(self) -> None:
        _require(self.kind in HOOK_KINDS, "billing.hooks.kind", f"must be one of {HOOK_KINDS}, got {self.kind!r}")
        _require(self.kind != "webhook" or bool(self.url), "billing.hooks.url", "required for a webhook hook")
        _require(self.batch_size >= 1, "billing.hooks.batch_size", f"must be >= 1, got {self.batch_size!r}")
        _require(self.timeout_s > 0, "billing.hooks.timeout_s", f"must be > 0, got {self.timeout_s!r}")
        _non_negative(self, "backoff_base_s", "backoff_max_s")
        if not self.name:
            object.__setattr__(self, "name", self.kind)


@dataclass(frozen=True, slots=True)
class BillingConfig:
    # sqlite:///path or postgresql://... ; None means default_database_url().
    database: str | None = None
    hooks: tuple[HookConfig, ...] = ()
    # 0: the ledger records a stream's usage before each message reaches the client, so a crash
    # never leaves delivered output unbilled. > 0 batches those writes at most this often.
    progress_interval_s: float = 0.0
    # Names this gateway's open records; on restart it closes its own open records. Records of
    # other replicas are closed only once they are older than stale_after_s.
    instance_id: str = "gateway-0"
    stale_after_s: float = 3600.0
    outbox_poll_s: float = 0.2

    def __post_init__(self) -> None:
        _non_negative(self, "progress_interval_s", "stale_after_s")
        _require(self.outbox_poll_s > 0, "billing.outbox_poll_s", f"must be > 0, got {self.outbox_poll_s!r}")
        _require(bool(self.instance_id), "billing.instance_id", "must not be empty")
        names = [h.name for h in self.hooks]
        _require(len(names) == len(set(names)), "billing.hooks", f"hook names must be unique, got {names}")
        if self.database is not None:
            _require(self.database.startswith(("sqlite:///", "postgresql://", "postgres://")), "billing.database",
                     f"must be sqlite:///PATH or postgresql://..., got {self.database!r}")

    @property
    def database_url(self) -> str:
        return self.database or env_database_url() or default_database_url()


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    host: str = "127.0.0.1"
    port: int = 50051  # 0 picks a free port (read it back from the handle)
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    quotas: QuotaConfig = field(default_factory=QuotaConfig)
    billing: BillingConfig = field(default_factory=BillingConfig)
    tls: TlsConfig | None = None
    # Largest gRPC message accepted from a client; bigger ones get RESOURCE_EXHAUSTED from gRPC.
    max_message_bytes: int = 4 * 1024 * 1024
    # Largest `input` accepted (UTF-8 bytes); bigger gives OUT_OF_RANGE naming the field.
    max_input_bytes: int = 1024 * 1024
    # Resolved API keys are cached this long, so a revocation takes effect within it.
    auth_cache_s: float = 2.0

    def __post_init__(self) -> None:
        _require(0 <= self.port <= 65535, "port", f"must be in [0, 65535], got {self.port!r}")
        _require(self.max_message_bytes >= 1024, "max_message_bytes", f"must be >= 1024, got {self.max_message_bytes!r}")
        _require(1 <= self.max_input_bytes <= self.max_message_bytes, "max_input_bytes",
                 f"must be in [1, max_message_bytes={self.max_message_bytes}], got {self.max_input_bytes!r}")
        _non_negative(self, "auth_cache_s")
        _require(self.quotas.lease_s >= self.upstream.timeout_s, "quotas.lease_s",
                 f"must be >= upstream.timeout_s ({self.upstream.timeout_s}) so a live call keeps its slot")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> "GatewayConfig":
        """Build from nested sections: upstream, quotas (default, tenants), billing (hooks), tls."""
        data = dict(data)
        _reject_unknown(cls, data, "")
        if "upstream" in data:
            up = dict(data["upstream"])
            _reject_unknown(UpstreamConfig, up, "upstream.")
            if "metadata" in up:
                up["metadata"] = _pairs(up["metadata"])
            data["upstream"] = UpstreamConfig(**up)
        if "quotas" in data:
            q = dict(data["quotas"])
            _reject_unknown(QuotaConfig, q, "quotas.")
            if "default" in q:
                q["default"] = _limits(q["default"], "quotas.default.")
            if "tenants" in q:
                q["tenants"] = tuple((name, _limits(v, f"quotas.tenants.{name}.")) for name, v in dict(q["tenants"]).items())
            data["quotas"] = QuotaConfig(**q)
        if "billing" in data:
            b = dict(data["billing"])
            _reject_unknown(BillingConfig, b, "billing.")
            hooks = []
            for h in b.get("hooks", ()):
                h = dict(h)
                _reject_unknown(HookConfig, h, "billing.hooks.")
                if "headers" in h:
                    h["headers"] = _pairs(h["headers"])
                hooks.append(HookConfig(**h))
            b["hooks"] = tuple(hooks)
            data["billing"] = BillingConfig(**b)
        if data.get("tls") is not None:
            t = dict(data["tls"])
            _reject_unknown(TlsConfig, t, "tls.")
            data["tls"] = TlsConfig(**t)
        return cls(**data)

    def replace(self, **changes: Any) -> "GatewayConfig":
        return dataclasses.replace(self, **changes)


def _reject_unknown(cls: type, data: Mapping[str, Any], prefix: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{prefix}{unknown[0]}: unknown setting (known: {', '.join(sorted(known))})")


def _limits(value: Mapping[str, Any], prefix: str) -> QuotaLimits:
    _reject_unknown(QuotaLimits, value, prefix)
    return QuotaLimits(**value)


def _pairs(value: Any) -> tuple[tuple[str, str], ...]:
    items = value.items() if isinstance(value, Mapping) else value
    return tuple((str(k), str(v)) for k, v in items)


def load_config(path: str | os.PathLike[str]) -> GatewayConfig:
    """Read a .toml or .json config file."""
    p = pathlib.Path(path)
    text = p.read_text()
    data = tomllib.loads(text) if p.suffix == ".toml" else json.loads(text)
    return GatewayConfig.from_mapping(data)
