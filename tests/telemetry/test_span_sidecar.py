"""The span sidecar: spans leave the serving process as plain tuples and a child process exports
them. Checked against the in-process path byte for byte, and with a real child process and a real
OTLP receiver (tests/telemetry/otlp_receiver.py): flush, shutdown, a killed child, a killed parent,
values marshal cannot carry, a full queue, and the configuration switch."""
from __future__ import annotations

import logging
import marshal
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as reference_encode
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from minimax_m1.telemetry import TelemetryConfig, setup_telemetry
from minimax_m1.telemetry.finished_spans import FinishedSpans
from minimax_m1.telemetry.otlp_spans import encode_spans
from minimax_m1.telemetry.propagation import extract_context
from minimax_m1.telemetry.span_sidecar import SidecarSpanProcessor, _Rebuilder, span_record
from tests.conftest import REPO_ROOT
from tests.telemetry.otlp_receiver import OtlpReceiver
from tests.telemetry.test_otlp_spans import RESOURCE, _ctx, _span

TRACEPARENT = (("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
               ("tracestate", "vendor=abc,other=1"))


@pytest.fixture
def receiver():
    r = OtlpReceiver().start()
    yield r
    r.stop()


def _rebuilt(spans, resource=RESOURCE):
    """The spans as the child builds them, from records that went through marshal."""
    rebuild = _Rebuilder(Resource(dict(resource.attributes), resource.schema_url or None))
    return [rebuild.span(marshal.loads(marshal.dumps(span_record(s)))) for s in spans]


@pytest.mark.parametrize("value", ["text", "", "ünïcødé ✓", "x" * 300, True, False, 0, -1, -(1 << 63), (1 << 63) - 1,
                                   0.0, -2.5, float("inf"), b"\x00\xff", ("a", "b"), (1, 2, 3), (True, False), (1.5,),
                                   (), ["x", ""], None, {"k": 1, "nested": {"deep": "v"}}])
def test_a_record_rebuilds_a_span_with_the_same_bytes(value):
    span = _span(attributes={"engine.value": value, "engine.after": 1})
    assert encode_spans(_rebuilt([span])) == encode_spans([span]) == reference_encode([span]).SerializeToString()


def test_every_span_field_survives_the_record():
    from opentelemetry.sdk.trace import TracerProvider

    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=RESOURCE)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("minimax_m1.engine", "0.1.0", schema_url="https://opentelemetry.io/schemas/1.21.0",
                                 attributes={"scope.attr": "x"})
    from opentelemetry.trace import Link, NonRecordingSpan, set_span_in_context

    remote = set_span_in_context(NonRecordingSpan(_ctx(0x0AF7651916CD43DD8448EB211C80319C, 0x1111, remote=True)))
    with tracer.start_as_current_span("outer", context=remote, kind=SpanKind.SERVER,
                                      attributes={"rpc.method": "GenerateStream"}) as outer:
        outer.add_event("gen_ai.first_token", {"n": 1})
        outer.add_event("engine.preemption", {f"k{i}": i for i in range(200)})  # past the limit: dropped attributes
        with tracer.start_as_current_span("inner", links=[Link(outer.get_span_context(), {"why": "same"})]) as inner:
            inner.set_attributes({f"a{i}": i for i in range(200)})  # past the span's limit
            inner.set_status(Status(StatusCode.ERROR, "boom"))
    spans = memory.get_finished_spans()
    assert spans[0].dropped_attributes > 0 and spans[1].events[1].dropped_attributes > 0
    assert encode_spans(_rebuilt(spans)) == reference_encode(spans).SerializeToString()


class _Telemetry:
    """What FinishedSpans reads of a Telemetry."""

    def __init__(self, provider, processors, config):
        self.tracer_provider, self.span_processors, self.config = provider, processors, config


def _request_spans(spans: FinishedSpans):
    request, parent = spans.start(extract_context(TRACEPARENT), "text_completion demo", SpanKind.SERVER,
                                  {"gen_ai.request.max_tokens": 32})
    child = spans.child(request)
    spans.emit(child, request, "engine.prefill", 10, 20, {"engine.chunk.tokens": 12, "engine.recompute": False})
    spans.emit(spans.child(request), request, "engine.decode", 20, 90, {"engine.decode_steps": 31})
    spans.emit(request, parent, "text_completion demo", 5, 95, {"gen_ai.usage.output_tokens": 32,
               "gen_ai.response.finish_reasons": ("length",)}, SpanKind.SERVER,
               [Event("gen_ai.first_token", {}, timestamp=21)], Status(StatusCode.ERROR, "INTERNAL"))
    root, _ = spans.start(None, "root", SpanKind.SERVER, {})
    spans.emit(root, None, "root", 1, 2)


def _received_spans(receiver) -> list[bytes]:
    """Every received span, serialized, with its resource and scope."""
    out = []
    for request in receiver.trace_requests:
        for rs in request.resource_spans:
            for ss in rs.scope_spans:
                out += [(rs.resource.SerializeToString(), ss.scope.SerializeToString(), s.SerializeToString())
                        for s in ss.spans]
    return out


def test_finished_spans_reach_the_receiver_as_the_in_process_path_encodes_them(receiver):
    """FinishedSpans hands the sidecar tuples and an in-memory exporter ReadableSpans, side by side:
    the receiver gets exactly the reference encoding of the in-memory spans."""
    from opentelemetry.sdk.trace import TracerProvider

    provider = TracerProvider(resource=RESOURCE)
    memory = InMemorySpanExporter()
    sidecar = SidecarSpanProcessor(RESOURCE, receiver.endpoint, insecure=True)
    try:
        config = TelemetryConfig(service="engine", service_version="0.1.0")
        _request_spans(FinishedSpans(_Telemetry(provider, (SimpleSpanProcessor(memory), sidecar), config),
                                     "minimax_m1.engine"))
        assert sidecar.force_flush(10_000), "the child acknowledged the flush"
        got = _received_spans(receiver)  # no waiting: the flush returned after the export
    finally:
        sidecar.shutdown()
    expected = ExportTraceServiceRequest.FromString(reference_encode(memory.get_finished_spans()).SerializeToString())
    want = [(rs.resource.SerializeToString(), ss.scope.SerializeToString(), s.SerializeToString())
            for rs in expected.resource_spans for ss in rs.scope_spans for s in ss.spans]
    assert len(want) == 4
    assert sorted(got) == sorted(want)
    assert sidecar.dropped == 0 and sidecar.starts == 1


def test_shutdown_exports_what_is_queued_and_ends_the_child(receiver):
    sidecar = SidecarSpanProcessor(RESOURCE, receiver.endpoint, insecure=True)
    child = sidecar._child
    for i in range(700):  # more than a frame
        sidecar.on_end(_span(name=f"s{i}"))
    sidecar.shutdown()
    assert child.returncode == 0, "the child exported and exited by itself"
    assert sorted(s.name for s in receiver.spans()) == sorted(f"s{i}" for i in range(700))
    sidecar.on_end(_span(name="late"))
    assert sidecar.dropped == 1 and sidecar.force_flush(1000) is False and sidecar.starts == 1


def test_a_child_that_dies_is_replaced_and_the_loss_is_counted(receiver, caplog):
    sidecar = SidecarSpanProcessor(RESOURCE, receiver.endpoint, insecure=True)
    try:
        first = sidecar._child
        assert sidecar.force_flush(10_000)
        first.kill()
        first.wait()
        time.sleep(1.1)  # the first restart is due 1 s after the start
        sidecar.on_end(_span(name="lost"))
        with caplog.at_level(logging.WARNING):
            assert sidecar.force_flush(10_000), "the flush reached the new child"
        assert "exited (code -9)" in caplog.text and "1 spans lost" in caplog.text
        assert sidecar.starts == 2 and sidecar._child.pid != first.pid and sidecar.dropped == 1
        sidecar.on_end(_span(name="kept"))
        assert sidecar.force_flush(10_000)
        assert [s.name for s in receiver.spans()] == ["kept"]
    finally:
        sidecar.shutdown()


def test_a_killed_parent_leaves_no_child_and_loses_no_sent_span(receiver, tmp_path):
    script = textwrap.dedent(f"""
        import os, signal, sys, time
        sys.path.insert(0, {REPO_ROOT!r})
        from tests.telemetry.test_otlp_spans import _span, RESOURCE
        from minimax_m1.telemetry.span_sidecar import SidecarSpanProcessor
        sidecar = SidecarSpanProcessor(RESOURCE, {receiver.endpoint!r}, insecure=True)
        for i in range(50):
            sidecar.on_end(_span(name=f"orphan{{i}}"))
        sidecar._send_queued()  # in the pipe now
        print(sidecar.pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    parent = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert parent.returncode == -signal.SIGKILL, parent.stderr
    child_pid = int(parent.stdout.split()[0])
    got = receiver.wait_for(lambda r: r.spans() if len(r.spans()) >= 50 else None, 30, "the orphaned spans")
    assert sorted(s.name for s in got) == sorted(f"orphan{i}" for i in range(50))
    deadline = time.monotonic() + 30
    while os.path.exists(f"/proc/{child_pid}") and _state(child_pid) != "Z" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not os.path.exists(f"/proc/{child_pid}") or _state(child_pid) == "Z", "the child exited"


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def test_a_value_marshal_cannot_carry_drops_only_that_span(receiver, caplog):
    sidecar = SidecarSpanProcessor(RESOURCE, receiver.endpoint, insecure=True)
    try:
        ok = span_record(_span(name="ok"))
        bad = list(span_record(_span(name="bad")))
        bad[11] = {"object": object()}
        with caplog.at_level(logging.ERROR):
            sidecar.emit(ok)
            sidecar.emit(tuple(bad))
            assert sidecar.force_flush(10_000)
        assert [s.name for s in receiver.spans()] == ["ok"]
        assert sidecar.dropped == 1 and "'bad' dropped" in caplog.text
    finally:
        sidecar.shutdown()


def test_a_full_queue_drops_and_counts(receiver, caplog):
    sidecar = SidecarSpanProcessor(RESOURCE, receiver.endpoint, insecure=True, max_queue_size=3)
    try:
        with caplog.at_level(logging.WARNING):
            with sidecar._write_lock:  # the writer waits: nothing leaves the queue meanwhile
                for i in range(10):
                    sidecar.on_end(_span(name=f"q{i}"))
        assert sidecar.dropped == 7 and "queue is full" in caplog.text
        assert sidecar.force_flush(10_000)
        assert sorted(s.name for s in receiver.spans()) == ["q0", "q1", "q2"]
    finally:
        sidecar.shutdown()


def test_unsampled_spans_are_not_sent(receiver):
    from opentelemetry.trace import SpanContext, TraceFlags

    sidecar = SidecarSpanProcessor(RESOURCE, receiver.endpoint, insecure=True)
    try:
        sidecar.on_end(_span(name="unsampled", context=SpanContext(1, 2, False, TraceFlags(TraceFlags.DEFAULT))))
        sidecar.on_end(_span(name="sampled"))
        assert sidecar.force_flush(10_000)
        assert [s.name for s in receiver.spans()] == ["sampled"]
    finally:
        sidecar.shutdown()


def test_the_sidecar_is_the_default_and_can_be_turned_off(receiver):
    on = setup_telemetry(TelemetryConfig.from_env("engine", {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                                                             "OTEL_EXPORTER_OTLP_INSECURE": "true"}),
                         install_as_current=False)
    off = setup_telemetry(TelemetryConfig.from_env("engine", {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                                                              "MINIMAX_M1_SPAN_SIDECAR": "false"}),
                          install_as_current=False)
    try:
        assert [type(p) for p in on.span_processors] == [SidecarSpanProcessor]
        assert [type(p) for p in off.span_processors] == [BatchSpanProcessor]
    finally:
        on.shutdown()
        off.shutdown()
    with pytest.raises(ValueError, match="MINIMAX_M1_SPAN_SIDECAR must be true or false"):
        TelemetryConfig.from_env("engine", {"MINIMAX_M1_SPAN_SIDECAR": "maybe"})


def test_a_child_that_cannot_start_is_retried_later(receiver, caplog):
    with caplog.at_level(logging.ERROR):
        sidecar = SidecarSpanProcessor(RESOURCE, receiver.endpoint, insecure=True, command=["/nonexistent/python"])
    try:
        assert sidecar.pid is None and "cannot start /nonexistent/python" in caplog.text
        sidecar.on_end(_span(name="nowhere"))
        assert sidecar.force_flush(500) is False and sidecar.dropped >= 1
    finally:
        sidecar.shutdown()


def test_a_slow_collector_backs_up_into_the_counted_queue(receiver, monkeypatch):
    """The child exports a batch at a time and reads no more meanwhile: with the collector stalled,
    the pipe fills, the writer waits and the serving process's queue drops and counts. Every span is
    either received or counted dropped, none lost unseen."""
    import threading

    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "50")
    receiver.gate = threading.Event()
    sidecar = SidecarSpanProcessor(RESOURCE, receiver.endpoint, insecure=True, max_queue_size=100)
    try:
        for i in range(3000):
            sidecar.on_end(_span(name=f"s{i}", attributes={"pad": "x" * 100}))
            if i % 50 == 0:
                time.sleep(0.001)  # let the writer fill the pipe
        assert sidecar.dropped > 0, "the stalled collector made the queue overflow"
        receiver.gate.set()
        assert sidecar.force_flush(30_000)
        assert len(receiver.spans()) + sidecar.dropped == 3000
    finally:
        receiver.gate.set()
        sidecar.shutdown()


def test_a_flush_after_a_failed_export_says_so(monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")  # the child's exporter gives up after 1 s
    sidecar = SidecarSpanProcessor(RESOURCE, "http://127.0.0.1:9", insecure=True)  # nothing listens there
    try:
        sidecar.on_end(_span(name="unsent"))
        assert sidecar.force_flush(60_000) is False, "the export failed and the flush says so"
        assert sidecar.force_flush(10_000) is True, "nothing failed since"
    finally:
        sidecar.shutdown()


@pytest.mark.parametrize("name, value", [("OTEL_BSP_SCHEDULE_DELAY", "soon"), ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "0")])
def test_a_bad_batch_setting_is_a_clear_error(receiver, monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=f"{name} must be a positive integer, got '{value}'"):
        SidecarSpanProcessor(RESOURCE, receiver.endpoint, insecure=True)
