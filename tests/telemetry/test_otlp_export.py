"""OTLP/gRPC export to a real receiver (an in-test server implementing the opentelemetry-proto
collector services): resource attributes, spans with their parents, metric points."""
from __future__ import annotations

import pytest

from minimax_m1.telemetry import TelemetryConfig, ensure_telemetry, install, setup_telemetry
from minimax_m1.telemetry import names
from tests.telemetry.otlp_receiver import OtlpReceiver


@pytest.fixture
def receiver():
    r = OtlpReceiver().start()
    yield r
    r.stop()


def test_spans_and_metrics_reach_the_receiver(receiver):
    config = TelemetryConfig(service="gateway", otlp_endpoint=receiver.endpoint, otlp_insecure=True,
                             pod_name="gateway-abc", metric_export_interval_ms=200)
    tel = setup_telemetry(config, install_as_current=False)
    tracer = tel.tracer("minimax_m1.gateway")
    with tracer.start_as_current_span("outer"):
        with tracer.start_as_current_span("inner") as inner:
            inner.set_attribute("rpc.method", "Generate")
    names.create(tel.meter("minimax_m1.gateway"), names.GATEWAY_REQUESTS).add(2, {names.RPC_STATUS: "OK"})
    tel.force_flush()
    tel.shutdown()

    spans = {s.name: s for s in receiver.spans()}
    assert set(spans) == {"outer", "inner"}
    assert spans["inner"].parent_span_id == spans["outer"].span_id and spans["inner"].trace_id == spans["outer"].trace_id
    assert spans["outer"].parent_span_id == ""
    resource = spans["inner"].resource
    assert resource["service.name"] == "minimax-m1-gateway" and resource["k8s.pod.name"] == "gateway-abc"
    assert resource["service.instance.id"].startswith("gateway-abc-") and resource["service.version"]
    points = [m for r, name, m in receiver.metrics() if name == names.GATEWAY_REQUESTS.name]
    assert points, receiver.metric_names()
    last = points[-1].sum.data_points[0]
    assert last.as_int == 2 or last.as_double == 2.0
    assert points[-1].sum.is_monotonic


def test_ensure_telemetry_sets_up_from_the_environment(receiver, monkeypatch):
    install(None)
    assert not ensure_telemetry("engine").enabled, "nothing to export: stays no-op"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
    tel = ensure_telemetry("engine")
    try:
        assert tel.enabled and ensure_telemetry("engine") is tel, "one per process"
        with tel.tracer("t").start_as_current_span("hello"):
            pass
        tel.force_flush()
    finally:
        tel.shutdown()
    got = receiver.wait_for(lambda r: [s for s in r.spans() if s.name == "hello"], 10)
    assert got[0].resource["service.name"] == "minimax-m1-engine"
