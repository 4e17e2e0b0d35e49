"""Spans whose start and end are already known, handed straight to the span processors.

    spans = FinishedSpans(telemetry, "minimax_m1.engine")
    spans.emit(parent_span_context, "engine.prefill", start_ns, end_ns, {"engine.chunk.tokens": 96})

The engine's step loop records each request's phases (queue, prefill chunks, decode runs) as plain
tuples; when the request ends, the event loop turns them into spans. Opening and ending a live span
through a tracer costs ~35 us (sampler, ids, attribute cleaning, span locks, processor hooks) on the
event loop, which shares the GIL with the step loop; a finished span built here costs ~3 us
(bench/telemetry.py). The spans are children of a live span and follow its sampling decision; they
go to the same processors (batching, OTLP export, test exporters) as every other span.
"""
from __future__ import annotations

from typing import Any, Mapping

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind


class FinishedSpans:
    def __init__(self, telemetry: Any, scope: str):
        provider = telemetry.tracer_provider
        self._processors = tuple(telemetry.span_processors)
        self._resource = getattr(provider, "resource", None)
        self._ids = getattr(provider, "id_generator", None)
        self._scope = InstrumentationScope(scope, telemetry.config.resource_attributes()["service.version"])

    def emit(self, parent: SpanContext, name: str, start_ns: int, end_ns: int,
             attributes: Mapping[str, Any] | None = None) -> None:
        """One finished INTERNAL span under `parent` (nothing when the parent is not sampled)."""
        if not (self._processors and parent.is_valid and parent.trace_flags.sampled):
            return
        context = SpanContext(parent.trace_id, self._ids.generate_span_id(), is_remote=False,
                              trace_flags=parent.trace_flags, trace_state=parent.trace_state)
        span = ReadableSpan(name, context=context, parent=parent, resource=self._resource, attributes=attributes or {},
                            kind=SpanKind.INTERNAL, instrumentation_scope=self._scope, start_time=start_ns,
                            end_time=end_ns)
        for processor in self._processors:
            processor.on_end(span)


__all__ = ["FinishedSpans"]
