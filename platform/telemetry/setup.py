"""One Telemetry per process: tracer and meter providers, OTLP export and a Prometheus endpoint.

    telemetry = setup_telemetry(TelemetryConfig.from_env("gateway", prometheus_port=9464))
    telemetry.tracer("minimax_m1.gateway")     # tracers and meters come from its own providers
    telemetry.prometheus_port                  # the bound port (the config may say 0)
    telemetry.shutdown()                       # flush and stop exporters and the endpoint

`setup_telemetry` installs the result as the process's telemetry (`current()`), which the gateway
and engine hooks use unless given one. Before any setup, `current()` is a no-op telemetry, so the
hooks cost next to nothing in a process that never asked for telemetry. Unlike OpenTelemetry's own
global providers it can be replaced (`install`), which tests need; `setup_telemetry` also sets the
OpenTelemetry globals once, for libraries that read them.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Sequence

from opentelemetry import metrics, trace

from minimax_m1.telemetry.config import TelemetryConfig

log = logging.getLogger(__name__)

# Resource attributes that become labels on every Prometheus series (the rest go to target_info).
_PROMETHEUS_RESOURCE_LABELS = frozenset({"service.name", "k8s.pod.name"})


@dataclass(eq=False)
class Telemetry:
    config: TelemetryConfig
    tracer_provider: Any
    meter_provider: Any
    enabled: bool = True
    prometheus_port: int | None = None
    span_processors: tuple = ()  # the tracer provider's processors (FinishedSpans hands spans to them)
    metric_readers: tuple = ()  # the meter provider's readers
    _http: Any = None  # (WSGIServer, thread) of the scrape endpoint
    _hooks: dict[str, Any] = field(default_factory=dict)  # per-component hook objects, built once
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def tracer(self, name: str):
        return self.tracer_provider.get_tracer(name, self.config.resource_attributes()["service.version"])

    def meter(self, name: str):
        return self.meter_provider.get_meter(name)

    def component(self, key: str, build):
        """The hook object `key` for this telemetry, built on first use (instruments exist once)."""
        with self._lock:
            obj = self._hooks.get(key)
            if obj is None:
                obj = self._hooks[key] = build(self)
            return obj

    def force_flush(self, timeout_ms: int = 10_000) -> None:
        if self.enabled:
            self.tracer_provider.force_flush(timeout_ms)
            self.meter_provider.force_flush(timeout_ms)

    def shutdown(self) -> None:
        if self._http is not None:
            server, thread = self._http
            server.shutdown()
            server.server_close()
            thread.join(5)
            self._http = None
        if self.enabled:
            self.tracer_provider.shutdown()
            self.meter_provider.shutdown()
        if current() is self:
            install(None)


def _noop() -> Telemetry:
    return Telemetry(TelemetryConfig(service="noop", expert_load_every=0), trace.NoOpTracerProvider(),
                     metrics.NoOpMeterProvider(), enabled=False)


_NOOP = _noop()
_installed: list[Telemetry] = [_NOOP]  # one slot: the process's telemetry (see the module doc)


def current() -> Telemetry:
    return _installed[0]


def install(telemetry: Telemetry | None) -> None:
    """Make `telemetry` the process's telemetry; None goes back to the no-op one."""
    _installed[0] = telemetry or _NOOP


def _otlp_kwargs(config: TelemetryConfig) -> dict[str, Any]:
    kw: dict[str, Any] = {"endpoint": config.otlp_endpoint}
    if config.otlp_insecure is not None:
        kw["insecure"] = config.otlp_insecure
    return kw


def _start_prometheus(config: TelemetryConfig, registry) -> tuple[Any, int]:
    from prometheus_client import start_http_server

    server, thread = start_http_server(config.prometheus_port, addr=config.prometheus_host, registry=registry)
    return (server, thread), server.server_address[1]


def setup_telemetry(config: TelemetryConfig, *, span_exporters: Sequence[Any] = (), metric_readers: Sequence[Any] = (),
                    simple_spans: bool = False, install_as_current: bool = True) -> Telemetry:
    """Build the providers for this process from `config`.

    - OTLP/gRPC span and metric exporters when config.otlp_endpoint is set (spans from a child
      process unless config.span_sidecar is off: minimax_m1.telemetry.span_sidecar);
    - a Prometheus endpoint on config.prometheus_port when it is not None (its own registry, so
      two telemetries in one process never mix series); with OTLP too, one metric reader serves
      both (minimax_m1.telemetry.metric_reader);
    - extra span exporters and metric readers (tests pass in-memory ones). Spans go through a
      batch processor unless `simple_spans` (export at span end, for tests).
    """
    from opentelemetry.sdk.metrics import (AlwaysOffExemplarFilter, AlwaysOnExemplarFilter, MeterProvider,
                                           TraceBasedExemplarFilter)
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    readers = list(metric_readers)
    http, port, registry = None, None, None
    if config.prometheus_port is not None:  # first: a taken port fails before anything else starts
        from prometheus_client import CollectorRegistry

        registry = CollectorRegistry()
        http, port = _start_prometheus(config, registry)
        log.info("Prometheus metrics on %s:%d/metrics", config.prometheus_host, port)
    metric_exporter = None
    if config.otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        metric_exporter = OTLPMetricExporter(**_otlp_kwargs(config))
    if registry is not None:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader

        from minimax_m1.telemetry.metric_reader import PrometheusOtlpReader, shares_a_reader

        prometheus = {"registry": registry, "resource_attribute_filter": _PROMETHEUS_RESOURCE_LABELS.__contains__}
        if metric_exporter is not None and shares_a_reader(metric_exporter):
            # one reader for both exports: every record is aggregated once, not once per export
            readers.append(PrometheusOtlpReader(metric_exporter, config.metric_export_interval_ms, **prometheus))
            metric_exporter = None
        else:
            readers.append(PrometheusMetricReader(**prometheus))
    if metric_exporter is not None:
        readers.append(PeriodicExportingMetricReader(metric_exporter, config.metric_export_interval_ms))
    resource = Resource.create(config.resource_attributes())
    tracer_provider = TracerProvider(resource=resource)
    exporters, sidecar = list(span_exporters), []
    if config.otlp_endpoint and config.span_sidecar and not simple_spans:  # as deployed: a child process exports
        from minimax_m1.telemetry.span_sidecar import SidecarSpanProcessor

        sidecar.append(SidecarSpanProcessor(resource, config.otlp_endpoint, config.otlp_insecure))
    elif config.otlp_endpoint:
        from minimax_m1.telemetry.otlp_spans import OTLPSpanBytesExporter

        exporters.append(OTLPSpanBytesExporter(**_otlp_kwargs(config)))
    processors = tuple([SimpleSpanProcessor(e) if simple_spans else BatchSpanProcessor(e) for e in exporters] + sidecar)
    for processor in processors:
        tracer_provider.add_span_processor(processor)
    exemplars = {"always_off": AlwaysOffExemplarFilter, "trace_based": TraceBasedExemplarFilter,
                 "always_on": AlwaysOnExemplarFilter}[config.exemplar_filter]()
    meter_provider = MeterProvider(resource=resource, metric_readers=readers, exemplar_filter=exemplars)
    telemetry = Telemetry(config, tracer_provider, meter_provider, prometheus_port=port, span_processors=processors,
                          metric_readers=tuple(readers), _http=http)
    if install_as_current:
        install(telemetry)
        _set_otel_globals_once(telemetry)
    return telemetry


_globals_set = threading.Event()


def _set_otel_globals_once(telemetry: Telemetry) -> None:
    # OpenTelemetry refuses to replace its globals; only the first real setup of a process sets them.
    if not _globals_set.is_set():
        _globals_set.set()
        trace.set_tracer_provider(telemetry.tracer_provider)
        metrics.set_meter_provider(telemetry.meter_provider)


def ensure_telemetry(service: str) -> Telemetry:
    """The process's telemetry; set up from the environment first if none is installed and the
    environment asks for an export (OTLP endpoint or metrics port). Used by the engine replica,
    whose process Ray starts."""
    installed = current()
    if installed.enabled:
        return installed
    config = TelemetryConfig.from_env(service)
    if not config.otlp_endpoint and config.prometheus_port is None:
        return installed
    try:
        return setup_telemetry(config)
    except OSError as exc:  # e.g. the metrics port is taken by another replica on this pod
        log.warning("telemetry: no Prometheus endpoint (%s); continuing with OTLP only", exc)
        return setup_telemetry(TelemetryConfig.from_env(service, prometheus_port=None))


__all__ = ["Telemetry", "setup_telemetry", "current", "install", "ensure_telemetry"]
