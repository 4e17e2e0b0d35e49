"""Span export from a child process: encoding and sending spans leave the serving process.

    processor = SidecarSpanProcessor(resource, "http://collector:4317", insecure=True)
    tracer_provider.add_span_processor(processor)   # spans from tracers arrive through on_end
    processor.emit(record)                           # finished spans (FinishedSpans): plain tuples
    processor.force_flush(); processor.shutdown()

Why: the engine process is GIL-bound under load. Its step loop, the critical path, needs the GIL
for every Python line, and so does every other thread of the process: building ReadableSpans,
encoding them and driving the gRPC export there took the GIL from the step loop for every span.
Here the serving process only appends each finished span, as a tuple of plain values (`record`),
to a queue. A writer thread batches the queue as OpenTelemetry's batch span processor does (a batch
when OTEL_BSP_MAX_EXPORT_BATCH_SIZE spans wait, default 512, or every OTEL_BSP_SCHEDULE_DELAY ms,
default 5000) and marshals each batch (one C call) into the stdin of a child process,
`python -m minimax_m1.telemetry.span_sidecar`. The child builds the ReadableSpans and exports each
batch in turn with OpenTelemetry's OTLP/gRPC exporter (OTLPSpanBytesExporter): while it exports,
it reads no more, the pipe fills and the writer waits, so a slow collector backs up into the
serving process's queue, which drops and counts (nothing is dropped unseen in between). The child
inherits the environment: OTEL_EXPORTER_OTLP_* (headers, certificates, compression, timeout) apply
there as they would in process; the endpoint, TLS choice and resource come from the parent. It
takes ~45 MB and its CPU is the pod's like any other.

Failures:
- queue full (OTEL_BSP_MAX_QUEUE_SIZE spans waiting, default 2048): new spans are dropped and
  counted (`dropped`), with a warning at most once a minute, as the batch processor does;
- the child exits: a warning with its exit code, and a new child after 1 s, then 2, 4, ... up to
  5 min between tries while it keeps failing; spans sent to a dead child are lost and counted;
- the parent exits or is killed: the child reads the end of its input, exports what it holds, and
  exits. It ignores SIGINT and SIGTERM (sent to a whole process group they would lose the spans
  in flight); its life is the parent's;
- a value marshal cannot carry (attributes are OpenTelemetry's primitive types and sequences of
  them, which it can): that span is dropped and logged, the rest of its batch goes.

Set MINIMAX_M1_SPAN_SIDECAR=false to export in process instead (TelemetryConfig.span_sidecar).
"""
from __future__ import annotations

import collections
import logging
import marshal
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from typing import Any, Sequence

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor
from opentelemetry.sdk.util import BoundedList
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, TraceFlags, TraceState
from opentelemetry.trace.status import Status, StatusCode

log = logging.getLogger(__name__)

_VERSION = 2  # of the frames: a child answers only its own version's hello
_HEADER = struct.Struct("<I")  # frame: little-endian length, then marshal data
_RESTART_FIRST_S, _RESTART_MAX_S = 1.0, 300.0
_WARN_EVERY_S = 60.0

# record = (scope, trace_id, span_id, trace_flags, trace_state, parent_span_id, parent_is_remote, name,
#           kind, start_ns, end_ns, attributes, events, links, status_code, status_description,
#           dropped_attributes, dropped_events, dropped_links)
#   scope = (name, version, schema_url, attributes or None); trace_state = W3C tracestate header ("" = none);
#   parent_span_id 0 = a root; kind and status_code = the SDK enums' values;
#   events = ((name, timestamp, attributes, dropped_attributes), ...);
#   links = ((trace_id, span_id, trace_flags, trace_state, is_remote, attributes, dropped_attributes), ...)


def _attrs(attributes: Any) -> dict:
    return dict(attributes) if attributes else {}


def _dropped(mapping: Any) -> int:
    return getattr(mapping, "dropped", 0) or 0


def scope_record(scope: Any) -> tuple:
    if scope is None:
        return ("", "", "", None)
    return (scope.name or "", scope.version or "", scope.schema_url or "", _attrs(getattr(scope, "attributes", None)) or None)


def record(scope: tuple, context: Any, parent: Any, name: str, kind: Any, start_ns: int, end_ns: int,
           attributes: dict, events: Sequence[Any] = (), links: Sequence[Any] = (), status: Any = None,
           dropped: tuple[int, int, int] = (0, 0, 0)) -> tuple:
    """A span's record (layout above) from its parts: `scope` a scope_record, `parent` a SpanContext
    or None, `attributes` a plain dict, `events` / `links` the SDK's Event / Link objects."""
    return (scope, context.trace_id, context.span_id, int(context.trace_flags),
            context.trace_state.to_header() if context.trace_state else "", parent.span_id if parent is not None else 0,
            bool(parent is not None and parent.is_remote), name, kind.value, start_ns, end_ns, attributes,
            tuple((e.name, e.timestamp or 0, _attrs(e.attributes), _dropped(e.attributes)) for e in events),
            tuple((link.context.trace_id, link.context.span_id, int(link.context.trace_flags),
                   link.context.trace_state.to_header() if link.context.trace_state else "",
                   bool(link.context.is_remote), _attrs(link.attributes), _dropped(link.attributes)) for link in links),
            status.status_code.value if status is not None else 0, (status.description or "") if status is not None else "",
            *dropped)


def span_record(span: Any) -> tuple:
    """The record of a ReadableSpan (spans from tracers)."""
    return record(scope_record(span.instrumentation_scope), span.context, span.parent, span.name, span.kind,
                  span.start_time or 0, span.end_time or 0, _attrs(span.attributes), span.events, span.links,
                  span.status, (span.dropped_attributes, span.dropped_events, span.dropped_links))


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    try:
        value = int(text) if text else default
    except ValueError:
        raise ValueError(f"{name} must be a positive integer, got {text!r}") from None
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {text!r}")
    return value


def _frame(message: Any) -> bytes:
    data = marshal.dumps(message)
    return _HEADER.pack(len(data)) + data


class SidecarSpanProcessor(SpanProcessor):
    """A span processor whose spans are exported by a child process (see the module doc)."""

    def __init__(self, resource: Any, endpoint: str, insecure: bool | None = None, *,
                 max_queue_size: int | None = None, command: Sequence[str] | None = None):
        exporter_kwargs = {"endpoint": endpoint, **({"insecure": insecure} if insecure is not None else {})}
        self._hello = ("hello", _VERSION, _attrs(resource.attributes), resource.schema_url or "", exporter_kwargs)
        self._command = list(command or (sys.executable, "-m", "minimax_m1.telemetry.span_sidecar"))
        self._max_queue = max_queue_size or _env_int("OTEL_BSP_MAX_QUEUE_SIZE", 2048)
        self._batch = _env_int("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512)
        self._delay_s = _env_int("OTEL_BSP_SCHEDULE_DELAY", 5000) / 1000
        self._queue: collections.deque = collections.deque()
        self._wake = threading.Event()
        self._write_lock = threading.Lock()  # frames are written whole, by one thread at a time
        self._flush_lock = threading.Lock()
        self._count_lock = threading.Lock()  # `dropped` is counted from several threads
        self._child: subprocess.Popen | None = None
        self._acks = b""  # unread bytes of the child's stdout
        self._token = 0
        self._restart_delay_s = _RESTART_FIRST_S
        self._restart_at = self._started_at = 0.0
        self.dropped = 0  # spans lost: queue full, a dead child, or a value marshal cannot carry
        self.starts = 0  # child processes started (1 + restarts)
        self._warned_at = -_WARN_EVERY_S
        self._closed = False  # shutdown began: no new spans
        self._finished = False  # shutdown done: no new child
        with self._write_lock:
            self._start_child()
        self._thread = threading.Thread(target=self._run, name="span-sidecar-writer", daemon=True)
        self._thread.start()

    @property
    def pid(self) -> int | None:
        child = self._child
        return child.pid if child is not None else None

    # -- the hot path ----------------------------------------------------------------------------
    def emit(self, record: tuple) -> None:
        """Queue one span record; the writer thread sends it."""
        queue = self._queue
        if len(queue) >= self._max_queue or self._closed:
            self._lose(1, "the span queue is full" if not self._closed else "the processor is shut down")
            return
        queue.append(record)
        if len(queue) == self._batch:
            self._wake.set()

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        pass

    def on_end(self, span: Any) -> None:
        if span.context is not None and span.context.trace_flags.sampled:
            self.emit(span_record(span))

    # -- the writer ------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self._delay_s)
            self._wake.clear()
            try:
                self._send_queued()
            except Exception:  # never let the writer die: spans would pile up unseen
                log.exception("span sidecar: sending spans failed")

    def _send_queued(self, timeout_s: float = -1) -> bool:
        """Send every queued span, a batch a frame; False if the write lock was not had in time (a
        child still exporting a full pipe's worth)."""
        if not self._write_lock.acquire(timeout=timeout_s):
            return False
        try:
            queue = self._queue
            while queue:
                batch = [queue.popleft() for _ in range(min(len(queue), self._batch))]
                try:
                    frame = _frame(("spans", batch))
                except ValueError:  # a value marshal cannot carry: find it, send the rest
                    batch = [r for r in batch if self._marshals(r)]
                    frame = _frame(("spans", batch))
                self._write(frame, len(batch))
            return True
        finally:
            self._write_lock.release()

    def _marshals(self, record: tuple) -> bool:
        try:
            marshal.dumps(record)
            return True
        except ValueError as exc:
            log.error("span sidecar: span %r dropped: a value cannot be sent (%s)", record[7], exc)
            self._count_dropped(1)
            return False

    def _write(self, frame: bytes, spans: int) -> bool:
        """Write a frame to the child (write lock held); on a dead child, count `spans` lost."""
        child = self._child
        if child is None and not self._start_child():
            self._lose(spans, "the span export process is not running")
            return False
        child = self._child
        try:
            child.stdin.write(frame)
            child.stdin.flush()
            return True
        except (OSError, ValueError):  # BrokenPipeError: the child exited
            code = child.poll()
            log.warning("span sidecar: the span export process (pid %d) exited (code %s); %d spans lost; "
                        "starting another", child.pid, code, spans)
            self._child = None
            self._count_dropped(spans)
            if time.monotonic() - self._started_at > _RESTART_MAX_S:  # it lived long: no back-off
                self._restart_at, self._restart_delay_s = 0.0, _RESTART_FIRST_S
            self._start_child()
            return False

    def _start_child(self) -> bool:
        """Start the child (write lock held) unless a restart is not due yet: 1 s after the last
        start, then 2, 4, ... up to 5 min while children keep dying young."""
        now = time.monotonic()
        if self._finished or now < self._restart_at:
            return False
        try:
            child = subprocess.Popen(self._command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True)
        except OSError as exc:
            log.error("span sidecar: cannot start %s: %s", " ".join(self._command), exc)
            child = None
        self._restart_at = now + self._restart_delay_s
        self._restart_delay_s = min(self._restart_delay_s * 2, _RESTART_MAX_S)
        if child is None:
            return False
        self.starts += 1
        self._child, self._acks, self._started_at = child, b"", now
        try:
            child.stdin.write(_frame(self._hello))
            child.stdin.flush()
        except OSError:
            pass  # it died at once: the next write finds out
        return True

    def _count_dropped(self, spans: int) -> None:
        with self._count_lock:
            self.dropped += spans

    def _lose(self, spans: int, why: str) -> None:
        self._count_dropped(spans)
        now = time.monotonic()
        if now - self._warned_at >= _WARN_EVERY_S:
            self._warned_at = now
            log.warning("span sidecar: %s; spans dropped (%d so far)", why, self.dropped)

    # -- flush and shutdown ----------------------------------------------------------------------
    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Send every queued span and wait until the child has exported them (True) or the time is up."""
        deadline = time.monotonic() + timeout_millis / 1000
        if not self._flush_lock.acquire(timeout=timeout_millis / 1000):
            return False
        try:
            if not self._send_queued(max(deadline - time.monotonic(), 0)):
                return False
            if not self._write_lock.acquire(timeout=max(deadline - time.monotonic(), 0)):
                return False
            try:
                self._token += 1
                token = self._token
                if not self._write(_frame(("flush", token)), 0):
                    return False
                child = self._child
            finally:
                self._write_lock.release()
            return self._await_ack(child, token, deadline)
        finally:
            self._flush_lock.release()

    def _await_ack(self, child: subprocess.Popen, token: int, deadline: float) -> bool:
        fd = child.stdout.fileno()
        while True:
            lines = self._acks.split(b"\n")
            self._acks = lines.pop()
            for line in lines:
                parts = line.split()
                if len(parts) == 3 and parts[0] == b"flushed" and int(parts[1]) == token:
                    return parts[2] == b"1"
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:  # the child exited
                    return False
                self._acks += chunk

    def shutdown(self) -> None:
        """Send what is queued, close the child's input and wait for it to export and exit (30 s;
        then it is killed, and what it had not exported is lost)."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        self._thread.join(10)
        if not self._send_queued(10):
            self._lose(len(self._queue), "the span export process is stuck")
        with self._write_lock:
            self._finished = True
            child, self._child = self._child, None
        if child is None:
            return
        try:
            child.stdin.close()
        except OSError:
            pass
        try:
            child.wait(30)
        except subprocess.TimeoutExpired:
            log.warning("span sidecar: the span export process did not finish in 30 s; killed")
            child.kill()
            child.wait()
        child.stdout.close()


# -- the child process ---------------------------------------------------------------------------

def _read_frame(stream: Any) -> Any:
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    (n,) = _HEADER.unpack(header)
    data = stream.read(n)
    if len(data) < n:
        return None
    return marshal.loads(data)


class _Rebuilder:
    """ReadableSpans from records, for the child's exporter."""

    def __init__(self, resource: Any):
        self.resource = resource
        self._scopes: dict[tuple, InstrumentationScope] = {}

    def _scope(self, record: tuple) -> InstrumentationScope:
        key = (record[0], record[1], record[2], tuple(sorted(record[3].items())) if record[3] else None)
        scope = self._scopes.get(key)
        if scope is None:
            scope = self._scopes[key] = InstrumentationScope(record[0], record[1] or None, record[2] or None, record[3])
        return scope

    @staticmethod
    def _counted(attributes: dict, dropped: int) -> Any:
        if not dropped:
            return attributes
        bounded = BoundedAttributes(maxlen=None, attributes=attributes, immutable=True)
        bounded.dropped = dropped
        return bounded

    @staticmethod
    def _listed(items: list, dropped: int) -> Any:
        if not dropped:
            return items
        bounded = BoundedList.from_seq(None, items)
        bounded.dropped = dropped
        return bounded

    @staticmethod
    def _context(trace_id: int, span_id: int, flags: int, state: str, remote: bool) -> SpanContext:
        return SpanContext(trace_id, span_id, is_remote=remote, trace_flags=TraceFlags(flags),
                           trace_state=TraceState.from_header([state]) if state else None)

    def span(self, r: tuple) -> ReadableSpan:
        (scope, trace_id, span_id, flags, state, parent_id, parent_remote, name, kind, start, end, attributes,
         events, links, code, description, dropped_attributes, dropped_events, dropped_links) = r
        parent = SpanContext(trace_id, parent_id, is_remote=parent_remote) if parent_id else None
        events = [Event(n, self._counted(a, d), timestamp=t) for n, t, a, d in events]
        links = [Link(self._context(t, s, f, st, rem), self._counted(a, d)) for t, s, f, st, rem, a, d in links]
        return ReadableSpan(name, context=self._context(trace_id, span_id, flags, state, False), parent=parent,
                            resource=self.resource, attributes=self._counted(attributes, dropped_attributes),
                            events=self._listed(events, dropped_events), links=self._listed(links, dropped_links),
                            kind=SpanKind(kind), instrumentation_scope=self._scope(scope),
                            status=Status(StatusCode(code), description or None),
                            start_time=start or None, end_time=end or None)


def main() -> int:
    """The child: read frames from stdin until its end, export each batch of spans in turn, answer
    flushes on stdout (every batch before a flush is exported by then)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)  # the parent's end (end of input) ends this process
    logging.basicConfig(level=os.environ.get("MINIMAX_M1_LOG_LEVEL", "WARNING").upper(),
                        format="%(asctime)s %(levelname)s span-sidecar %(name)s: %(message)s")
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace.export import SpanExportResult

    from minimax_m1.telemetry.otlp_spans import OTLPSpanBytesExporter

    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    hello = _read_frame(stdin)
    if not hello or hello[0] != "hello" or hello[1] != _VERSION:
        log.error("span sidecar: expected a version %d hello frame, got %r", _VERSION, hello and hello[:2])
        return 2
    _, _, resource_attributes, schema_url, exporter_kwargs = hello
    exporter = OTLPSpanBytesExporter(**exporter_kwargs)
    rebuild = _Rebuilder(Resource(resource_attributes, schema_url or None))
    failed = False  # an export since the last flush failed: the flush answers 0
    try:
        while (message := _read_frame(stdin)) is not None:
            if message[0] == "spans":
                spans = []
                for record in message[1]:
                    try:
                        spans.append(rebuild.span(record))
                    except Exception:
                        log.exception("span sidecar: a malformed span record was dropped")
                # retries within OTEL_EXPORTER_OTLP_TIMEOUT (default 10 s); logs a failure
                if spans and exporter.export(spans) is not SpanExportResult.SUCCESS:
                    failed = True
            elif message[0] == "flush":
                stdout.write(b"flushed %d %d\n" % (message[1], 0 if failed else 1))
                stdout.flush()
                failed = False
    finally:
        exporter.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
