"""FinishedSpans: spans built when their request ends and handed straight to the span processors,
with the tracer provider's sampling decision."""
from __future__ import annotations

from opentelemetry.sdk.trace import Event
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags

from minimax_m1.telemetry.finished_spans import FinishedSpans
from minimax_m1.telemetry.propagation import extract_context
from tests.telemetry.conftest import make_memory_telemetry

REMOTE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_a_request_span_and_its_children_reach_the_exporters_as_built():
    mem = make_memory_telemetry()
    try:
        spans = FinishedSpans(mem.telemetry, "minimax_m1.engine")
        remote = extract_context((("traceparent", REMOTE),))
        request, caller_ctx = spans.start(remote, "text_completion demo", SpanKind.SERVER, {"a": 1})
        assert request.trace_id == 0x0af7651916cd43dd8448eb211c80319c  # the caller's trace
        assert caller_ctx.span_id == 0xb7ad6b7169203331 and caller_ctx.is_remote
        prefill = spans.child(request)
        spans.emit(prefill, request, "engine.prefill", 1_000, 5_000, {"engine.chunk.tokens": 96})
        caller = SpanContext(0x0af7651916cd43dd8448eb211c80319c, 0xb7ad6b7169203331, is_remote=True,
                             trace_flags=TraceFlags(TraceFlags.SAMPLED))
        spans.emit(request, caller, "text_completion demo", 500, 9_000, {"a": 1}, SpanKind.SERVER,
                   [Event("gen_ai.first_token", timestamp=5_000)])
        got = {s.name: s for s in mem.spans()}
        assert set(got) == {"engine.prefill", "text_completion demo"}
        child, parent = got["engine.prefill"], got["text_completion demo"]
        assert child.parent.span_id == parent.context.span_id and child.context.trace_id == parent.context.trace_id
        assert parent.parent.span_id == 0xb7ad6b7169203331  # under the caller's span
        assert child.context.span_id not in (0, parent.context.span_id)
        assert (child.start_time, child.end_time, parent.start_time, parent.end_time) == (1_000, 5_000, 500, 9_000)
        assert dict(child.attributes) == {"engine.chunk.tokens": 96} and child.kind == SpanKind.INTERNAL
        assert parent.kind == SpanKind.SERVER and [e.name for e in parent.events] == ["gen_ai.first_token"]
        assert parent.resource.attributes["service.name"] == mem.telemetry.config.resource_attributes()["service.name"]
        assert child.instrumentation_scope.name == "minimax_m1.engine"
    finally:
        mem.telemetry.shutdown()


def test_the_sampler_decides_and_unsampled_spans_are_not_emitted(monkeypatch):
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_always_off")
    mem = make_memory_telemetry()
    try:
        spans = FinishedSpans(mem.telemetry, "minimax_m1.engine")
        root, no_parent = spans.start(None, "root", SpanKind.SERVER, {})
        assert not no_parent.is_valid
        assert root.is_valid and not root.trace_flags.sampled  # the sampler said no; the ids still propagate
        spans.emit(root, None, "root", 1, 2)
        spans.emit(spans.child(root), root, "child of root", 1, 2)
        unsampled_parent = extract_context((("traceparent", REMOTE[:-2] + "00"),))
        child, _ = spans.start(unsampled_parent, "child", SpanKind.SERVER, {})
        assert child.trace_id == 0x0af7651916cd43dd8448eb211c80319c and not child.trace_flags.sampled
        spans.emit(child, None, "child", 1, 2)
        assert mem.spans() == []
    finally:
        mem.telemetry.shutdown()


def test_a_root_gets_a_new_trace():
    mem = make_memory_telemetry()
    try:
        spans = FinishedSpans(mem.telemetry, "minimax_m1.engine")
        (a, _), (b, _) = spans.start(None, "root", SpanKind.SERVER, {}), spans.start(None, "root", SpanKind.SERVER, {})
        assert a.trace_id and b.trace_id and a.trace_id != b.trace_id and a.trace_flags.sampled
    finally:
        mem.telemetry.shutdown()


def test_a_process_without_span_exporters_still_samples_for_downstream():
    """A gateway that only serves metrics still marks its spans sampled (the engine behind it may
    export traces), as a tracer would; the no-op telemetry propagates nothing."""
    from minimax_m1.telemetry import TelemetryConfig, setup_telemetry
    from minimax_m1.telemetry.setup import _noop

    tel = setup_telemetry(TelemetryConfig(service="gateway"), install_as_current=False)
    try:
        context, _ = FinishedSpans(tel, "minimax_m1.gateway").start(None, "call", SpanKind.SERVER, {})
        assert context.is_valid and context.trace_flags.sampled
    finally:
        tel.shutdown()
    context, _ = FinishedSpans(_noop(), "minimax_m1.gateway").start(None, "call", SpanKind.SERVER, {})
    assert not context.is_valid
