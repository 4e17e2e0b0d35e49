"""The engine's observer (LLMEngine.observer) driven by a real LLMEngine on the tiny checkpoint:
sampled expert load, imbalance, restarts; and the observer's arithmetic on given counts."""
from __future__ import annotations

import pytest
import torch

from minimax_m1.engine.engine import EngineConfig, LLMEngine
from minimax_m1.engine.instance import InProcessModelInstance, InstanceDeadError
from minimax_m1.engine.request import RequestParams
from minimax_m1.telemetry import names
from minimax_m1.telemetry.engine import instrument_engine
from tests.telemetry.conftest import make_memory_telemetry

CONFIG = EngineConfig(max_num_seqs=4, max_batch_tokens=64, prefill_chunk_size=8, kv_block_size=4, num_kv_blocks=128)


class _Loop:
    """What instrument_engine needs from an AsyncEngine: `engine` and `stats` (the sync engine here)."""

    def __init__(self, engine: LLMEngine):
        self.engine = engine
        self.stats = engine.stats


@pytest.fixture(scope="module")
def parts(tiny_path):
    from minimax_m1.model_shards.model import MiniMaxM1ForCausalLM
    from minimax_m1.model_shards.tokenizer import MiniMaxM1Tokenizer

    return MiniMaxM1ForCausalLM.from_pretrained(tiny_path, device="cpu"), MiniMaxM1Tokenizer.from_pretrained(tiny_path)


def make_engine(parts) -> LLMEngine:
    model, tokenizer = parts
    return LLMEngine(InProcessModelInstance(model, CONFIG.cache_shape()), tokenizer, CONFIG, "tiny")


def run(engine: LLMEngine) -> int:
    steps = 0
    while engine.has_unfinished():
        engine.step()
        steps += 1
    return steps


def metric(mt, inst) -> list:
    return mt.metrics().get(inst.name, [])


def test_sampled_expert_load_is_scaled_by_the_sampling_period(parts):
    mt = make_memory_telemetry(expert_load_every=4)
    try:
        engine = make_engine(parts)
        instrument_engine(_Loop(engine), "tiny", mt.telemetry)
        engine.add_request("r", [5, 6, 7, 8, 9, 10, 11, 12], RequestParams(max_output_tokens=40))
        assert run(engine) == 40  # one prefill step of 8 tokens, then 39 one-token decode steps
        per_token = engine.model_config.num_hidden_layers * engine.model_config.num_experts_per_tok
        load = sum(p.value for _, p in metric(mt, names.EXPERT_LOAD))
        # steps 4, 8, ..., 40 are sampled: ten one-token decode steps, each counted four times
        assert load == 4 * 10 * per_token
    finally:
        mt.telemetry.shutdown()


def test_instance_failure_counts_a_restart(parts):
    class LostWorkerInstance:
        """Stands in for a Ray-sharded instance whose worker died (that needs the sharded runtime)."""

        def __init__(self, inner):
            self.inner, self.config, self.cache_shape = inner, inner.config, inner.cache_shape

        def step(self, request):
            raise InstanceDeadError("worker 1 lost")

        def close(self):
            pass

    mt = make_memory_telemetry()
    try:
        engine = make_engine(parts)
        engine.instance = LostWorkerInstance(engine.instance)
        instrument_engine(_Loop(engine), "tiny", mt.telemetry)
        engine.add_request("r", [5, 6, 7], RequestParams(max_output_tokens=4))
        engine.step()
        assert engine.dead is not None
        restarts = {a["reason"]: p.value for a, p in metric(mt, names.INSTANCE_RESTARTS)}
        assert restarts == {"none": 0, "InstanceDeadError": 1}
    finally:
        mt.telemetry.shutdown()


def test_imbalance_is_max_over_mean_per_layer(parts):
    mt = make_memory_telemetry(expert_load_every=1)
    try:
        engine = make_engine(parts)
        tel = instrument_engine(_Loop(engine), "tiny", mt.telemetry)
        layers, experts = 8, 32
        counts = torch.zeros(2, layers, experts, dtype=torch.int64)  # [S, L, E]
        counts[:, 0, 0] = 5  # layer 0: everything on one expert
        counts[:, 1, :] = 1  # layer 1: perfectly balanced
        counts[0, 2, :16] = 2  # layer 2: half the experts, twice the load
        assert tel.wants_routing()
        tel.on_step(type("Batch", (), {"preempted": [], "seqs": [], "num_new_tokens": []})(), [], counts, 0)
        ratio = {a["layer"]: p.value for a, p in metric(mt, names.EXPERT_IMBALANCE)}
        assert ratio[0] == pytest.approx(32.0) and ratio[1] == pytest.approx(1.0) and ratio[2] == pytest.approx(2.0)
        assert ratio[3] == 1.0, "an idle layer reads as balanced"
        load = {(a["layer"], a["expert"]): p.value for a, p in metric(mt, names.EXPERT_LOAD)}
        assert load[(0, 0)] == 10 and load[(1, 5)] == 2 and load[(2, 3)] == 2 and load[(2, 20)] == 0
    finally:
        mt.telemetry.shutdown()


def test_ending_a_request_waits_for_a_step_that_is_noting_it(parts):
    """The step loop notes a step without a lock; the event loop, ending a request, takes it out of
    the step loop's reach and waits while a step is inside on_step (its count is odd)."""
    import threading
    import time

    mt = make_memory_telemetry()
    try:
        engine = make_engine(parts)
        tel = instrument_engine(_Loop(engine), "tiny", mt.telemetry)
        tel._live["r"] = object()
        tel._in_step += 1  # a step is inside on_step
        left = []
        threading.Timer(0.2, lambda: (left.append(time.monotonic()), setattr(tel, "_in_step", tel._in_step + 1))).start()
        tel._take("r")
        returned = time.monotonic()
        assert left and returned >= left[0], "it returned only after the step left on_step"
        assert "r" not in tel._live
        taker = threading.Thread(target=tel._take, args=("absent",))  # no step inside: no wait
        taker.start()
        taker.join(10)
        assert not taker.is_alive()
    finally:
        mt.telemetry.shutdown()
