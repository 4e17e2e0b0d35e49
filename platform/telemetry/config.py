"""Telemetry settings: one frozen dataclass, read from the environment in this module only.

    TelemetryConfig.from_env(service="gateway")    # what a process uses unless told otherwise

Environment variables (the standard OpenTelemetry ones where they exist):
    OTEL_EXPORTER_OTLP_ENDPOINT    OTLP/gRPC collector, e.g. http://otel-collector:4317; unset = no push
    OTEL_EXPORTER_OTLP_INSECURE    "true" for a plaintext collector behind an https:// URL
    OTEL_SERVICE_NAME              service.name; default minimax-m1-<service>
    OTEL_METRIC_EXPORT_INTERVAL    ms between OTLP metric pushes (default 10000)
    OTEL_METRICS_EXEMPLAR_FILTER   always_off (our default: exemplars cost every histogram record on
                                   the request path), trace_based (OpenTelemetry's default) or always_on
    POD_NAME / HOSTNAME            k8s.pod.name and service.instance.id (with the process id)
    POD_NAMESPACE                  k8s.namespace.name
    MINIMAX_M1_METRICS_PORT        Prometheus scrape port; unset or empty = no endpoint, 0 = any free port
    MINIMAX_M1_METRICS_HOST        address the scrape endpoint binds (default 0.0.0.0)
    MINIMAX_M1_TRACE_PROMPTS       "true" puts request input text on engine spans (off by default)
    MINIMAX_M1_EXPERT_LOAD_EVERY   collect expert routing every N engine steps (default 32; 1 = every
                                   step, exact; 0 = off). Sampled counts are scaled by N.
    MINIMAX_M1_SPAN_SIDECAR        "false" exports spans from the serving process itself; by default a
                                   child process encodes and sends them (span_sidecar.py)
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass, replace
from typing import Mapping

ENV_OTLP_ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"
ENV_OTLP_INSECURE = "OTEL_EXPORTER_OTLP_INSECURE"
ENV_SERVICE_NAME = "OTEL_SERVICE_NAME"
ENV_METRIC_INTERVAL = "OTEL_METRIC_EXPORT_INTERVAL"
ENV_EXEMPLAR_FILTER = "OTEL_METRICS_EXEMPLAR_FILTER"
EXEMPLAR_FILTERS = ("always_off", "trace_based", "always_on")
ENV_POD_NAME = "POD_NAME"
ENV_POD_NAMESPACE = "POD_NAMESPACE"
ENV_HOSTNAME = "HOSTNAME"
ENV_METRICS_PORT = "MINIMAX_M1_METRICS_PORT"
ENV_METRICS_HOST = "MINIMAX_M1_METRICS_HOST"
ENV_TRACE_PROMPTS = "MINIMAX_M1_TRACE_PROMPTS"
ENV_EXPERT_LOAD_EVERY = "MINIMAX_M1_EXPERT_LOAD_EVERY"
ENV_SPAN_SIDECAR = "MINIMAX_M1_SPAN_SIDECAR"

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("minimax-m1")
    except Exception:  # running from a tree that was never installed
        return "0+unknown"


@dataclass(frozen=True, slots=True)
class TelemetryConfig:
    service: str  # the component: gateway, engine, ...
    service_name: str = ""  # "" = minimax-m1-<service>
    service_version: str = ""  # "" = the installed distribution's version
    pod_name: str = ""
    namespace: str = ""
    instance_id: str = ""  # "" = <pod or host>-<pid>
    otlp_endpoint: str = ""  # "" = no OTLP export
    otlp_insecure: bool | None = None  # None = decided by the endpoint's scheme
    metric_export_interval_ms: int = 10_000
    prometheus_port: int | None = None  # None = no scrape endpoint; 0 = any free port
    prometheus_host: str = "0.0.0.0"
    record_prompts: bool = False
    exemplar_filter: str = "always_off"  # one of EXEMPLAR_FILTERS
    expert_load_every: int = 32  # collecting routing costs the step a few percent on small models; 1 in 32 estimates it well
    span_sidecar: bool = True  # OTLP span export from a child process (span_sidecar.py); False = in process

    def __post_init__(self) -> None:
        if not self.service:
            raise ValueError("telemetry.service: must name the component, e.g. 'gateway'")
        port = self.prometheus_port
        if port is not None and (not isinstance(port, int) or not 0 <= port <= 65535):
            raise ValueError(f"telemetry.prometheus_port: must be in [0, 65535] or None, got {port!r}")
        if self.metric_export_interval_ms < 1:
            raise ValueError(f"telemetry.metric_export_interval_ms: must be >= 1, got {self.metric_export_interval_ms}")
        if self.expert_load_every < 0:
            raise ValueError(f"telemetry.expert_load_every: must be >= 0, got {self.expert_load_every}")
        if self.exemplar_filter not in EXEMPLAR_FILTERS:
            raise ValueError(f"telemetry.exemplar_filter ({ENV_EXEMPLAR_FILTER}): must be one of "
                             f"{', '.join(EXEMPLAR_FILTERS)}, got {self.exemplar_filter!r}")

    @classmethod
    def from_env(cls, service: str, environ: Mapping[str, str] | None = None, **overrides) -> "TelemetryConfig":
        env = os.environ if environ is None else environ
        port_text = env.get(ENV_METRICS_PORT, "").strip()
        try:
            port = int(port_text) if port_text else None
            interval = int(env.get(ENV_METRIC_INTERVAL, "") or 10_000)
            every = int(env.get(ENV_EXPERT_LOAD_EVERY, "") or 32)
        except ValueError as exc:
            raise ValueError(f"telemetry environment: {exc}") from None
        insecure = env.get(ENV_OTLP_INSECURE, "").strip().lower()
        sidecar = env.get(ENV_SPAN_SIDECAR, "").strip().lower()
        if sidecar and sidecar not in _TRUE + _FALSE:
            raise ValueError(f"telemetry environment: {ENV_SPAN_SIDECAR} must be true or false, got {sidecar!r}")
        config = cls(
            service=service,
            service_name=env.get(ENV_SERVICE_NAME, ""),
            pod_name=env.get(ENV_POD_NAME, ""),
            namespace=env.get(ENV_POD_NAMESPACE, ""),
            otlp_endpoint=env.get(ENV_OTLP_ENDPOINT, "").strip(),
            otlp_insecure=(insecure in _TRUE) if insecure else None,
            metric_export_interval_ms=interval,
            prometheus_port=port,
            prometheus_host=env.get(ENV_METRICS_HOST, "") or "0.0.0.0",
            record_prompts=env.get(ENV_TRACE_PROMPTS, "").strip().lower() in _TRUE,
            exemplar_filter=env.get(ENV_EXEMPLAR_FILTER, "").strip().lower() or "always_off",
            expert_load_every=every,
            span_sidecar=sidecar not in _FALSE,
        )
        return replace(config, **overrides) if overrides else config

    def resource_attributes(self) -> dict[str, str]:
        """service.name/version/instance.id plus the pod's, as OpenTelemetry resource attributes."""
        host = os.environ.get(ENV_HOSTNAME) or socket.gethostname()
        pod = self.pod_name
        attrs = {
            "service.name": self.service_name or f"minimax-m1-{self.service}",
            "service.version": self.service_version or _version(),
            "service.namespace": "minimax-m1",
            "service.instance.id": self.instance_id or f"{pod or host}-{os.getpid()}",
            "minimax_m1.component": self.service,
            "host.name": host,
        }
        if pod:
            attrs["k8s.pod.name"] = pod
        if self.namespace:
            attrs["k8s.namespace.name"] = self.namespace
        return attrs


__all__ = ["TelemetryConfig"]
