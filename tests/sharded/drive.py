"""Drive a ModelInstance without the engine: prefill then greedy decode steps, with block tables.

`step` is any callable StepRequest -> StepResult (an instance's `step`, or a leader worker's).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from minimax_m1.engine.instance import CacheShape, StepRequest

PROMPTS = [[5, 17, 33, 2, 9], [40 + i % 50 for i in range(19)], [3 + (7 * i) % 200 for i in range(33)]]
BLOCK_SIZE = 4


@dataclass
class Generation:
    tokens: list[list[int]]  # [S][new] greedy continuations
    logits: list[torch.Tensor]  # per step, [S, V] fp32


def cache_shape_for(prompts: list[list[int]], new_tokens: int, block_size: int = BLOCK_SIZE) -> CacheShape:
    per_seq = math.ceil((max(len(p) for p in prompts) + new_tokens) / block_size)
    return CacheShape(num_slots=len(prompts) + 1, num_blocks=per_seq * len(prompts) + 2, block_size=block_size)


def block_tables(prompts: list[list[int]], new_tokens: int, block_size: int = BLOCK_SIZE) -> list[list[int]]:
    """Interleaved physical blocks, so a sequence's blocks are not contiguous."""
    per_seq = math.ceil((max(len(p) for p in prompts) + new_tokens) / block_size)
    s = len(prompts)
    return [[j * s + i for j in range(per_seq)] for i in range(s)]


def prefill_request(prompts, new_tokens, block_size=BLOCK_SIZE, collect_routing=False) -> StepRequest:
    tables = block_tables(prompts, new_tokens, block_size)
    slots = [i + 1 for i in range(len(prompts))]  # slot 0 unused: slots need not start at 0
    return StepRequest(token_ids=[t for p in prompts for t in p], seq_lens=[len(p) for p in prompts],
                       start_positions=[0] * len(prompts), slots=slots, block_tables=tables,
                       collect_routing=collect_routing)


def decode_request(prompts, generated, new_tokens, block_size=BLOCK_SIZE) -> StepRequest:
    tables = block_tables(prompts, new_tokens, block_size)
    return StepRequest(token_ids=[g[-1] for g in generated], seq_lens=[1] * len(prompts),
                       start_positions=[len(p) + len(g) - 1 for p, g in zip(prompts, generated)],
                       slots=[i + 1 for i in range(len(prompts))], block_tables=tables)


def greedy(step, prompts=PROMPTS, new_tokens: int = 6, block_size: int = BLOCK_SIZE, on_step=None) -> Generation:
    """Prefill all prompts in one step, then decode; `on_step(i)` runs before decode step i."""
    logits = step(prefill_request(prompts, new_tokens, block_size)).logits
    out = Generation([[int(t)] for t in logits.argmax(-1)], [logits])
    for i in range(new_tokens - 1):
        if on_step:
            on_step(i)
        logits = step(decode_request(prompts, out.tokens, new_tokens, block_size)).logits
        out.logits.append(logits)
        for seq, t in zip(out.tokens, logits.argmax(-1)):
            seq.append(int(t))
    return out


def assert_same_generation(got: Generation, want: Generation, rtol: float = 1e-4, atol: float = 1e-6) -> None:
    """Same greedy tokens, and every logit within rtol relative (atol for logits near zero)."""
    assert got.tokens == want.tokens
    assert len(got.logits) == len(want.logits)
    for i, (a, b) in enumerate(zip(got.logits, want.logits)):
        assert a.dtype == b.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m: f"step {i}: {m}")
