"""The direct OTLP span encoder writes exactly the bytes of OpenTelemetry's own encoder
(opentelemetry-exporter-otlp-proto-common, the reference), and its exporter delivers them to a real
receiver (tests/telemetry/otlp_receiver.py, an OTLP gRPC server)."""
from __future__ import annotations

import logging

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as reference_encode
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from minimax_m1.telemetry import TelemetryConfig, setup_telemetry
from minimax_m1.telemetry.otlp_spans import OTLPSpanBytesExporter, encode_spans
from tests.telemetry.otlp_receiver import OtlpReceiver

RESOURCE = Resource.create({"service.name": "minimax-m1-engine", "k8s.pod.name": "engine-0", "host.name": "ü-host"})
SCOPE = InstrumentationScope("minimax_m1.engine", "0.1.0")


def _ctx(trace_id: int, span_id: int, remote: bool = False, state: TraceState | None = None) -> SpanContext:
    return SpanContext(trace_id, span_id, is_remote=remote, trace_flags=TraceFlags(TraceFlags.SAMPLED), trace_state=state)


def _span(name="engine.prefill", attributes=None, parent=None, **kw) -> ReadableSpan:
    args = dict(context=_ctx(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331), parent=parent,
                resource=RESOURCE, attributes=attributes or {}, kind=SpanKind.INTERNAL, instrumentation_scope=SCOPE,
                start_time=1_700_000_000_123_456_789, end_time=1_700_000_000_223_456_789)
    args.update(kw)
    return ReadableSpan(name, **args)


def _same(spans) -> bytes:
    ours = encode_spans(spans)
    assert ours == reference_encode(spans).SerializeToString()
    return ours


@pytest.mark.parametrize("value", [
    "text", "", "ünïcødé ✓", "x" * 300, "a" * 30, "a" * 31, "a" * 125, "a" * 126, "a" * 127, "a" * 128, "😀" * 30,
    "😀" * 31, True, False, 0, 1, 127, 128, 300, -1, -(1 << 63), (1 << 63) - 1,
    0.0, -2.5, 1e300, float("inf"), b"\x00\xff", ("a", "b"), (1, 2, 3), (True, False), (1.5, -0.5), (), ["x", ""],
    None, {"k": 1, "nested": {"deep": "v"}}, ("mixed", 1, None),
])
def test_every_attribute_type_encodes_as_the_reference(value):
    _same([_span(attributes={"engine.value": value, "engine.after": 1})])


def test_long_and_many_attributes_encode_as_the_reference():
    attrs = {f"key.{i}." + "k" * (i * 7): i * 1000 for i in range(40)}  # keys and KeyValues past 127 bytes
    _same([_span(attributes=attrs)])


def test_span_fields_encode_as_the_reference():
    remote_parent = _ctx(0x0AF7651916CD43DD8448EB211C80319C, 0x1111, remote=True)
    local_parent = _ctx(0x0AF7651916CD43DD8448EB211C80319C, 0x2222)
    events = (Event("gen_ai.first_token", {}, timestamp=1_700_000_000_150_000_000),
              Event("engine.preemption", {"engine.computed_tokens_lost": 96, "engine.preemptions": 2}, timestamp=5),
              Event("", None, timestamp=0))
    links = (Link(_ctx(7, 8, remote=True), {"why": "retry"}), Link(_ctx(9, 10)))
    cases = [
        _span(),  # no parent, no attributes
        _span(parent=remote_parent, kind=SpanKind.SERVER, events=events),
        _span(parent=local_parent, kind=SpanKind.CLIENT, links=links),
        _span(name="", kind=SpanKind.PRODUCER, start_time=0, end_time=0),
        _span(kind=SpanKind.CONSUMER, status=Status(StatusCode.ERROR, "upstream failed: ü")),
        _span(status=Status(StatusCode.OK)),
        _span(status=Status(StatusCode.ERROR)),
        _span(context=_ctx(1, 2, state=TraceState([("vendor", "v1"), ("other", "x=")]))),
        _span(context=_ctx(1 << 127, (1 << 64) - 1)),  # ids with the top bit set
    ]
    for span in cases:
        _same([span])
    _same(cases)  # one request: one resource and scope, the spans in order


def test_resources_and_scopes_group_as_the_reference():
    other_resource = Resource.create({"service.name": "minimax-m1-gateway"}, schema_url="https://opentelemetry.io/schemas/1.21.0")
    other_scope = InstrumentationScope("minimax_m1.gateway", "2", schema_url="https://example.com/s", attributes={"a": 1})
    spans = [_span(name="a"), _span(name="b", resource=other_resource), _span(name="c", instrumentation_scope=other_scope),
             _span(name="d"), _span(name="e", resource=other_resource, instrumentation_scope=other_scope),
             _span(name="f", instrumentation_scope=None)]
    _same(spans)
    equal_copy = Resource.create({"service.name": "minimax-m1-engine", "k8s.pod.name": "engine-0", "host.name": "ü-host"})
    assert equal_copy == RESOURCE and equal_copy is not RESOURCE
    _same([_span(name="x"), _span(name="y", resource=equal_copy), _span(name="z")])  # one ResourceSpans, as the reference
    assert encode_spans([]) == reference_encode([]).SerializeToString() == b""


def test_spans_from_the_sdk_tracer_encode_as_the_reference():
    """Spans as OpenTelemetry builds them (bounded attributes and events, sampled ids)."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=RESOURCE)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("minimax_m1.gateway", "1.2.3")
    with tracer.start_as_current_span("outer", kind=SpanKind.SERVER, attributes={"rpc.method": "GenerateStream"}) as outer:
        outer.add_event("gen_ai.first_token")
        with tracer.start_as_current_span("inner", links=[Link(outer.get_span_context())]) as inner:
            inner.set_attribute("gen_ai.usage.output_tokens", 32)
            inner.set_status(Status(StatusCode.ERROR, "boom"))
    spans = memory.get_finished_spans()
    assert len(spans) == 2
    _same(spans)


def test_a_value_otlp_cannot_carry_is_left_out_like_the_reference(caplog):
    span = _span(attributes={"ok": 1, "too.big": 1 << 70, "object": object(), "after": "kept"})
    with caplog.at_level(logging.ERROR):
        ours = encode_spans([span])
    assert ours == reference_encode([span]).SerializeToString()
    assert b"after" in ours and b"too.big" not in ours and "too.big" in caplog.text


def test_the_exporter_sends_the_encoded_bytes_to_a_real_receiver():
    receiver = OtlpReceiver().start()
    try:
        tel = setup_telemetry(TelemetryConfig(service="engine", otlp_endpoint=receiver.endpoint, otlp_insecure=True,
                                              span_sidecar=False), install_as_current=False)
        exporter = next(p.span_exporter for p in tel.span_processors)
        assert isinstance(exporter, OTLPSpanBytesExporter) and exporter.raw, "the byte-sending stub is in place"
        tracer = tel.tracer("minimax_m1.engine")
        with tracer.start_as_current_span("request", attributes={"gen_ai.request.max_tokens": 32, "ratio": 0.5}) as span:
            span.add_event("gen_ai.first_token", {"n": 1})
            with tracer.start_as_current_span("engine.decode", attributes={"engine.decode_steps": 31}):
                pass
        tel.force_flush()
        tel.shutdown()
        got = {s.name: s for s in receiver.wait_for(lambda r: r.spans() if len(r.spans()) >= 2 else None, 10)}
    finally:
        receiver.stop()
    assert set(got) == {"request", "engine.decode"}
    assert got["engine.decode"].parent_span_id == got["request"].span_id
    assert got["request"].attributes == {"gen_ai.request.max_tokens": 32, "ratio": 0.5}
    assert got["engine.decode"].attributes == {"engine.decode_steps": 31}
    assert got["request"].resource["service.name"] == "minimax-m1-engine"
