"""FinishedSpans: phase spans handed straight to the span processors, as children of a live span."""
from __future__ import annotations

from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

from minimax_m1.telemetry.finished_spans import FinishedSpans
from tests.telemetry.conftest import make_memory_telemetry


def test_children_of_a_sampled_span_reach_the_exporters_with_their_times_and_parent():
    mem = make_memory_telemetry()
    try:
        tracer = mem.telemetry.tracer("minimax_m1.engine")
        spans = FinishedSpans(mem.telemetry, "minimax_m1.engine")
        parent = tracer.start_span("request")
        spans.emit(parent.get_span_context(), "engine.prefill", 1_000, 5_000, {"engine.chunk.tokens": 96})
        spans.emit(parent.get_span_context(), "engine.finish", 5_000, 6_000)
        parent.end()
        got = {s.name: s for s in mem.spans()}
        assert set(got) == {"request", "engine.prefill", "engine.finish"}
        prefill, request = got["engine.prefill"], got["request"]
        assert prefill.parent.span_id == request.context.span_id
        assert prefill.context.trace_id == request.context.trace_id
        assert prefill.context.span_id not in (0, request.context.span_id, got["engine.finish"].context.span_id)
        assert (prefill.start_time, prefill.end_time) == (1_000, 5_000)
        assert dict(prefill.attributes) == {"engine.chunk.tokens": 96} and dict(got["engine.finish"].attributes) == {}
        assert prefill.kind == SpanKind.INTERNAL
        assert prefill.resource == request.resource  # service name, pod, instance: as every other span
        assert prefill.instrumentation_scope.name == "minimax_m1.engine"
    finally:
        mem.telemetry.shutdown()


def test_nothing_is_emitted_under_an_unsampled_or_invalid_parent():
    mem = make_memory_telemetry()
    try:
        spans = FinishedSpans(mem.telemetry, "minimax_m1.engine")
        unsampled = SpanContext(0x1234, 0x5678, is_remote=False, trace_flags=TraceFlags(0))
        spans.emit(unsampled, "engine.queue", 1, 2)
        spans.emit(NonRecordingSpan(SpanContext(0, 0, False)).get_span_context(), "engine.queue", 1, 2)
        assert mem.spans() == []
    finally:
        mem.telemetry.shutdown()
