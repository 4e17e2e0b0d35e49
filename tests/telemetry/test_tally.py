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
