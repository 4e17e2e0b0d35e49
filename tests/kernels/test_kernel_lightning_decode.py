"""Triton lightning decode, under the CPU interpreter, against lightning_decode_ref.

The check bodies (functions starting with `check_`) run in the interpreter child via interp.run.
"""
from __future__ import annotations

import pytest
import torch

from minimax_m1.kernels.lightning_ref import lightning_decode_ref
from tests.kernels.kernel_checks import (
    TOLERANCE,
    fused_views,
    interpreted_kernels,
    poisoned,
    poisoned_empty,
    rel_err,
)


def check_decode(slots, num_slots, h, d, dtype, strided=False, seed=0):
    """One step on a pool whose unaddressed slots hold NaN; returns the rel errors (out, states)."""
    lightning, _ = interpreted_kernels()
    gen = torch.Generator().manual_seed(seed)
    b = len(slots)
    q, k, v = (torch.randn(b, h, d, generator=gen).to(dtype) for _ in range(3))
    slope = torch.linspace(0.01, 2.0, h)
    slot_ids = torch.tensor(slots, dtype=torch.int32)
    live = sorted(s for s in slots if s >= 0)
    pool = poisoned((num_slots, h, d, d), torch.float32)  # NaN wherever no row may read or write
    pool[live] = torch.randn(len(live), h, d, d, generator=gen)
    ref_pool = pool.clone()
    ref_out = lightning_decode_ref(q, k, v, slope, ref_pool, slot_ids.long())
    if strided:
        q, k, v = fused_views(q, k, v)
    out = poisoned((b, h, d), dtype)
    with poisoned_empty():
        got = lightning.lightning_decode_triton(q, k, v, slope, pool, slot_ids, out=out)
    assert got is out
    assert not out.isnan().any(), "NaN in out: a row read an unaddressed slot or was left unwritten"
    untouched = [s for s in range(num_slots) if s not in live]
    assert pool[untouched].isnan().all(), "a slot no row addresses was written"
    pads = [i for i, s in enumerate(slots) if s < 0]
    assert torch.equal(out[pads], torch.zeros_like(out[pads])), "padding rows must read zero"
    errors = rel_err(out, ref_out), rel_err(pool[live], ref_pool[live])
    tol = TOLERANCE[dtype]
    assert errors[0] < tol and errors[1] < tol, f"rel errors (out, states) {errors} over {tol}"
    return errors


def check_out_of_range_slot_is_skipped():
    """An id past the pool touches no memory (the reference would raise instead)."""
    lightning, _ = interpreted_kernels()
    q = torch.randn(2, 2, 16)
    pool = torch.randn(3, 2, 16, 16)
    before = pool.clone()
    out = lightning.lightning_decode_triton(q, q, q, torch.ones(2), pool, torch.tensor([3, 7]))
    assert torch.equal(pool, before)
    assert torch.equal(out, torch.zeros_like(out))


def check_repeated_steps(dtype):
    """Eight decode steps equal one prefill of the same eight tokens from the same state."""
    lightning, _ = interpreted_kernels()
    gen = torch.Generator().manual_seed(7)
    n, h, d = 8, 2, 16
    q, k, v = (torch.randn(n, h, d, generator=gen).to(dtype) for _ in range(3))
    slope = torch.tensor([0.5, 0.02])
    start = torch.randn(1, h, d, d, generator=gen)
    pool = torch.cat([torch.zeros(1, h, d, d), start.clone()])  # the sequence lives in slot 1
    outs = [lightning.lightning_decode_triton(q[t : t + 1], k[t : t + 1], v[t : t + 1], slope, pool, torch.tensor([1]))
            for t in range(n)]
    whole, final = lightning.lightning_prefill_triton(q, k, v, slope, torch.tensor([0, n]), start, 256, chunk_size=16)
    tol = TOLERANCE[dtype]
    assert rel_err(torch.cat(outs), whole) < tol
    assert rel_err(pool[1:], final) < tol


# name: (slot ids per row, pool size, H, D)
CASES = {
    "padding-rows": ([3, -1, 0, 6, -1], 7, 2, 16),
    "all-padding": ([-1, -1], 3, 2, 16),
    "head-dim-40": ([2, 0], 4, 3, 40),
    "one-row": ([0], 1, 2, 32),
}
DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])


@DTYPES
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_decode_matches_reference(interp, record_property, case, dtype):
    slots, num_slots, h, d = CASES[case]
    record_property("rel_err", interp.run(check_decode, slots, num_slots, h, d, dtype))


@DTYPES
def test_decode_reads_strided_qkv_views(interp, dtype):
    interp.run(check_decode, [1, -1, 0], 2, 2, 16, dtype, strided=True)


def test_decode_skips_slot_ids_past_the_pool(interp):
    interp.run(check_out_of_range_slot_is_skipped)


@DTYPES
def test_decode_steps_agree_with_prefill(interp, dtype):
    interp.run(check_repeated_steps, dtype)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("seed", range(3))
def test_decode_random_sweep(interp, dtype, seed):
    gen = torch.Generator().manual_seed(200 + seed)
    num_slots = 24
    slots = torch.randperm(num_slots, generator=gen)[:12].tolist()
    for i in range(0, 12, 3):
        slots[i] = -1
    interp.run(check_decode, slots, num_slots, 4, 128, dtype, strided=seed == 1, seed=seed)
