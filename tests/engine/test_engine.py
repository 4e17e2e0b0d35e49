"""LLMEngine on a real tiny model: batching invariance, chunked prefill, preemption, stops, limits,
thinking budget, routing log, instance death."""
from __future__ import annotations

import pytest
import torch

from minimax_m1.engine.errors import ContextWindowExceededError, EngineDeadError, InvalidRequestError
from minimax_m1.engine.instance import InstanceDeadError
from minimax_m1.engine.request import FinishReason, RequestParams
from tests.engine.conftest import drain

PROMPTS = [
    "The quick brown fox jumps over the lazy dog, again and again, until the dog wakes up.",
    "x",
    "Hello",
    "A somewhat longer prompt: " + "lorem ipsum " * 6,
    "héllo wörld 世界",
    "1 2 3 4 5 6 7",
]
PARAMS = [
    RequestParams(max_output_tokens=12),
    RequestParams(max_output_tokens=9, temperature=0.8, seed=7),
    RequestParams(max_output_tokens=14, temperature=1.2, top_p=0.9, seed=11),
    RequestParams(max_output_tokens=10, temperature=0.7, top_k=20, seed=3),
    RequestParams(max_output_tokens=11),
    RequestParams(max_output_tokens=8, temperature=1.0, top_k=5, top_p=0.8, seed=99),
]


def alone(make_engine, rid, prompt, params, **config):
    return drain(make_engine(**config), {0: [(rid, prompt, params)]})[rid]


def test_concurrent_requests_match_each_alone(make_engine):
    """Mixed lengths, greedy and seeded sampling, staggered arrivals, chunked prefill sharing steps
    with decodes: every request gives exactly the tokens and text it gives alone."""
    arrivals = {0: [], 1: [], 3: []}
    for i, (prompt, params) in enumerate(zip(PROMPTS, PARAMS)):
        arrivals[[0, 1, 3][i % 3]].append((f"r{i}", prompt, params))
    together = drain(make_engine(), arrivals)
    for i, (prompt, params) in enumerate(zip(PROMPTS, PARAMS)):
        single = alone(make_engine, f"r{i}", prompt, params)
        assert together[f"r{i}"]["tokens"] == single["tokens"], f"request r{i} differs when batched"
        assert together[f"r{i}"]["text"] == single["text"]
        assert together[f"r{i}"]["finish"] == single["finish"] == FinishReason.LENGTH
        assert len(single["tokens"]) == params.max_output_tokens


def test_chunked_prefill_matches_one_shot_and_the_reference_model(make_engine, model, tokenizer):
    prompt = "chunked prefill carries the lightning state from chunk to chunk " * 2
    params = RequestParams(max_output_tokens=8)
    chunked = alone(make_engine, "a", prompt, params, prefill_chunk_size=7, max_batch_tokens=16)
    one_shot = alone(make_engine, "a", prompt, params, prefill_chunk_size=256, max_batch_tokens=256)
    ids = torch.tensor([tokenizer.encode(prompt)])
    reference = model.generate(ids, max_new_tokens=8, eos_token_id=[-1])[0, ids.shape[1]:].tolist()
    assert chunked["tokens"] == one_shot["tokens"] == reference


def test_seed_makes_sampling_deterministic_and_different_seeds_differ(make_engine):
    p = "seeded"
    a = alone(make_engine, "a", p, RequestParams(max_output_tokens=16, temperature=1.5, seed=1))
    b = alone(make_engine, "a", p, RequestParams(max_output_tokens=16, temperature=1.5, seed=1))
    c = alone(make_engine, "a", p, RequestParams(max_output_tokens=16, temperature=1.5, seed=2))
    assert a["tokens"] == b["tokens"]
    assert a["tokens"] != c["tokens"]


def test_preemption_by_recompute_loses_nothing_and_keeps_outputs(make_engine):
    """A KV pool too small for all sequences at once: the newest are preempted and recomputed,
    every request completes with the same tokens and usage as alone, in a fair order."""
    cfg = dict(max_num_seqs=4, max_batch_tokens=64, prefill_chunk_size=8, kv_block_size=4, num_kv_blocks=24)
    reqs = [(f"p{i}", PROMPTS[i][:30], RequestParams(max_output_tokens=20, temperature=PARAMS[i].temperature,
                                                    top_k=PARAMS[i].top_k, top_p=PARAMS[i].top_p, seed=PARAMS[i].seed))
            for i in range(4)]
    engine = make_engine(**cfg)
    together = drain(engine, {0: reqs})
    assert engine.stats().num_preemptions > 0, "the test must actually preempt"
    stats = engine.stats().cache
    assert stats.blocks_used == 0 and stats.slots_used == 0
    for rid, prompt, params in reqs:
        single = alone(make_engine, rid, prompt, params, **cfg)
        assert together[rid]["tokens"] == single["tokens"]
        assert together[rid]["usage"] == single["usage"], "recompute must not count expert activations twice"
        assert together[rid]["finish"] == single["finish"]


def test_limits_hold_every_step(make_engine, tokenizer):
    engine = make_engine(max_num_seqs=3, max_batch_tokens=10, prefill_chunk_size=4)
    for i in range(6):
        engine.add_request(f"r{i}", PROMPTS[i], RequestParams(max_output_tokens=5))
    admitted = []
    while engine.has_unfinished():
        batch = engine.scheduler.schedule()
        assert len(batch.seqs) <= 3 and batch.num_tokens <= 10
        assert all(n <= 4 for n in batch.num_new_tokens)
        admitted += [s.request_id for s in batch.seqs if s.request_id not in admitted]
        engine._postprocess(batch, *engine._run(batch))
    assert admitted == [f"r{i}" for i in range(6)], "admission must be first come, first served"


def test_eos_stop_token_and_stop_string(make_engine):
    base = alone(make_engine, "a", "stops", RequestParams(max_output_tokens=12))
    tokens, text = base["tokens"], base["text"]
    # a stop token: generation ends on it and its text is not returned
    stop_tok = tokens[5]
    r = alone(make_engine, "a", "stops", RequestParams(max_output_tokens=12, stop_token_ids=(stop_tok,)))
    first = tokens.index(stop_tok)
    assert r["tokens"] == tokens[:first + 1] and r["finish"] == FinishReason.STOP
    # a stop string taken from the middle of the text: the output ends right before it
    clean = [i for i in range(2, len(text) - 2) if text[i:i + 2].isprintable()]
    if not clean:
        pytest.skip("tiny model produced no printable two-character stop candidate")
    stop = text[clean[0]:clean[0] + 2]
    r = alone(make_engine, "a", "stops", RequestParams(max_output_tokens=12, stop=(stop, "never-there")))
    assert r["text"] == text[:text.index(stop)] and r["finish"] == FinishReason.STOP


def test_context_window(make_engine, tokenizer):
    n = len(tokenizer.encode("context window"))
    r = alone(make_engine, "a", "context window", RequestParams(max_output_tokens=50, context_window=n + 3))
    assert r["finish"] == FinishReason.CONTEXT_WINDOW and len(r["tokens"]) == 3
    engine = make_engine()
    with pytest.raises(ContextWindowExceededError, match="context_window is"):
        engine.add_request("b", "context window", RequestParams(context_window=n))
    with pytest.raises(ContextWindowExceededError):  # more than the whole KV pool holds
        engine.add_request("c", "y" * 2000, RequestParams())
    with pytest.raises(InvalidRequestError, match="empty"):
        engine.add_request("d", "", RequestParams())


@pytest.mark.parametrize("bad", [dict(max_output_tokens=0), dict(expert_threshold=1.5), dict(expert_threshold=float("nan")),
                                 dict(temperature=-1.0), dict(temperature=3.0), dict(top_p=0.0), dict(top_k=-1),
                                 dict(stop=("",)), dict(thinking_budget=-1), dict(context_window=-2)])
def test_bad_parameters_are_invalid_argument(bad):
    with pytest.raises(InvalidRequestError) as exc:
        RequestParams(**bad)
    assert next(iter(bad)).split("_")[0] in str(exc.value)


def test_thinking_budget_forces_the_end_token(make_engine, model):
    think_start, think_end = model.config.think_start_token_id, model.config.think_end_token_id
    prompt = [65, 66, think_start]  # the prompt opens a thinking section
    r = alone(make_engine, "a", prompt, RequestParams(max_output_tokens=12, thinking_budget=4))
    thinking = r["tokens"][:r["tokens"].index(think_end)] if think_end in r["tokens"] else r["tokens"]
    assert len(thinking) <= 4 and think_end in r["tokens"]
    if think_end not in alone(make_engine, "a", prompt, RequestParams(max_output_tokens=12))["tokens"][:5]:
        assert r["tokens"][4] == think_end, "the budget (4) is spent after 4 thinking tokens"
    # without think tokens in the prompt the budget does nothing until the model opens a section
    plain = alone(make_engine, "a", [65, 66], RequestParams(max_output_tokens=12, thinking_budget=1))
    assert plain["tokens"] == alone(make_engine, "a", [65, 66], RequestParams(max_output_tokens=12))["tokens"]


def test_routing_log_and_expert_threshold(make_engine, model):
    cfg = model.config
    r = alone(make_engine, "a", "route me", RequestParams(max_output_tokens=5, return_routing_log=True))
    inp, out, activations = r["usage"]
    routing = torch.tensor(r["routing"])
    assert routing.shape == (cfg.num_hidden_layers, cfg.num_local_experts)
    # every token that went through the model (input + all outputs but the last) used top-2 in every layer
    fed = inp + out - 1
    assert activations == fed * cfg.num_hidden_layers * cfg.num_experts_per_tok == int(routing.sum())
    assert (routing.sum(-1) == fed * cfg.num_experts_per_tok).all()
    low = alone(make_engine, "a", "route me", RequestParams(max_output_tokens=5, expert_threshold=0.0))
    assert low["usage"][2] == fed * cfg.num_hidden_layers, "threshold 0 keeps exactly one expert"
    plain = alone(make_engine, "a", "route me", RequestParams(max_output_tokens=5))
    assert plain["usage"][2] == activations and plain["routing"] is None


def test_reused_slot_starts_from_a_clean_state(make_engine):
    """A one-token prompt that joins a decode-only batch in a slot used before gets fresh state."""
    engine = make_engine(max_num_seqs=2)
    expected = alone(make_engine, "z", "x", RequestParams(max_output_tokens=6))["tokens"]
    got = drain(engine, {0: [("long", "a long running neighbour", RequestParams(max_output_tokens=30)),
                             ("first", "warm the other slot", RequestParams(max_output_tokens=2))],
                         12: [("z", "x", RequestParams(max_output_tokens=6))]})
    assert got["z"]["tokens"] == expected


class DyingInstance:
    """A fake for a lost worker (no worker process to kill in-process): wraps the real instance and
    raises InstanceDeadError from the Nth step on."""

    def __init__(self, inner, die_at: int):
        self.inner, self.die_at, self.steps = inner, die_at, 0
        self.config, self.cache_shape = inner.config, inner.cache_shape

    def step(self, request):
        self.steps += 1
        if self.steps >= self.die_at:
            raise InstanceDeadError("worker 1 lost")
        return self.inner.step(request)

    def check_health(self):
        if self.steps >= self.die_at:
            raise InstanceDeadError("worker 1 lost")

    def close(self):
        pass


def test_instance_death_fails_in_flight_requests_and_health(make_engine):
    engine = make_engine()
    engine.instance = DyingInstance(engine.instance, die_at=3)
    engine.check_health()
    res = drain(engine, {0: [("a", "one", RequestParams(max_output_tokens=20)), ("b", "two", RequestParams(max_output_tokens=20))]})
    assert res["a"]["finish"] == res["b"]["finish"] == FinishReason.ERROR
    assert engine.stats().dead and engine.stats().cache.slots_used == 0 and engine.stats().cache.blocks_used == 0
    with pytest.raises(EngineDeadError):
        engine.check_health()
    with pytest.raises(EngineDeadError):
        engine.add_request("c", "three", RequestParams())
