"""Triton MoE expert compute, under the CPU interpreter, against moe_experts_ref.

The check bodies (functions starting with `check_`) run in the interpreter child via interp.run.
"""
from __future__ import annotations

import pytest
import torch

from minimax_m1.kernels.moe_ref import moe_experts_ref
from tests.kernels.kernel_checks import TOLERANCE, interpreted_kernels, poisoned, poisoned_empty, rel_err


def make_inputs(t, k, h, inter, e, offset, dtype, seed, id_range):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(t, h, generator=gen).to(dtype)
    ids = torch.randint(id_range[0], id_range[1], (t, k), generator=gen)
    weights = torch.rand(t, k, generator=gen)
    weights[:, -1] = torch.where(torch.rand(t, generator=gen) < 0.2, 0.0, weights[:, -1])  # unused slots
    w13 = (torch.randn(e, 2 * inter, h, generator=gen) / h**0.5).to(dtype)
    w2 = (torch.randn(e, h, inter, generator=gen) / inter**0.5).to(dtype)
    return x, ids, weights, w13, w2


def check_moe(t, k, h, inter, e, offset, dtype, id_range, seed=0):
    """Kernel vs reference on poisoned outputs and scratch; returns the rel error."""
    _, moe = interpreted_kernels()
    x, ids, weights, w13, w2 = make_inputs(t, k, h, inter, e, offset, dtype, seed, id_range)
    ref = moe_experts_ref(x, ids, weights, w13, w2, offset)
    out = poisoned((t, h), dtype)
    with poisoned_empty():
        got = moe.moe_experts_triton(x, ids, weights, w13, w2, offset, out=out)
    assert got is out
    assert not out.isnan().any(), "NaN in out"
    if ref.abs().max() == 0:  # nothing routed here: the output must be exactly zero
        assert torch.equal(out, ref)
        return 0.0
    err = rel_err(out, ref)
    assert err < TOLERANCE[dtype], f"rel error {err} over {TOLERANCE[dtype]}"
    return err


def check_grouping(ids, e, offset, block_m):
    """Every local entry sits in exactly one row; each block is one expert's; padding is marked."""
    _, moe = interpreted_kernels()
    ids = torch.tensor(ids)
    rows, block_expert = moe.group_by_expert(ids, e, offset, block_m)
    num_entries = ids.numel()
    assert rows.numel() % block_m == 0 and block_expert.numel() == rows.numel() // block_m
    local = (ids.flatten() - offset).tolist()
    here = sorted(i for i, x in enumerate(local) if 0 <= x < e)
    assert sorted(r for r in rows.tolist() if r < num_entries) == here
    for blk, expert in enumerate(block_expert.tolist()):
        block = [r for r in rows[blk * block_m : (blk + 1) * block_m].tolist() if r < num_entries]
        if expert >= e:
            assert not block, "rows past the last group must be padding"
        else:
            assert all(local[r] == expert for r in block)
    # the groups come in expert order, and an expert with entries owns at least one block
    owners = [x for x in block_expert.tolist() if x < e]
    assert owners == sorted(owners) and set(owners) == {x for x in local if 0 <= x < e}


def check_no_tokens():
    _, moe = interpreted_kernels()
    x = torch.randn(0, 32)
    out = moe.moe_experts_triton(x, torch.zeros(0, 2, dtype=torch.long), torch.zeros(0, 2),
                                 torch.randn(2, 16, 32), torch.randn(2, 32, 8))
    assert out.shape == (0, 32)


# name: (T, K, h, I, E, expert offset, id range [lo, hi))
CASES = {
    "offset-and-foreign-ids": (37, 2, 48, 40, 4, 3, (0, 10)),
    "idle-experts": (9, 2, 32, 16, 6, 0, (0, 2)),
    "nothing-routed-here": (5, 2, 32, 16, 2, 4, (0, 4)),
    "one-token-top3": (1, 3, 80, 24, 4, 0, (0, 4)),
    "64-row-blocks": (170, 2, 32, 16, 4, 0, (0, 4)),  # over 64 entries per expert
    "128-row-blocks": (300, 2, 24, 16, 1, 0, (0, 1)),  # over 512 entries per expert
}
DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])


@DTYPES
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_moe_matches_reference(interp, record_property, case, dtype):
    record_property("rel_err", interp.run(check_moe, *CASES[case][:6], dtype, CASES[case][6]))


@pytest.mark.parametrize("block_m", [4, 16])
def test_grouping_by_expert(interp, block_m):
    interp.run(check_grouping, [[5, 1], [1, 9], [2, 5], [5, 5], [0, 3]], 4, 1, block_m)


def test_moe_with_no_tokens(interp):
    interp.run(check_no_tokens)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("seed", range(3))
def test_moe_random_sweep(interp, dtype, seed):
    gen = torch.Generator().manual_seed(300 + seed)
    t = int(torch.randint(1, 300, (1,), generator=gen))
    interp.run(check_moe, t, 2, 96, 80, 8, 8 * seed, dtype, (0, 24), seed=seed)
