"""Scheduler: iteration-level continuous batching with chunked prefill and preemption by recompute.

Every step it decides which sequences run and how many new tokens each feeds:
1. Running sequences first, oldest first: a decode feeds 1 token, an unfinished prefill its next
   chunk (at most `prefill_chunk_size`, within the step's token budget). If the KV pool cannot
   hold a sequence's next tokens, the newest running sequence is preempted (its slot and blocks
   freed, its tokens recomputed later) until it fits.
2. Then waiting sequences, strictly first-come first-served, while there is a free state slot,
   free KV blocks for the first chunk, token budget, and room under `max_num_seqs`. The first
   one that does not fit stops admission, so nobody is overtaken. A preempted sequence goes back
   to the head of the queue in its original order.
"""
from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field

from minimax_m1.engine.block_manager import StateManager
from minimax_m1.engine.request import Sequence, Status


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    max_num_seqs: int = 32  # sequences per step
    max_batch_tokens: int = 1024  # new tokens per step (decodes + prefill chunks)
    prefill_chunk_size: int = 256  # prefill tokens of one sequence per step

    def __post_init__(self) -> None:
        for name in ("max_num_seqs", "max_batch_tokens", "prefill_chunk_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"engine config field '{name}' must be an integer >= 1, got {value!r}")
        if self.max_batch_tokens < self.max_num_seqs:
            raise ValueError(f"engine config field 'max_batch_tokens' ({self.max_batch_tokens}) must be >= "
                             f"max_num_seqs ({self.max_num_seqs}) so every running sequence can decode")


@dataclass
class ScheduledBatch:
    seqs: list[Sequence] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)

    def add(self, seq: Sequence, n: int) -> None:
        self.seqs.append(seq)
        self.num_new_tokens.append(n)

    @property
    def num_tokens(self) -> int:
        return sum(self.num_new_tokens)

    def __bool__(self) -> bool:
        return bool(self.seqs)


def _by_arrival(seq: Sequence) -> int:
    return seq.arrival


class Scheduler:
    def __init__(self, config: SchedulerConfig, state: StateManager):
        self.config = config
        self.state = state
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # ordered by arrival
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        seq.status = Status.WAITING
        self.waiting.append(seq)

    def remove(self, seq: Sequence) -> None:
        """Take `seq` out of the queues and free its slot and blocks (finish, error, cancel)."""
        if seq.status is Status.RUNNING:
            self.running.remove(seq)
        elif seq.status is Status.WAITING:
            self.waiting.remove(seq)
        self.state.free(seq)
        seq.status = Status.FINISHED

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def _chunk(self, seq: Sequence, budget: int) -> int:
        n = min(seq.num_tokens - seq.num_computed, budget, self.config.prefill_chunk_size)
        if seq.num_computed < seq.num_counted:
            # A recompute after preemption ends one chunk exactly where counting stopped.
            n = min(n, seq.num_counted - seq.num_computed)
        return max(n, 1) if budget > 0 else 0

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.state.free(seq)
        seq.num_computed = 0
        seq.num_preemptions += 1
        seq.status = Status.WAITING
        self.waiting.appendleft(seq)  # victims go newest first, so the oldest ends up in front
        self.num_preemptions += 1

    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch()
        budget = self.config.max_batch_tokens
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            n = self._chunk(seq, budget)
            while not self.state.can_grow(seq, seq.num_computed + n):
                victim = self.running[-1]
                self._preempt(victim)
                batch.preempted.append(victim)
                if victim is seq:
                    break
            if seq.status is not Status.RUNNING:
                break  # it was the newest and had to yield its own blocks
            self.state.grow(seq, seq.num_computed + n)
            batch.add(seq, n)
            budget -= n
            i += 1
        if batch.preempted:
            return batch  # memory is short: admit nobody new this step
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            seq = self.waiting[0]
            n = self._chunk(seq, budget)
            if not self.state.can_admit(seq, seq.num_computed + n):
                break
            self.waiting.popleft()
            self.state.admit(seq, seq.num_computed + n)
            seq.status = Status.RUNNING
            bisect.insort(self.running, seq, key=_by_arrival)
            batch.add(seq, n)
            budget -= n
        return batch


__all__ = ["Scheduler", "SchedulerConfig", "ScheduledBatch"]
