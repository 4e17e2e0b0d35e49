"""W3C trace context (traceparent, tracestate) in gRPC metadata.

    metadata = with_trace_context(base_metadata)       # the caller: base + the current span's context
    metadata = with_span_context(base_metadata, span_context)   # the same for a given SpanContext
    ctx = extract_context(context.invocation_metadata())   # the callee: the parent for its spans

gRPC metadata keys are lower case, which is what W3C trace context uses, so no key mapping is
needed. Both work without an active span: nothing is added and an empty context comes back.
"""
from __future__ import annotations

from typing import Iterable, Sequence

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanContext
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_PROPAGATOR = TraceContextTextMapPropagator()  # stateless; extracts (with_span_context writes)
TRACE_KEYS = frozenset(_PROPAGATOR.fields)  # {"traceparent", "tracestate"}


def with_span_context(metadata: Sequence[tuple[str, str]], span_context: SpanContext) -> tuple[tuple[str, str], ...]:
    """`metadata` with any trace-context pairs replaced by `span_context`'s (what OpenTelemetry's
    W3C propagator writes; tests compare). An invalid span context leaves `metadata` as it is."""
    if not span_context.is_valid:
        return tuple(metadata)
    pairs = tuple(p for p in metadata if p[0] not in TRACE_KEYS)
    pairs += (("traceparent", f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-{span_context.trace_flags:02x}"),)
    if span_context.trace_state:
        pairs += (("tracestate", span_context.trace_state.to_header()),)
    return pairs


def with_trace_context(metadata: Sequence[tuple[str, str]] = (), context: Context | None = None) -> tuple[tuple[str, str], ...]:
    """`metadata` with any trace-context pairs replaced by the current span's (that of `context`)."""
    return with_span_context(metadata, trace.get_current_span(context).get_span_context())


def inject_metadata(context: Context | None = None) -> tuple[tuple[str, str], ...]:
    """The trace-context metadata pairs for `context` (default: the current one)."""
    return with_trace_context((), context)


def extract_context(metadata: Iterable[tuple[str, str | bytes]] | None) -> Context:
    """The remote parent context from gRPC invocation metadata (empty Context if none)."""
    carrier = {}
    for key, value in metadata or ():
        if key in TRACE_KEYS:
            carrier[key] = value.decode() if isinstance(value, bytes) else value
    return _PROPAGATOR.extract(carrier) if carrier else Context()


__all__ = ["inject_metadata", "with_trace_context", "with_span_context", "extract_context", "TRACE_KEYS"]
