"""Counters are Tallies: summed in the process, read by OpenTelemetry as a monotonic sum."""
from __future__ import annotations

import pytest
from opentelemetry.sdk.metrics.export import Sum

from minimax_m1.telemetry import names
from minimax_m1.telemetry.config import TelemetryConfig
from tests.telemetry.conftest import make_memory_telemetry


def test_a_tally_reads_as_a_monotonic_sum_per_attribute_set(monkeypatch):
    mem = make_memory_telemetry()
    try:
        tally = names.create(mem.telemetry.meter("t"), names.GATEWAY_TOKENS)
        assert isinstance(tally, names.Tally)
        tally.add(5, {"tenant": "acme", "gen_ai.token.type": "input"})
        tally.add(7, {"gen_ai.token.type": "input", "tenant": "acme"})  # same set, other order
        tally.add(1, {"tenant": "beta", "gen_ai.token.type": "input"})
        points = mem.metrics()[names.GATEWAY_TOKENS.name]
        got = {a["tenant"]: p.value for a, p in points}
        assert got == {"acme": 12, "beta": 1}
        data = next(m.data for rm in mem.reader.get_metrics_data().resource_metrics for sm in rm.scope_metrics
                    for m in sm.metrics if m.name == names.GATEWAY_TOKENS.name)
        assert isinstance(data, Sum) and data.is_monotonic
        monkeypatch.setattr(names.Tally, "MAX_SERIES", 2)
        tally.add(3, {"tenant": "gamma"})  # a third attribute set: folded into the overflow series
        got = {tuple(sorted(a.items())): p.value for a, p in mem.metrics()[names.GATEWAY_TOKENS.name]}
        assert got[(("otel.metric.overflow", True),)] == 3 and len(got) == 3
    finally:
        mem.telemetry.shutdown()


def test_exemplar_filter_from_the_environment():
    assert TelemetryConfig.from_env("gateway", {}).exemplar_filter == "always_off"
    assert TelemetryConfig.from_env("gateway", {"OTEL_METRICS_EXEMPLAR_FILTER": "Trace_Based"}).exemplar_filter == "trace_based"
    with pytest.raises(ValueError, match="OTEL_METRICS_EXEMPLAR_FILTER"):
        TelemetryConfig.from_env("gateway", {"OTEL_METRICS_EXEMPLAR_FILTER": "sometimes"})


def test_a_buffered_histogram_hands_every_record_to_each_collection(monkeypatch):
    import threading

    mem = make_memory_telemetry()
    try:
        hist = names.create(mem.telemetry.meter("t"), names.TIME_TO_FIRST_TOKEN)
        assert isinstance(hist, names.BufferedHistogram)
        for value in (0.01, 0.02, 0.3):
            hist.record(value, {names.REQUEST_MODEL: "demo"})
        (attrs, point), = mem.metrics()[names.TIME_TO_FIRST_TOKEN.name]
        assert attrs == {names.REQUEST_MODEL: "demo"} and point.count == 3 and abs(point.sum - 0.33) < 1e-12
        assert not [n for n in mem.metrics() if n.endswith(".flush")], "the flush hook reports no points"

        def many():
            for _ in range(2000):
                hist.record(0.5, {names.REQUEST_MODEL: "demo"})
        threads = [threading.Thread(target=many) for _ in range(4)]
        collector = threading.Thread(target=lambda: [mem.metrics() for _ in range(20)])
        for t in threads + [collector]:
            t.start()
        for t in threads + [collector]:
            t.join()
        (_, point), = mem.metrics()[names.TIME_TO_FIRST_TOKEN.name]
        assert point.count == 3 + 8000, "no record lost or doubled while collections ran"

        monkeypatch.setattr(names.BufferedHistogram, "MAX_PENDING", 10)
        for _ in range(25):
            hist.record(1.0, {names.REQUEST_MODEL: "demo"})
        assert len(hist._pending) == 5, "a full buffer flushes on its own"
    finally:
        mem.telemetry.shutdown()


def test_unbuffered_histogram_where_exemplars_need_the_record_context():
    from minimax_m1.telemetry.gateway import GatewayTelemetry

    for exemplars, buffered in (("always_off", True), ("trace_based", False)):
        mem = make_memory_telemetry(exemplar_filter=exemplars)
        try:
            tel = GatewayTelemetry(mem.telemetry)
            assert isinstance(tel._duration, names.BufferedHistogram) is buffered
        finally:
            mem.telemetry.shutdown()
