"""Fixtures for the engine tests: one tiny release-layout checkpoint per session, engines on it."""
from __future__ import annotations

import pytest

from minimax_m1.engine.engine import EngineConfig, LLMEngine
from minimax_m1.engine.instance import InProcessModelInstance
from minimax_m1.model_shards.tokenizer import MiniMaxM1Tokenizer


@pytest.fixture(scope="session")
def tiny_path(tmp_path_factory) -> str:
    from minimax_m1.model_shards.tiny import make_checkpoint

    path = str(tmp_path_factory.mktemp("tiny-engine"))
    make_checkpoint(path, seed=0)
    return path


@pytest.fixture(scope="session")
def tokenizer(tiny_path) -> MiniMaxM1Tokenizer:
    return MiniMaxM1Tokenizer.from_pretrained(tiny_path)


@pytest.fixture(scope="session")
def model(tiny_path):
    from minimax_m1.model_shards.model import MiniMaxM1ForCausalLM

    return MiniMaxM1ForCausalLM.from_pretrained(tiny_path, device="cpu")


@pytest.fixture
def make_engine(model, tokenizer):
    """Factory: a fresh LLMEngine (own cache and bookkeeping) sharing the session's weights."""

    def make(**config) -> LLMEngine:
        defaults = dict(max_num_seqs=8, max_batch_tokens=64, prefill_chunk_size=16, kv_block_size=4, num_kv_blocks=256)
        cfg = EngineConfig(**{**defaults, **config})
        return LLMEngine(InProcessModelInstance(model, cfg.cache_shape()), tokenizer, cfg)

    return make


def drain(engine: LLMEngine, arrivals: dict[int, list] | None = None, max_steps: int = 10_000) -> dict[str, dict]:
    """Step until done; `arrivals` maps a step number to [(request_id, prompt, params)] added then.
    Returns per request: text, tokens, finish reason, final usage, deltas."""
    arrivals = dict(arrivals or {})
    results: dict[str, dict] = {}
    for step in range(max_steps):
        for rid, prompt, params in arrivals.pop(step, []):
            engine.add_request(rid, prompt, params)
        if not engine.has_unfinished() and not arrivals:
            return results
        for out in engine.step():
            r = results.setdefault(out.request_id, {"text": "", "tokens": [], "deltas": []})
            r["text"] += out.text_delta
            r["deltas"].append(out.text_delta)
            r["tokens"] += out.token_ids
            r["usage"] = (out.input_tokens, out.output_tokens, out.expert_activations)
            if out.finished:
                r["finish"] = out.finish_reason
                r["routing"] = out.routing
    raise AssertionError("engine did not finish")
