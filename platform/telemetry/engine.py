"""The engine's telemetry: a span tree per request, gen_ai latency metrics, capacity and MoE gauges.

    tel = instrument_engine(async_engine, model_name)          # once per engine (replica)
    traced = tel.start_request(engine_request_id, request, grpc_context)   # None when telemetry is off
    async for out in async_engine.generate(...): traced.output(out); ...
    traced.end(error)                                          # after closing the stream

The hook points in the engine:
- `start_request` opens, on the event loop, the request span (a child of the gateway's span, from
  the traceparent in the gRPC metadata); its RequestTrace sees every output inline (no relaying
  generator: the `gen_ai.first_token` event and TTFT) and ends with the `engine.finish` span and
  TPOT / duration / token metrics;
- `LLMEngine.observer` (this object) is told about every step in the engine's loop thread, and
  only notes times there (the step loop is the engine's critical path): `engine.queue` ends when
  a request is first scheduled, each prefill chunk is an `engine.prefill` span, a run of decode
  steps is an `engine.decode` span, a preemption is an `engine.preemption` event (and the request
  queues again); the event loop emits these spans, with their recorded times, when the request
  ends. Expert counts feed the load metrics;
- `wants_routing()` asks the engine to collect expert counts this step, every `expert_load_every`
  steps (collecting costs the model a little per step). The load counter adds the counts of those
  sampled steps times `expert_load_every`, an unbiased estimate; 1 makes it exact. Steps that
  collect routing for a request's own routing log are not counted unless sampled.
- `on_instance_failure(exc)` counts a model-instance restart.

Span timestamps are wall-clock ns (time.time_ns), as OpenTelemetry wants.
"""
from __future__ import annotations

import asyncio
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable

from opentelemetry.metrics import Observation
from opentelemetry.sdk.trace import Event
from opentelemetry.trace import SpanKind, Status, StatusCode

from minimax_m1.telemetry import names
from minimax_m1.telemetry.finished_spans import FinishedSpans
from minimax_m1.telemetry.propagation import extract_context
from minimax_m1.telemetry.setup import Telemetry, current

_IMBALANCE_DECAY = 0.98  # per sampled step: the imbalance gauge looks at roughly the last 50 steps


@dataclass(eq=False, slots=True)
class _Live:
    """One request's timeline while it runs. The loop thread only appends plain tuples here (span
    objects cost the step loop, the engine's critical path); the event loop turns them, and the
    request, into spans when the request ends. The loop thread writes it while it is in
    EngineTelemetry._live; the event loop takes it out first (EngineTelemetry._take)."""

    context: Any  # SpanContext of the request span (its flags say whether the sampler kept it)
    parent: Any  # SpanContext of the caller's span (from the traceparent), or an invalid one
    name: str
    start_ns: int
    attributes: dict
    queued_ns: int | None  # the current wait in the queue began (None while scheduled)
    requeued: bool = False
    decode_ns: int | None = None  # the current run of decode steps began
    decode_steps: int = 0  # in the current run
    prefill_chunks: int = 0
    preemptions: int = 0
    # ("queue", start, end, requeued) | ("prefill", start, end, attrs) | ("decode", start, end, steps)
    # | ("preemption", at, attrs)
    phases: list = field(default_factory=list)
    events: list = field(default_factory=list)  # of the request span: first token, preemptions

    def end_queue(self, at_ns: int) -> None:
        if self.queued_ns is not None:
            self.phases.append(("queue", self.queued_ns, at_ns, self.requeued))
            self.queued_ns = None

    def end_decode(self, at_ns: int) -> None:
        if self.decode_ns is not None:
            self.phases.append(("decode", self.decode_ns, at_ns, self.decode_steps))
            self.decode_ns, self.decode_steps = None, 0


class EngineMetrics:
    """The engine instruments of one Telemetry (created once; every engine in the process reports)."""

    def __init__(self, telemetry: Telemetry):
        self.telemetry = telemetry
        self.spans = FinishedSpans(telemetry, "minimax_m1.engine")  # every span is built when its request ends
        meter = telemetry.meter("minimax_m1.engine")
        self.engines: weakref.WeakSet[EngineTelemetry] = weakref.WeakSet()
        self.duration = names.create(meter, names.REQUEST_DURATION)
        self.ttft = names.create(meter, names.TIME_TO_FIRST_TOKEN)
        self.tpot = names.create(meter, names.TIME_PER_OUTPUT_TOKEN)
        self.tokens = names.create(meter, names.ENGINE_TOKENS)
        self.restarts = names.create(meter, names.INSTANCE_RESTARTS)
        gauges = [(names.QUEUE_DEPTH, lambda s: s.num_waiting), (names.BATCH_SIZE, lambda s: s.num_running),
                  (names.SLOTS_USED, lambda s: s.cache.slots_used), (names.SLOTS_TOTAL, lambda s: s.cache.slots_total),
                  (names.BLOCKS_USED, lambda s: s.cache.blocks_used), (names.BLOCKS_TOTAL, lambda s: s.cache.blocks_total),
                  (names.PREEMPTIONS, lambda s: s.num_preemptions), (names.STEPS, lambda s: s.num_steps)]
        for inst, read in gauges:
            names.create(meter, inst, [self._stats_callback(read)])
        names.create(meter, names.EXPERT_LOAD, [self._observe_load])
        names.create(meter, names.EXPERT_IMBALANCE, [self._observe_imbalance])

    def _stats_callback(self, read: Callable[[Any], float]):
        def callback(options):
            return [Observation(read(e.stats()), e.attributes) for e in list(self.engines)]
        return callback

    def _observe_load(self, options):
        out = []
        for e in list(self.engines):
            for layer, row in enumerate(e.expert_load()):
                out += [Observation(v, {**e.attributes, "layer": layer, "expert": x}) for x, v in enumerate(row)]
        return out

    def _observe_imbalance(self, options):
        out = []
        for e in list(self.engines):
            out += [Observation(v, {**e.attributes, "layer": layer}) for layer, v in enumerate(e.imbalance())]
        return out


class EngineTelemetry:
    def __init__(self, metrics: EngineMetrics, stats: Callable[[], Any], model_name: str, num_layers: int, num_experts: int):
        import torch

        self._m = metrics
        config = metrics.telemetry.config
        self.enabled = metrics.telemetry.enabled
        self.stats = stats
        self.model_name = model_name
        self.attributes = {names.REQUEST_MODEL: model_name}
        self._record_prompts = config.record_prompts
        self._every = config.expert_load_every if self.enabled else 0
        self._step_no = 0
        self._sampled = False  # this step's expert counts feed the load metrics
        self._load_lock = threading.Lock()  # the load tensors: the loop thread and metric collections
        self._live: dict[str, _Live] = {}  # set and popped by the event loop, read by the loop thread
        self._in_step = 0  # odd while the loop thread is inside on_step (see _take)
        self._load = torch.zeros(num_layers, num_experts, dtype=torch.int64)  # [L, E] since start
        self._recent = torch.zeros(num_layers, num_experts, dtype=torch.float64)  # [L, E] decayed
        metrics.restarts.add(0, {**self.attributes, "reason": "none"})  # the series exists from the start
        metrics.engines.add(self)

    # -- called by the engine's loop thread ------------------------------------------------------
    def wants_routing(self) -> bool:
        if not self._every:
            return False
        self._step_no += 1
        self._sampled = self._step_no % self._every == 0
        return self._sampled

    def on_step(self, batch, outputs, expert_counts, started_ns: int) -> None:
        """After a step: `batch` as scheduled, its outputs, expert counts [S, L, E] (or None)."""
        if not self.enabled:
            return
        ended_ns = time.time_ns()
        if expert_counts is not None and self._sampled:
            step = expert_counts.sum(0)  # [L, E]
            with self._load_lock:
                self._load.add_(step, alpha=self._every)
                self._recent.mul_(_IMBALANCE_DECAY).add_(step)
        if not self._live:
            return
        self._in_step += 1  # no lock per step: the event loop waits for this step instead (_take)
        try:
            lives = self._live
            for seq in batch.preempted:
                live = lives.get(seq.request_id)
                if live is None:
                    continue
                live.preemptions += 1
                live.phases.append(("preemption", started_ns, {"engine.computed_tokens_lost": seq.num_tokens,
                                                               "engine.preemptions": live.preemptions}))
                live.end_decode(started_ns)
                if live.queued_ns is None:
                    live.queued_ns, live.requeued = started_ns, True
            for seq, n in zip(batch.seqs, batch.num_new_tokens):
                live = lives.get(seq.request_id)
                if live is None:
                    continue
                # The next step of a run of decode steps (most entries) skips the checks: decode_ns
                # is set only by a decode step and cleared by a preemption.
                if n != 1 or live.decode_ns is None:
                    live.end_queue(started_ns)
                    start = seq.num_computed - n
                    if n > 1 or start < len(seq.prompt_ids):
                        live.prefill_chunks += 1
                        live.phases.append(("prefill", started_ns, ended_ns, {
                            "engine.chunk.start": start, "engine.chunk.tokens": n,
                            "engine.chunk.index": live.prefill_chunks, "engine.batch.sequences": len(batch.seqs),
                            "engine.batch.tokens": batch.num_tokens,
                            "engine.recompute": start < seq.num_counted and live.preemptions > 0}))
                        continue  # (a prefill chunk never ends a run of decode steps: none is open)
                    live.decode_ns = started_ns
                live.decode_steps += 1
                if seq.finish_reason is not None:
                    live.end_decode(ended_ns)
        finally:
            self._in_step += 1

    def on_instance_failure(self, exc: BaseException) -> None:
        self._m.restarts.add(1, {**self.attributes, "reason": type(exc).__name__})

    # -- called on the event loop ----------------------------------------------------------------
    def start_request(self, engine_request_id: str, request: Any, grpc_context: Any = None) -> "RequestTrace | None":
        """Start a request's trace: its span's ids and sampling decision (a child of the caller's
        span, from the traceparent in the gRPC metadata) and its time in the queue; the spans are
        built at `end()`. The server calls `output()` for every output of the request's stream and
        `end()` once after closing it. None when telemetry is off.

        `request` is the GenerateRequest; `grpc_context` supplies the caller's traceparent (Ray
        Serve's context and grpc.aio's both have invocation_metadata())."""
        if not self.enabled:
            return None
        m = self._m
        metadata = grpc_context.invocation_metadata() if grpc_context is not None else None
        attrs = {names.OPERATION: names.OPERATION_VALUE, names.REQUEST_MODEL: self.model_name,
                 "gen_ai.request.max_tokens": request.max_output_tokens, "minimax_m1.request_id": request.request_id,
                 "minimax_m1.engine_request_id": engine_request_id}
        if self._record_prompts:
            attrs["gen_ai.prompt"] = request.input
        parent = extract_context(metadata)
        name = f"{names.OPERATION_VALUE} {self.model_name}"
        now = time.time_ns()
        live = _Live(*m.spans.start(parent, name, SpanKind.SERVER, attrs), name, now, attrs, queued_ns=now)
        self._live[engine_request_id] = live  # one dict store: atomic under the GIL
        return RequestTrace(self, live, engine_request_id)

    def _take(self, engine_request_id: str) -> None:
        """Out of the loop thread's reach: after the pop no step finds the request, and a step that
        found it before is inside on_step now (it counted in first) and ends within microseconds:
        wait for it. The loop thread never waits for the event loop, so this cannot deadlock."""
        self._live.pop(engine_request_id, None)
        mark = self._in_step
        if mark % 2:
            while self._in_step == mark:
                time.sleep(0)  # hands the GIL to the loop thread

    def _finish(self, live: _Live, engine_request_id: str, started: float, first: float | None,
                last: Any, error: BaseException | None, finish_ns: int) -> None:
        m = self._m
        ended = time.perf_counter()
        self._take(engine_request_id)
        live.end_queue(finish_ns)
        live.end_decode(finish_ns)
        error_type = _error_type(error)
        attrs: dict[str, Any] = {"engine.prefill_chunks": live.prefill_chunks, "engine.decode_steps": sum(p[3] for p in live.phases if p[0] == "decode"),
                                 "engine.preemptions": live.preemptions}
        if last is not None:
            attrs.update({"gen_ai.usage.input_tokens": last.input_tokens, "gen_ai.usage.output_tokens": last.output_tokens,
                          "minimax_m1.usage.expert_activations": last.expert_activations})
            if last.finish_reason is not None:
                attrs["gen_ai.response.finish_reasons"] = (last.finish_reason.name.lower(),)
            m.tokens.add(last.input_tokens, {**self.attributes, names.TOKEN_TYPE: "input"})
            m.tokens.add(last.output_tokens, {**self.attributes, names.TOKEN_TYPE: "output"})
        metric_attrs = {names.OPERATION: names.OPERATION_VALUE, **self.attributes}
        status = None
        if error_type is not None:
            metric_attrs[names.ERROR_TYPE] = error_type
            live.attributes[names.ERROR_TYPE] = error_type
            if error_type not in ("CANCELLED", "INVALID_ARGUMENT", "OUT_OF_RANGE"):
                status = Status(StatusCode.ERROR, str(error)[:200])
        elif first is not None and last is not None and last.output_tokens > 1:
            # the last output's time is the stream's end, a few microseconds before `ended`
            m.tpot.record((ended - first) / (last.output_tokens - 1), self.attributes)
        m.duration.record(ended - started, metric_attrs)
        if live.context.trace_flags.sampled:
            self._emit_spans(live, finish_ns, attrs, status)

    def _emit_spans(self, live: _Live, finish_ns: int, attrs: dict, status: Status | None) -> None:
        """The request's span tree, from the phases the step loop noted."""
        spans, request = self._m.spans, live.context
        for phase in live.phases:
            kind = phase[0]
            if kind == "preemption":
                live.events.append(Event("engine.preemption", phase[2], timestamp=phase[1]))
                continue
            if kind == "queue":
                phase_attrs = {"engine.requeued": True} if phase[3] else None
            elif kind == "prefill":
                phase_attrs = phase[3]
            else:
                phase_attrs = {"engine.decode_steps": phase[3]}
            spans.emit(spans.child(request), request, f"engine.{kind}", phase[1], phase[2], phase_attrs)
        end_ns = time.time_ns()
        spans.emit(spans.child(request), request, "engine.finish", finish_ns, end_ns, attrs)
        spans.emit(request, live.parent, live.name, live.start_ns, end_ns, {**live.attributes, **attrs},
                   SpanKind.SERVER, live.events, status)

    # -- readings for the observable instruments -------------------------------------------------
    def expert_load(self) -> list[list[int]]:
        with self._load_lock:
            return self._load.tolist()

    def imbalance(self) -> list[float]:
        with self._load_lock:
            recent = self._recent.clone()
        mean = recent.mean(dim=1)  # [L]
        ratio = recent.max(dim=1).values / mean.clamp_min(1e-12)
        return [float(r) if m > 0 else 1.0 for r, m in zip(ratio.tolist(), mean.tolist())]



class RequestTrace:
    """One request's telemetry while it streams (event loop only): the first-token event and TTFT on
    the first output with tokens; spans, TPOT, duration and token counts at `end()`."""

    __slots__ = ("_tel", "_live", "_id", "_started", "_first", "_last")

    def __init__(self, tel: EngineTelemetry, live: _Live, engine_request_id: str):
        self._tel, self._live, self._id = tel, live, engine_request_id
        self._started = time.perf_counter()
        self._first = self._last = None

    def output(self, out: Any) -> None:
        """Every RequestOutput of the request's stream, in order."""
        if self._first is None and out.output_tokens:
            self._first = time.perf_counter()
            self._live.events.append(Event("gen_ai.first_token", {}, timestamp=time.time_ns()))
            self._tel._m.ttft.record(self._first - self._started, self._tel.attributes)
        self._last = out

    def end(self, error: BaseException | None = None) -> None:
        """After the stream closed (finished, failed with `error`, or cancelled: GeneratorExit /
        CancelledError)."""
        self._tel._finish(self._live, self._id, self._started, self._first, self._last, error, time.time_ns())


def _error_type(error: BaseException | None) -> str | None:
    if error is None:
        return None
    if isinstance(error, (GeneratorExit, asyncio.CancelledError)):
        return "CANCELLED"
    from minimax_m1.engine.errors import grpc_status

    return grpc_status(error)[0].name


def instrument_engine(async_engine: Any, model_name: str, telemetry: Telemetry | None = None) -> EngineTelemetry:
    """Attach telemetry to an AsyncEngine: its LLMEngine reports each step to the returned object."""
    metrics = (telemetry or current()).component("engine", EngineMetrics)
    engine = async_engine.engine
    mc = engine.model_config
    tel = EngineTelemetry(metrics, async_engine.stats, model_name, mc.num_hidden_layers, mc.num_local_experts)
    engine.observer = tel
    return tel


__all__ = ["EngineTelemetry", "EngineMetrics", "RequestTrace", "instrument_engine"]
