"""A real OTLP/gRPC receiver for tests: the opentelemetry-proto collector services on 127.0.0.1.

    receiver = OtlpReceiver().start()
    receiver.endpoint                     # "http://127.0.0.1:<port>" for OTEL_EXPORTER_OTLP_ENDPOINT
    receiver.spans()                      # [ReceivedSpan], every span of every Export call so far
    receiver.metric_names()               # {(service.name, metric name)}
    receiver.wait_for(lambda r: ..., timeout_s)
    receiver.gate = threading.Event()     # span exports wait until gate.set(): a slow collector
    receiver.stop()
"""
from __future__ import annotations

import threading
import time
from concurrent import futures
from dataclasses import dataclass

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


def attributes(kvs) -> dict:
    out = {}
    for kv in kvs:
        field = kv.value.WhichOneof("value")
        value = getattr(kv.value, field) if field else None
        if field == "array_value":
            value = tuple(getattr(v, v.WhichOneof("value")) for v in value.values)
        out[kv.key] = value
    return out


@dataclass
class ReceivedSpan:
    resource: dict
    scope: str
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    attributes: dict
    events: list[str]


class _Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: "OtlpReceiver"):
        self.receiver = receiver

    def Export(self, request, context):
        if self.receiver.gate is not None:
            self.receiver.gate.wait()  # a slow collector, for tests
        with self.receiver.lock:
            self.receiver.trace_requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()


class _Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, receiver: "OtlpReceiver"):
        self.receiver = receiver

    def Export(self, request, context):
        with self.receiver.lock:
            self.receiver.metric_requests.append(request)
        return metrics_service_pb2.ExportMetricsServiceResponse()


class OtlpReceiver:
    def __init__(self):
        self.lock = threading.Lock()
        self.trace_requests: list = []
        self.metric_requests: list = []
        self.gate: threading.Event | None = None  # when set to an Event, span exports wait for it
        self.port = 0
        self._server: grpc.Server | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "OtlpReceiver":
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Traces(self), self._server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_Metrics(self), self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(0)
            self._server = None

    def spans(self) -> list[ReceivedSpan]:
        with self.lock:
            requests = list(self.trace_requests)
        out = []
        for req in requests:
            for rs in req.resource_spans:
                resource = attributes(rs.resource.attributes)
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        out.append(ReceivedSpan(resource, ss.scope.name, s.name, s.trace_id.hex(), s.span_id.hex(),
                                                s.parent_span_id.hex(), s.kind, attributes(s.attributes),
                                                [e.name for e in s.events]))
        return out

    def metrics(self) -> list[tuple[dict, str, object]]:
        """(resource attributes, metric name, the Metric proto) for every exported metric."""
        with self.lock:
            requests = list(self.metric_requests)
        out = []
        for req in requests:
            for rm in req.resource_metrics:
                resource = attributes(rm.resource.attributes)
                for sm in rm.scope_metrics:
                    out += [(resource, m.name, m) for m in sm.metrics]
        return out

    def metric_names(self) -> set[tuple[str, str]]:
        return {(r.get("service.name"), name) for r, name, _ in self.metrics()}

    def wait_for(self, predicate, timeout_s: float = 30.0, what: str = "the expected telemetry"):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            result = predicate(self)
            if result:
                return result
            time.sleep(0.1)
        raise AssertionError(f"OTLP receiver did not get {what} within {timeout_s} s")


def main() -> None:
    """`python tests/telemetry/otlp_receiver.py`: a receiver process for benchmarks. Prints
    `otlp receiver <port>`; on SIGTERM prints `received <spans> spans, <n> metric exports`."""
    import signal

    receiver = OtlpReceiver().start()
    print(f"otlp receiver {receiver.port}", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    done.wait()
    receiver.stop()
    print(f"received {len(receiver.spans())} spans, {len(receiver.metric_requests)} metric exports", flush=True)


if __name__ == "__main__":
    main()
