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


def _scrape(port: int) -> str:
    import urllib.request

    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()


def test_one_reader_serves_prometheus_and_otlp(receiver):
    """With both exports on, every record is aggregated once (one reader) and reaches both."""
    from minimax_m1.telemetry.metric_reader import PrometheusOtlpReader

    config = TelemetryConfig(service="engine", otlp_endpoint=receiver.endpoint, otlp_insecure=True,
                             prometheus_port=0, prometheus_host="127.0.0.1", metric_export_interval_ms=100)
    tel = setup_telemetry(config, install_as_current=False)
    try:
        readers = tel.metric_readers
        assert len(readers) == 1 and isinstance(readers[0], PrometheusOtlpReader)
        ttft = names.create(tel.meter("minimax_m1.engine"), names.TIME_TO_FIRST_TOKEN)
        for value in (0.01, 0.02, 0.3):
            ttft.record(value, {names.REQUEST_MODEL: "demo"})
        tel.force_flush()  # pushes to OTLP; must not queue a stale copy for the next scrape
        text = _scrape(tel.prometheus_port)
        count_lines = [line for line in text.splitlines() if line.startswith(names.TIME_TO_FIRST_TOKEN.name.replace(".", "_") + "_seconds_count")]
        assert len(count_lines) == 1 and count_lines[0].endswith(" 3.0"), count_lines
        assert _scrape(tel.prometheus_port).count("_seconds_count{") == text.count("_seconds_count{"), "no duplicates"
        got = receiver.wait_for(lambda r: [m for _, name, m in r.metrics() if name == names.TIME_TO_FIRST_TOKEN.name
                                           and m.histogram.data_points[0].count == 3], 10)
        point = got[-1].histogram.data_points[0]
        assert abs(point.sum - 0.33) < 1e-9 and got[-1].histogram.aggregation_temporality == 2  # cumulative, as Prometheus
    finally:
        tel.shutdown()


def test_delta_temporality_keeps_a_reader_of_its_own(receiver, monkeypatch):
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "delta")
    config = TelemetryConfig(service="engine", otlp_endpoint=receiver.endpoint, otlp_insecure=True,
                             prometheus_port=0, prometheus_host="127.0.0.1")
    tel = setup_telemetry(config, install_as_current=False)
    try:
        kinds = sorted(type(r).__name__ for r in tel.metric_readers)
        assert kinds == sorted([PeriodicExportingMetricReader.__name__, PrometheusMetricReader.__name__])
    finally:
        tel.shutdown()
