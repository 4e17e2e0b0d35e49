"""LLMEngine: one model instance, a scheduler and the per-request state, driven step by step.

    engine = LLMEngine(instance, tokenizer, EngineConfig(...))
    engine.add(engine.make_sequence("r1", "Hello", RequestParams(max_output_tokens=8)))
    while engine.has_unfinished():
        for out in engine.step(): ...            # RequestOutput: text delta, usage, finish

Each step: schedule -> one ModelInstance.step -> sample -> thinking budget -> stops -> detokenise
-> free the state of finished sequences. The async wrapper (async_engine.py) runs this loop in a
thread for Ray Serve. Instances are chosen by name and imported lazily (`make_instance`).
"""
from __future__ import annotations

import itertools
import logging
import math
import time
from dataclasses import dataclass, fields
from typing import Any, Mapping

import torch

from minimax_m1.engine.block_manager import CacheStats, StateManager
from minimax_m1.engine.detokenizer import IncrementalDetokenizer
from minimax_m1.engine.errors import ContextWindowExceededError, EngineDeadError, EngineRequestError, InvalidRequestError
from minimax_m1.engine.instance import CacheShape, ModelInstance, StepRequest
from minimax_m1.engine.request import FinishReason, RequestParams, Sequence, Status
from minimax_m1.engine.scheduler import ScheduledBatch, Scheduler, SchedulerConfig
from minimax_m1.model_shards.sampling import sample_next

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """The `engine` block of the serving config (Helm values render into it)."""

    max_num_seqs: int = 32
    max_batch_tokens: int = 1024
    prefill_chunk_size: int = 256
    kv_block_size: int = 16
    num_kv_blocks: int = 2048
    num_state_slots: int = 0  # 0 = max_num_seqs

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            low = 0 if f.name == "num_state_slots" else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"engine config field '{f.name}' must be an integer >= {low}, got {value!r}")
        self.scheduler_config()  # validates the cross-field rules

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> "EngineConfig":
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown engine config field(s) {unknown}; known: {sorted(known)}")
        return cls(**data)

    def scheduler_config(self) -> SchedulerConfig:
        return SchedulerConfig(self.max_num_seqs, self.max_batch_tokens, self.prefill_chunk_size)

    def cache_shape(self) -> CacheShape:
        return CacheShape(self.num_state_slots or self.max_num_seqs, self.num_kv_blocks, self.kv_block_size)


@dataclass(slots=True)
class RequestOutput:
    """What one step produced for one request. Usage fields are cumulative."""

    request_id: str
    text_delta: str
    token_ids: list[int]  # tokens added this step
    input_tokens: int
    output_tokens: int
    expert_activations: int
    finish_reason: FinishReason | None = None
    routing: list[list[int]] | None = None  # [L][E] counts, on the last output when requested
    error: BaseException | None = None  # set (with finish_reason ERROR) when the request failed

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(frozen=True, slots=True)
class EngineStats:
    cache: CacheStats
    num_waiting: int
    num_running: int
    num_preemptions: int
    num_steps: int
    dead: bool


def make_instance(model_path: str, cache_shape: CacheShape, plan=None, **kwargs: Any) -> ModelInstance:
    """Choose the ModelInstance by plan: no plan (tp = ep = 1, no Ray) runs in this process; a
    ShardPlan imports the Ray-sharded instance (only then, so unit tests need neither Ray nor it)."""
    if plan is None:
        from minimax_m1.engine.instance import InProcessModelInstance

        return InProcessModelInstance.from_pretrained(model_path, cache_shape, **kwargs)
    from minimax_m1.engine.sharded import RayModelInstance

    return RayModelInstance(model_path, plan, cache_shape, **kwargs)


class LLMEngine:
    def __init__(self, instance: ModelInstance, tokenizer, config: EngineConfig, model_name: str = "minimax-m1"):
        self.instance = instance
        self.model_config = instance.config
        self.tokenizer = tokenizer  # MiniMaxM1Tokenizer
        self.config = config
        self.model_name = model_name
        shape = instance.cache_shape
        self.state = StateManager(shape.num_slots, shape.num_blocks, shape.block_size)
        self.scheduler = Scheduler(config.scheduler_config(), self.state)
        self._seqs: dict[str, Sequence] = {}
        self._detok: dict[str, IncrementalDetokenizer] = {}
        self._arrivals = itertools.count()
        self._num_steps = 0
        self.dead: EngineDeadError | None = None
        # Told about every step (minimax_m1.telemetry.engine.EngineTelemetry): wants_routing(),
        # on_step(batch, outputs, expert_counts, started_ns), on_instance_failure(exc).
        self.observer = None
        mc = self.model_config
        self._eos = frozenset(mc.eos_token_id)
        self._moe_layers = mc.num_hidden_layers
        self._activations_per_token = mc.num_hidden_layers * mc.num_experts_per_tok  # exact top-k
        self._think_start, self._think_end = mc.think_start_token_id, mc.think_end_token_id
        self.max_context = min(mc.max_position_embeddings, self.state.capacity_tokens)

    # ---- requests -----------------------------------------------------------------------------
    def make_sequence(self, request_id: str, prompt: str | list[int], params: RequestParams) -> Sequence:
        """Tokenise and check a request (thread-safe; raises per-request errors)."""
        if self.dead is not None:
            raise self.dead
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]
        if not ids:
            raise InvalidRequestError("input is empty: it must hold at least one token")
        vocab = self.model_config.vocab_size
        if any(t < 0 or t >= vocab for t in ids):
            raise InvalidRequestError(f"input token ids must be in [0, {vocab})")
        limit = min(params.context_window or self.max_context, self.max_context)
        if len(ids) >= limit:
            which = "context_window" if params.context_window and params.context_window <= self.max_context else "the model's context limit"
            raise ContextWindowExceededError(
                f"input has {len(ids)} tokens; {which} is {limit} tokens (input + output), which leaves no room to generate")
        seq = Sequence(request_id, ids, params, next(self._arrivals), limit)
        if self._think_start is not None and params.thinking_budget:
            # A prompt that ends inside an open <think> section (a template may open it) starts thinking.
            last_open = max((i for i, t in enumerate(ids) if t == self._think_start), default=-1)
            last_close = max((i for i, t in enumerate(ids) if t == self._think_end), default=-1)
            seq.thinking = last_open > last_close
        if params.return_routing_log:
            seq.routing = torch.zeros(self._moe_layers, self.model_config.num_local_experts, dtype=torch.int64)
        return seq

    def add(self, seq: Sequence) -> None:
        if self.dead is not None:
            raise self.dead
        if seq.request_id in self._seqs:
            raise InvalidRequestError(f"request id {seq.request_id!r} is already running")
        self._seqs[seq.request_id] = seq
        self._detok[seq.request_id] = IncrementalDetokenizer(self.tokenizer.backend, seq.prompt_ids, seq.params.stop)
        self.scheduler.add(seq)

    def add_request(self, request_id: str, prompt: str | list[int], params: RequestParams) -> Sequence:
        seq = self.make_sequence(request_id, prompt, params)
        self.add(seq)
        return seq

    def abort(self, request_id: str, reason: FinishReason = FinishReason.CANCELLED,
              error: BaseException | None = None) -> RequestOutput | None:
        """End a request now and free its slot and blocks. None if it is not in the engine."""
        seq = self._seqs.get(request_id)
        if seq is None:
            return None
        return self._finish(seq, reason, "", [], error)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def stats(self) -> EngineStats:
        return EngineStats(self.state.stats(), len(self.scheduler.waiting), len(self.scheduler.running),
                           self.scheduler.num_preemptions, self._num_steps, self.dead is not None)

    # ---- one iteration -------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        if self.dead is not None:
            return []
        batch = self.scheduler.schedule()
        if not batch:
            return []
        observer = self.observer
        started_ns = time.time_ns()
        try:
            logits, counts = self._run(batch, observer is not None and observer.wants_routing())
        except Exception as exc:  # a lost worker, or a broken cache: nothing in flight can continue
            log.exception("model instance step failed; the engine is dead")
            if observer is not None:
                observer.on_instance_failure(exc)
            return self._die(exc)
        self._num_steps += 1
        outputs = self._postprocess(batch, logits, counts)
        if observer is not None:
            observer.on_step(batch, outputs, counts, started_ns)
        return outputs

    def _run(self, batch: ScheduledBatch, collect: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One instance step for the whole batch, one-token sequences first: they form the decode
        part of the step (ForwardBatch.num_decode), so decodes and prefill chunks share every
        projection and MoE pass. Returns logits [S, V] and counts [S, L, E] in batch order."""
        seqs, lens = batch.seqs, batch.num_new_tokens
        collect = collect or any(s.routing is not None or s.params.expert_threshold is not None for s in seqs)
        # decodes first, by slot (consecutive slots update their lightning states in place), then chunks
        order = sorted(range(len(seqs)), key=lambda i: (lens[i] != 1, seqs[i].slot if lens[i] == 1 else 0))
        result = self.instance.step(self._step_request([seqs[i] for i in order], [lens[i] for i in order], collect))
        if all(i == j for i, j in enumerate(order)):  # already decodes first
            return result.logits, result.expert_counts
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[order] = torch.arange(len(order))
        counts = result.expert_counts
        return result.logits[inverse], (None if counts is None else counts[inverse])

    def _step_request(self, seqs: list[Sequence], lens: list[int], collect: bool) -> StepRequest:
        token_ids: list[int] = []
        starts, thresholds = [], []
        for seq, n in zip(seqs, lens):
            token_ids += seq.token_slice(seq.num_computed, seq.num_computed + n)
            starts.append(seq.num_computed)
            thresholds.append(seq.expert_threshold_value)
        any_threshold = any(not math.isnan(t) for t in thresholds)
        return StepRequest(token_ids, list(lens), starts, [s.slot for s in seqs], [list(s.blocks) for s in seqs],
                           thresholds if any_threshold else None, collect)

    def _postprocess(self, batch: ScheduledBatch, logits: torch.Tensor, counts: torch.Tensor | None) -> list[RequestOutput]:
        to_sample: list[int] = []
        for i, (seq, n) in enumerate(zip(batch.seqs, batch.num_new_tokens)):
            start = seq.num_computed
            seq.num_computed += n
            if start >= seq.num_counted:  # not a recompute: count this chunk's expert activations
                if counts is not None:
                    c = counts[i]  # [L, E]
                    seq.expert_activations += int(c.sum())
                    if seq.routing is not None:
                        seq.routing += c
                else:
                    seq.expert_activations += n * self._activations_per_token
                seq.num_counted = seq.num_computed
            if seq.num_computed == seq.num_tokens:
                to_sample.append(i)
        tokens = self._sample(batch, logits, to_sample)
        outputs = []
        for i, token in zip(to_sample, tokens):
            outputs.append(self._append(batch.seqs[i], token))
        return outputs

    def _sample(self, batch: ScheduledBatch, logits: torch.Tensor, rows: list[int]) -> list[int]:
        out: dict[int, int] = {}
        greedy = [i for i in rows if batch.seqs[i].generator is None]
        if greedy:
            out.update(zip(greedy, logits[greedy].argmax(dim=-1).tolist()))
        for i in rows:
            seq = batch.seqs[i]
            if seq.generator is not None:
                forced = self._forced_token(seq)
                out[i] = forced if forced is not None else sample_next(logits[i:i + 1], [seq.params.sampling], [seq.generator])[0]
            elif (forced := self._forced_token(seq)) is not None:
                out[i] = forced
        return [out[i] for i in rows]

    def _forced_token(self, seq: Sequence) -> int | None:
        """The thinking budget: once spent, the next token closes the thinking section."""
        budget = seq.params.thinking_budget
        if budget and seq.thinking and seq.thinking_tokens >= budget and self._think_end is not None:
            return self._think_end
        return None

    def _append(self, seq: Sequence, token: int) -> RequestOutput:
        seq.output_ids.append(token)
        if self._think_start is not None:
            if token == self._think_start:
                seq.thinking, seq.thinking_tokens = True, 0
            elif token == self._think_end:
                seq.thinking = False
            elif seq.thinking:
                seq.thinking_tokens += 1
        detok = self._detok[seq.request_id]
        if token in self._eos or token in seq.params.stop_token_ids:
            return self._finish(seq, FinishReason.STOP, "", [token])
        delta = detok.push(token)
        if detok.stopped:
            return self._finish(seq, FinishReason.STOP, delta, [token])
        if len(seq.output_ids) >= seq.params.max_output_tokens:
            return self._finish(seq, FinishReason.LENGTH, delta, [token])
        if seq.num_tokens >= seq.max_total_tokens:
            return self._finish(seq, FinishReason.CONTEXT_WINDOW, delta, [token])
        return self._output(seq, delta, [token])

    def _output(self, seq: Sequence, delta: str, tokens: list[int]) -> RequestOutput:
        return RequestOutput(seq.request_id, delta, tokens, len(seq.prompt_ids), len(seq.output_ids),
                             seq.expert_activations, seq.finish_reason)

    def _finish(self, seq: Sequence, reason: FinishReason, delta: str, tokens: list[int],
                error: BaseException | None = None) -> RequestOutput:
        detok = self._detok.pop(seq.request_id)
        if reason in (FinishReason.STOP, FinishReason.LENGTH, FinishReason.CONTEXT_WINDOW):
            delta += detok.flush()
        self.scheduler.remove(seq)
        del self._seqs[seq.request_id]
        seq.finish_reason = reason
        out = self._output(seq, delta, tokens)
        if seq.routing is not None:
            out.routing = seq.routing.tolist()
        out.error = error
        return out

    def _die(self, exc: Exception) -> list[RequestOutput]:
        self.dead = EngineDeadError(f"the model instance failed and is being replaced: {exc}")
        return [self._finish(seq, FinishReason.ERROR, "", [], self.dead) for seq in list(self._seqs.values())]

    def check_health(self) -> None:
        if self.dead is not None:
            raise self.dead
        try:
            self.instance.check_health()
        except Exception as exc:
            raise EngineDeadError(f"model instance is unhealthy: {exc}") from None

    def close(self) -> None:
        self.instance.close()


__all__ = ["LLMEngine", "EngineConfig", "EngineStats", "RequestOutput", "make_instance", "EngineRequestError"]
