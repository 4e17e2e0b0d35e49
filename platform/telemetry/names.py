"""Every instrument the platform emits, in one table: OpenTelemetry name, kind, unit, description.

gen_ai.* names are the OpenTelemetry GenAI semantic conventions (development status; checked
against opentelemetry-semantic-conventions 0.66b2 and the semantic-conventions-genai docs). The
conventions define no server-side token counter, so tokens/s comes from minimax_m1.engine.tokens
(attribute gen_ai.token.type as in the conventions); per-request billed usage is the convention's
gen_ai.client.token.usage, emitted by the gateway's otel_metrics billing hook (the gateway is the
GenAI client of the model server).

The Prometheus exporter turns a name into `name.replace(".", "_")`, appends `_seconds` for unit `s`,
drops `{...}` and `1` units, and appends `_total` to counters; histograms get `_bucket`, `_sum` and
`_count`. `Instrument.prometheus` gives that name; the dashboards are written with it.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Instrument:
    name: str
    kind: str  # counter | histogram | gauge (observable) | observable_counter
    unit: str
    description: str
    buckets: tuple[float, ...] | None = None

    @property
    def prometheus(self) -> str:
        base = self.name.replace(".", "_")
        if self.unit == "s":
            base += "_seconds"
        return base + "_total" if self.kind in ("counter", "observable_counter") else base


# Bucket boundaries advised by the GenAI conventions.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)

# -- engine ---------------------------------------------------------------------------------------
REQUEST_DURATION = Instrument("gen_ai.server.request.duration", "histogram", "s",
                              "Engine time per request, from arrival to the last token", DURATION_BUCKETS)
TIME_TO_FIRST_TOKEN = Instrument("gen_ai.server.time_to_first_token", "histogram", "s",
                                 "Time from arrival to the first output token", TTFT_BUCKETS)
TIME_PER_OUTPUT_TOKEN = Instrument("gen_ai.server.time_per_output_token", "histogram", "s",
                                   "Mean time per output token after the first, per successful request", TPOT_BUCKETS)
ENGINE_TOKENS = Instrument("minimax_m1.engine.tokens", "counter", "{token}",
                           "Tokens processed, by gen_ai.token.type (input = prompt, output = generated)")
QUEUE_DEPTH = Instrument("minimax_m1.engine.queue.depth", "gauge", "{request}", "Requests waiting for admission")
BATCH_SIZE = Instrument("minimax_m1.engine.batch.size", "gauge", "{request}", "Requests in the running batch")
SLOTS_USED = Instrument("minimax_m1.engine.state_slots.used", "gauge", "{slot}", "Lightning-state slots in use")
SLOTS_TOTAL = Instrument("minimax_m1.engine.state_slots.total", "gauge", "{slot}", "Lightning-state slots")
BLOCKS_USED = Instrument("minimax_m1.engine.kv_blocks.used", "gauge", "{block}", "Paged KV blocks in use")
BLOCKS_TOTAL = Instrument("minimax_m1.engine.kv_blocks.total", "gauge", "{block}", "Paged KV blocks")
PREEMPTIONS = Instrument("minimax_m1.engine.preemptions", "observable_counter", "{preemption}",
                         "Sequences preempted for lack of KV blocks (recomputed later)")
STEPS = Instrument("minimax_m1.engine.steps", "observable_counter", "{step}", "Engine steps run")
EXPERT_LOAD = Instrument("minimax_m1.engine.expert.load", "observable_counter", "{activation}",
                         "(token, expert) activations, by layer and expert")
EXPERT_IMBALANCE = Instrument("minimax_m1.engine.expert.imbalance", "gauge", "1",
                              "Max over mean expert load per layer, over recent steps (1 = balanced)")
INSTANCE_RESTARTS = Instrument("minimax_m1.engine.instance.restarts", "counter", "{restart}",
                               "Model instance failures that replace the instance")

# -- gateway --------------------------------------------------------------------------------------
RPC_DURATION = Instrument("rpc.server.call.duration", "histogram", "s",
                          "Gateway time per RPC, by method and status code", DURATION_BUCKETS)
GATEWAY_REQUESTS = Instrument("minimax_m1.gateway.requests", "counter", "{request}",
                              "Gateway RPCs, by method and status code")
GATEWAY_TOKENS = Instrument("minimax_m1.gateway.tokens", "counter", "{token}",
                            "Tokens settled per tenant, by gen_ai.token.type")
QUOTA_REJECTIONS = Instrument("minimax_m1.gateway.quota.rejections", "counter", "{request}",
                              "Requests refused by a tenant quota, by tenant and limit")
# The otel_metrics billing hook's (minimax_m1.gateway.hooks.OtelMetricsHook).
TOKEN_USAGE = Instrument("gen_ai.client.token.usage", "histogram", "{token}", "Tokens billed per request")
BILLING_REQUESTS = Instrument("minimax_m1.billing.requests", "counter", "{request}", "Billed requests")
BILLING_EXPERT_ACTIVATIONS = Instrument("minimax_m1.billing.expert_activations", "counter", "{activation}",
                                        "Billed (token, expert) activations")
BILLING_COMPUTE_TIME = Instrument("minimax_m1.billing.compute_time", "counter", "s", "Billed request time")
OUTBOX_LAG = Instrument("minimax_m1.billing.outbox.lag", "gauge", "s",
                        "Age of the oldest undelivered usage record, per billing hook (0 = none pending)")
OUTBOX_PENDING = Instrument("minimax_m1.billing.outbox.pending", "gauge", "{record}",
                            "Usage records waiting for delivery, per billing hook")

ALL = (REQUEST_DURATION, TIME_TO_FIRST_TOKEN, TIME_PER_OUTPUT_TOKEN, ENGINE_TOKENS, QUEUE_DEPTH, BATCH_SIZE,
       SLOTS_USED, SLOTS_TOTAL, BLOCKS_USED, BLOCKS_TOTAL, PREEMPTIONS, STEPS, EXPERT_LOAD, EXPERT_IMBALANCE,
       INSTANCE_RESTARTS, RPC_DURATION, GATEWAY_REQUESTS, GATEWAY_TOKENS, QUOTA_REJECTIONS, OUTBOX_LAG, OUTBOX_PENDING)

# Attribute keys.
OPERATION = "gen_ai.operation.name"
OPERATION_VALUE = "text_completion"
REQUEST_MODEL = "gen_ai.request.model"
TOKEN_TYPE = "gen_ai.token.type"
ERROR_TYPE = "error.type"
RPC_METHOD = "rpc.method"
RPC_STATUS = "rpc.response.status_code"  # the status code's name, e.g. RESOURCE_EXHAUSTED


def create(meter, inst: Instrument, callbacks=None, buffered: bool = True):
    """Create `inst` on `meter` (observable kinds take callbacks). Counters are Tallies; histograms
    are BufferedHistograms unless `buffered` is False (exemplars need the record's own context)."""
    if inst.kind == "counter":
        return Tally(meter, inst)
    if inst.kind == "histogram":
        hist = meter.create_histogram(inst.name, unit=inst.unit, description=inst.description,
                                      explicit_bucket_boundaries_advisory=inst.buckets)
        return BufferedHistogram(meter, inst, hist) if buffered else hist
    if inst.kind == "gauge":
        return meter.create_observable_gauge(inst.name, callbacks=callbacks, unit=inst.unit, description=inst.description)
    if inst.kind == "observable_counter":
        return meter.create_observable_counter(inst.name, callbacks=callbacks, unit=inst.unit, description=inst.description)
    raise ValueError(f"unknown instrument kind {inst.kind!r}")


class Tally:
    """A counter summed in this process and read by OpenTelemetry when it collects, as an observable
    counter: the same monotonic sum reaches OTLP and Prometheus (`_total`). A synchronous SDK counter
    copies and hashes the attributes once per metric reader on every add (~5 us with OTLP and
    Prometheus both on, on the request path); here an add is a dict update. Like the SDK, it keeps
    at most MAX_SERIES attribute sets and folds the rest into one overflow series."""

    MAX_SERIES = 2000
    _OVERFLOW = (("otel.metric.overflow", True),)

    def __init__(self, meter, inst: Instrument):
        self._sums: dict[tuple, float] = {}
        self._lock = threading.Lock()
        meter.create_observable_counter(inst.name, callbacks=[self._observe], unit=inst.unit,
                                        description=inst.description)

    def add(self, amount: float, attributes: dict | None = None) -> None:
        key = tuple(sorted(attributes.items())) if attributes else ()
        with self._lock:
            if key not in self._sums and len(self._sums) >= self.MAX_SERIES:
                key = self._OVERFLOW
            self._sums[key] = self._sums.get(key, 0) + amount

    def _observe(self, options):
        from opentelemetry.metrics import Observation

        with self._lock:
            items = list(self._sums.items())
        return [Observation(value, dict(key)) for key, value in items]


class BufferedHistogram:
    """An OpenTelemetry histogram whose records wait in a list and reach the SDK in batches: when
    a metric reader collects (a callback of a hidden observable gauge, `<name>.flush`, which never
    reports a point, hands them over first, so every collection sees every record) or when
    MAX_PENDING are waiting. The SDK's record path (measurement object, exemplar filter, attribute
    hashing, three locks) costs ~5 us hot, but ~15-25 us a record inside the engine and gateway under
    load, where each request's few records find it cold; replayed in a batch it runs hot. A record
    here is a list append. Use it only where records carry no exemplars (their trace context is
    the recording call's, which a later flush does not have)."""

    # A full buffer is flushed by the recording call, on the request path: 512 replays take ~3 ms
    # (4096 would stall that request ~20 ms). Collections (10 s OTLP pushes, scrapes) flush before.
    MAX_PENDING = 512

    def __init__(self, meter, inst: Instrument, histogram):
        self._hist = histogram
        self._pending: list[tuple[float, dict | None]] = []
        self._lock = threading.Lock()
        meter.create_observable_gauge(f"{inst.name}.flush", callbacks=[self._flush_for_collection],
                                      description=f"(no data: hands buffered {inst.name} records to a collection)")

    def record(self, amount: float, attributes: dict | None = None) -> None:
        with self._lock:
            self._pending.append((amount, attributes))
            full = len(self._pending) >= self.MAX_PENDING
        if full:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        for amount, attributes in pending:
            self._hist.record(amount, attributes)

    def _flush_for_collection(self, options):
        self.flush()
        return []
