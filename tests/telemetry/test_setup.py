"""Telemetry setup: configuration, resource attributes, trace-context helpers, the Prometheus
endpoint and the no-op default."""
from __future__ import annotations

import urllib.request

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from minimax_m1.telemetry import (TelemetryConfig, current, extract_context, inject_metadata, install, setup_telemetry,
                                  with_trace_context)
from minimax_m1.telemetry import names
from minimax_m1.telemetry.gateway import gateway_telemetry


def test_config_from_env_reads_the_standard_variables():
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317", "POD_NAME": "gw-7f9c", "POD_NAMESPACE": "llm",
           "MINIMAX_M1_METRICS_PORT": "9464", "MINIMAX_M1_TRACE_PROMPTS": "true", "OTEL_METRIC_EXPORT_INTERVAL": "5000"}
    config = TelemetryConfig.from_env("gateway", env)
    assert config.otlp_endpoint == "http://collector:4317" and config.prometheus_port == 9464
    assert config.record_prompts and config.metric_export_interval_ms == 5000
    attrs = config.resource_attributes()
    assert attrs["service.name"] == "minimax-m1-gateway"
    assert attrs["k8s.pod.name"] == "gw-7f9c" and attrs["k8s.namespace.name"] == "llm"
    assert attrs["service.instance.id"].startswith("gw-7f9c-") and attrs["service.version"]
    quiet = TelemetryConfig.from_env("engine", {})
    assert quiet.prometheus_port is None and not quiet.otlp_endpoint and not quiet.record_prompts
    assert TelemetryConfig.from_env("engine", {"OTEL_SERVICE_NAME": "x"}).resource_attributes()["service.name"] == "x"


@pytest.mark.parametrize("kw, field", [(dict(prometheus_port=70000), "prometheus_port"),
                                       (dict(expert_load_every=-1), "expert_load_every"),
                                       (dict(metric_export_interval_ms=0), "metric_export_interval_ms")])
def test_config_rejects_bad_values_naming_the_field(kw, field):
    with pytest.raises(ValueError, match=field):
        TelemetryConfig(service="gateway", **kw)
    with pytest.raises(ValueError, match="MINIMAX_M1|invalid literal"):
        TelemetryConfig.from_env("gateway", {"MINIMAX_M1_METRICS_PORT": "nine"})


def test_trace_context_round_trips_through_grpc_metadata():
    tracer = TracerProvider().get_tracer("t")
    assert inject_metadata() == () and with_trace_context((("a", "1"),)) == (("a", "1"),), "nothing without a span"
    with tracer.start_as_current_span("parent") as span:
        md = with_trace_context((("authorization", "Bearer k"), ("traceparent", "00-stale-stale-01")))
    keys = [k for k, _ in md]
    assert keys.count("traceparent") == 1 and ("authorization", "Bearer k") in md
    parent = trace.get_current_span(extract_context(md)).get_span_context()
    assert parent.trace_id == span.get_span_context().trace_id and parent.span_id == span.get_span_context().span_id
    assert parent.is_remote
    as_bytes = [(k, v.encode()) for k, v in md]
    assert trace.get_current_span(extract_context(as_bytes)).get_span_context().span_id == parent.span_id
    assert not trace.get_current_span(extract_context([("traceparent", "garbage")])).get_span_context().is_valid
    assert not trace.get_current_span(extract_context(None)).get_span_context().is_valid


def test_span_context_metadata_is_what_the_propagator_sends():
    from opentelemetry.trace import INVALID_SPAN_CONTEXT, NonRecordingSpan, SpanContext, TraceFlags, TraceState
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    from minimax_m1.telemetry.propagation import TRACE_KEYS, with_span_context

    def propagator_sends(metadata, ctx):  # OpenTelemetry's W3C propagator, the reference
        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(carrier, trace.set_span_in_context(NonRecordingSpan(ctx)))
        return tuple(p for p in metadata if p[0] not in TRACE_KEYS) + tuple(carrier.items()) if carrier else metadata

    base = (("authorization", "Bearer k"), ("traceparent", "00-stale-stale-01"), ("tracestate", "old=1"))
    contexts = [SpanContext(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, False, TraceFlags(1)),
                SpanContext(1, 2, False, TraceFlags(0)),  # unsampled: still propagated, flags 00
                SpanContext((1 << 128) - 1, (1 << 64) - 1, True, TraceFlags(1), TraceState([("vendor", "v1"), ("b", "2")])),
                INVALID_SPAN_CONTEXT]
    for ctx in contexts:
        expected = propagator_sends(base, ctx)
        assert with_span_context(base, ctx) == expected, ctx
        assert with_trace_context(base, trace.set_span_in_context(NonRecordingSpan(ctx))) == expected, ctx
    assert [k for k, _ in with_span_context(base, contexts[2])] == ["authorization", "traceparent", "tracestate"]


def test_noop_until_set_up():
    install(None)
    assert not current().enabled
    tel = gateway_telemetry()
    md = (("k", "v"),)
    assert tel.outgoing(md) is md, "no trace context work without telemetry"


def test_prometheus_endpoint_serves_instruments_with_service_labels():
    config = TelemetryConfig(service="engine", prometheus_port=0, prometheus_host="127.0.0.1", pod_name="engine-0")
    tel = setup_telemetry(config)
    try:
        assert current() is tel and tel.prometheus_port
        meter = tel.meter("minimax_m1.engine")
        names.create(meter, names.TIME_TO_FIRST_TOKEN).record(0.03, {names.REQUEST_MODEL: "tiny"})
        names.create(meter, names.ENGINE_TOKENS).add(5, {names.TOKEN_TYPE: "output"})
        names.create(meter, names.QUEUE_DEPTH, [lambda options: [__import__("opentelemetry.metrics").metrics.Observation(3)]])
        text = urllib.request.urlopen(f"http://127.0.0.1:{tel.prometheus_port}/metrics", timeout=5).read().decode()
    finally:
        tel.shutdown()
    assert not current().enabled, "shutdown uninstalls"
    lines = [l for l in text.splitlines() if not l.startswith("#")]
    ttft = [l for l in lines if l.startswith(names.TIME_TO_FIRST_TOKEN.prometheus + "_count")]
    assert len(ttft) == 1 and ttft[0].endswith(" 1.0") and 'gen_ai_request_model="tiny"' in ttft[0]
    assert 'service_name="minimax-m1-engine"' in ttft[0] and 'k8s_pod_name="engine-0"' in ttft[0]
    assert any(l.startswith(names.ENGINE_TOKENS.prometheus + "{") and l.endswith(" 5.0") for l in lines)
    assert any(l.startswith(names.QUEUE_DEPTH.prometheus + "{") and l.endswith(" 3.0") for l in lines)
    target = [l for l in lines if l.startswith("target_info")]
    assert target and 'service_version="' in target[0] and 'service_instance_id="engine-0-' in target[0]


def test_prometheus_port_in_use_is_a_clear_error():
    first = setup_telemetry(TelemetryConfig(service="a", prometheus_port=0, prometheus_host="127.0.0.1"),
                            install_as_current=False)
    try:
        with pytest.raises(OSError):
            setup_telemetry(TelemetryConfig(service="b", prometheus_port=first.prometheus_port,
                                            prometheus_host="127.0.0.1"), install_as_current=False)
    finally:
        first.shutdown()


def test_instrument_names_are_unique_and_follow_the_conventions():
    seen = [i.name for i in names.ALL]
    assert len(seen) == len(set(seen))
    assert {"gen_ai.server.time_to_first_token", "gen_ai.server.time_per_output_token",
            "gen_ai.server.request.duration"} <= set(seen)
    from opentelemetry.semconv._incubating.metrics import gen_ai_metrics as semconv

    assert names.TIME_TO_FIRST_TOKEN.name == semconv.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN
    assert names.TIME_PER_OUTPUT_TOKEN.name == semconv.GEN_AI_SERVER_TIME_PER_OUTPUT_TOKEN
    assert names.REQUEST_DURATION.name == semconv.GEN_AI_SERVER_REQUEST_DURATION


def test_prometheus_names_match_what_the_exporter_writes():
    from opentelemetry.metrics import Observation

    tel = setup_telemetry(TelemetryConfig(service="engine", prometheus_port=0, prometheus_host="127.0.0.1"),
                          install_as_current=False)
    try:
        meter = tel.meter("t")
        for inst in names.ALL:
            made = names.create(meter, inst, [lambda options: [Observation(1)]])
            if inst.kind == "counter":
                made.add(1)
            elif inst.kind == "histogram":
                made.record(0.5)
        text = urllib.request.urlopen(f"http://127.0.0.1:{tel.prometheus_port}/metrics", timeout=5).read().decode()
    finally:
        tel.shutdown()
    series = {line.split("{")[0] for line in text.splitlines() if line and not line.startswith("#")}
    for inst in names.ALL:
        wanted = inst.prometheus + ("_count" if inst.kind == "histogram" else "")
        assert wanted in series, (inst.name, wanted)
