"""Spans whose start and end are already known, handed straight to the span processors.

    spans = FinishedSpans(telemetry, "minimax_m1.engine")
    request, remote_parent = spans.start(extract_context(metadata), "text_completion demo", SpanKind.SERVER, attrs)
    ...                                                            # the request runs; times are noted
    spans.emit(spans.child(request), request, "engine.prefill", start_ns, end_ns, {"engine.chunk.tokens": 96})
    spans.emit(request, remote_parent, "text_completion demo", start_ns, end_ns, attrs, SpanKind.SERVER, events)

The engine's step loop records each request's phases (queue, prefill chunks, decode runs) as plain
tuples; when the request ends, the event loop turns them and the request itself into spans. Opening
and ending a live span through a tracer costs ~35 us (sampler, ids, attribute cleaning, span locks,
processor hooks) on the event loop, which shares the GIL with the step loop; a finished span built
here costs ~3 us. `start` takes the same sampling decision as a tracer (the configured sampler,
parent-based by default); children follow their parent's. The spans go to the same processors
(batching, OTLP export, test exporters) as every other span; the span sidecar's processor takes
each as a tuple of plain values (span_sidecar.py), so with only that processor, as deployed, no
span object is built in this process at all.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import INVALID_SPAN_CONTEXT, SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.status import Status

from minimax_m1.telemetry.span_sidecar import SidecarSpanProcessor, record, scope_record


class FinishedSpans:
    def __init__(self, telemetry: Any, scope: str):
        provider = telemetry.tracer_provider
        processors = tuple(telemetry.span_processors)
        self._records = tuple(p for p in processors if isinstance(p, SidecarSpanProcessor))  # take tuples
        self._processors = tuple(p for p in processors if not isinstance(p, SidecarSpanProcessor))  # ReadableSpans
        self._resource = getattr(provider, "resource", None)
        self._ids = getattr(provider, "id_generator", None)
        self._sampler = getattr(provider, "sampler", None)
        self._scope = InstrumentationScope(scope, telemetry.config.resource_attributes()["service.version"])
        self._scope_record = scope_record(self._scope)

    def start(self, parent: Context | None, name: str, kind: SpanKind,
              attributes: Mapping[str, Any]) -> tuple[SpanContext, SpanContext]:
        """(the new span's context, its parent's) for a span that starts now under `parent` (e.g.
        extracted from a traceparent; None = a root). The new span's flags carry the tracer
        provider's sampling decision (OTEL_TRACES_SAMPLER): what a tracer's start_span decides,
        whether or not this process exports spans, so it propagates downstream unchanged; `emit`
        drops an unsampled span. The no-op telemetry gives an invalid context (nothing propagates)."""
        remote = trace.get_current_span(parent).get_span_context()
        if self._sampler is None:
            return INVALID_SPAN_CONTEXT, remote
        trace_id = remote.trace_id if remote.is_valid else self._ids.generate_trace_id()
        result = self._sampler.should_sample(parent, trace_id, name, kind, attributes)
        flags = TraceFlags(TraceFlags.SAMPLED if result.decision.is_sampled() else TraceFlags.DEFAULT)
        return SpanContext(trace_id, self._ids.generate_span_id(), is_remote=False, trace_flags=flags,
                           trace_state=result.trace_state), remote

    def child(self, parent: SpanContext) -> SpanContext:
        """A new span's context in `parent`'s trace, with its sampling flags."""
        return SpanContext(parent.trace_id, self._ids.generate_span_id(), is_remote=False,
                           trace_flags=parent.trace_flags, trace_state=parent.trace_state)

    def emit(self, context: SpanContext, parent: SpanContext | None, name: str, start_ns: int, end_ns: int,
             attributes: Mapping[str, Any] | None = None, kind: SpanKind = SpanKind.INTERNAL,
             events: Sequence[Event] = (), status: Status | None = None) -> None:
        """One finished span (nothing when `context` is not sampled)."""
        if not context.trace_flags.sampled:
            return
        parent = parent if parent is not None and parent.is_valid else None
        if self._records:
            span_record = record(self._scope_record, context, parent, name, kind, start_ns, end_ns, attributes or {},
                                 events, (), status)
            for processor in self._records:
                processor.emit(span_record)
        if self._processors:
            span = ReadableSpan(name, context=context, parent=parent, resource=self._resource,
                                attributes=attributes or {}, events=events, kind=kind, instrumentation_scope=self._scope,
                                start_time=start_ns, end_time=end_ns, **({"status": status} if status is not None else {}))
            for processor in self._processors:
                processor.on_end(span)


__all__ = ["FinishedSpans"]
