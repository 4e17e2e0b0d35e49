"""Scheduler and StateManager bookkeeping without a model."""
from __future__ import annotations

import pytest

from minimax_m1.engine.block_manager import StateManager
from minimax_m1.engine.request import RequestParams, Sequence, Status
from minimax_m1.engine.scheduler import Scheduler, SchedulerConfig


def seq(i, prompt_len, out=0):
    s = Sequence(f"s{i}", list(range(3, 3 + prompt_len)), RequestParams(), i, 10_000)
    s.output_ids = [5] * out
    return s


def run_step(sched, batch):
    """Pretend the model ran: computed tokens advance; a caught-up sequence gets one new token."""
    for s, n in zip(batch.seqs, batch.num_new_tokens):
        s.num_computed += n
        s.num_counted = max(s.num_counted, s.num_computed)
        if s.num_computed == s.num_tokens:
            s.output_ids.append(7)


def test_state_manager_slots_and_blocks():
    sm = StateManager(num_slots=2, num_blocks=5, block_size=4)
    a, b, c = seq(0, 9), seq(1, 4), seq(2, 1)
    assert sm.blocks_needed(a, 9) == 3
    sm.admit(a, 9)
    sm.admit(b, 4)
    assert a.slot != b.slot and len(a.blocks) == 3 and len(b.blocks) == 1
    assert not sm.can_admit(c, 1), "no free slot"
    assert sm.stats().slots_used == 2 and sm.stats().blocks_used == 4
    assert sm.can_grow(a, 12) and not sm.can_grow(a, 17)
    sm.free(a)
    assert sm.stats().slots_used == 1 and sm.stats().blocks_used == 1 and a.slot is None and a.blocks == []
    with pytest.raises(ValueError):
        StateManager(0, 1, 1)


def test_chunked_prefill_and_token_budget_are_respected():
    sched = Scheduler(SchedulerConfig(max_num_seqs=4, max_batch_tokens=10, prefill_chunk_size=6), StateManager(4, 100, 4))
    seqs = [seq(0, 14), seq(1, 3), seq(2, 20)]
    for s in seqs:
        sched.add(s)
    batch = sched.schedule()
    assert [(s.request_id, n) for s, n in zip(batch.seqs, batch.num_new_tokens)] == [("s0", 6), ("s1", 3), ("s2", 1)]
    run_step(sched, batch)
    batch = sched.schedule()
    # s1 now decodes (1 token); s0 continues its prefill; s2 gets the remaining budget
    assert [(s.request_id, n) for s, n in zip(batch.seqs, batch.num_new_tokens)] == [("s0", 6), ("s1", 1), ("s2", 3)]


def test_max_num_seqs_and_fifo_admission():
    sched = Scheduler(SchedulerConfig(max_num_seqs=2, max_batch_tokens=100, prefill_chunk_size=50), StateManager(8, 100, 4))
    for i in range(4):
        sched.add(seq(i, 3))
    batch = sched.schedule()
    assert [s.request_id for s in batch.seqs] == ["s0", "s1"]
    assert [s.request_id for s in sched.waiting] == ["s2", "s3"]


def test_admission_waits_for_blocks_and_does_not_skip_ahead():
    sched = Scheduler(SchedulerConfig(max_num_seqs=8, max_batch_tokens=100, prefill_chunk_size=100), StateManager(8, 4, 4))
    big, small = seq(0, 20), seq(1, 2)
    running = seq(2, 8)
    sched.add(running)
    run_step(sched, sched.schedule())  # holds 2 blocks (3 after its next token)
    sched.add(big)
    sched.add(small)
    batch = sched.schedule()
    assert [s.request_id for s in batch.seqs] == ["s2"], "the big one does not fit; the small one may not overtake it"


def test_preemption_takes_the_newest_and_requeues_it_first():
    sm = StateManager(4, 6, 2)
    sched = Scheduler(SchedulerConfig(max_num_seqs=4, max_batch_tokens=64, prefill_chunk_size=64), sm)
    a, b, c = seq(0, 3), seq(1, 3), seq(2, 3)
    for s in (a, b, c):
        sched.add(s)
    run_step(sched, sched.schedule())  # each holds 2 blocks (4 tokens of room), 6 of 6 used
    run_step(sched, sched.schedule())  # 4 tokens each: still fits
    sched.add(d := seq(3, 1))
    batch = sched.schedule()  # a needs a third block: c (newest running) is preempted, then b fits too
    assert batch.preempted == [c] and c.status is Status.WAITING and c.num_computed == 0 and c.slot is None
    assert [s.request_id for s in batch.seqs] == ["s0", "s1"], "no admission in a step that preempted"
    assert list(sched.waiting)[:2] == [c, d], "the preempted sequence keeps its place ahead of later arrivals"
    assert sched.num_preemptions >= 1


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="max_batch_tokens"):
        SchedulerConfig(max_num_seqs=8, max_batch_tokens=4)
    with pytest.raises(ValueError, match="prefill_chunk_size"):
        SchedulerConfig(prefill_chunk_size=0)
