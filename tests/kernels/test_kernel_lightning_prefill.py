"""Triton lightning prefill, under the CPU interpreter, against lightning_prefill_ref.

The check bodies (functions starting with `check_`) run in the interpreter child via interp.run.
"""
from __future__ import annotations

import itertools

import pytest
import torch

from minimax_m1.kernels.lightning_ref import lightning_prefill_ref
from tests.kernels.kernel_checks import (
    TOLERANCE,
    fused_views,
    interpreted_kernels,
    poisoned,
    poisoned_empty,
    rel_err,
)

# Strong, medium and weak decay. exp(-4 * 60) underflows fp32, so the strong head also checks that
# no exponent overflows where the decay underflows.
SLOPES = (4.0, 0.9, 0.05, 0.001)


def make_inputs(lens, h, d, dtype, seed, with_init):
    gen = torch.Generator().manual_seed(seed)
    n = sum(lens)
    q, k, v = (torch.randn(n, h, d, generator=gen).mul(0.3).to(dtype) for _ in range(3))
    slope = torch.tensor([SLOPES[i % len(SLOPES)] for i in range(h)])
    cu = torch.tensor([0, *itertools.accumulate(lens)], dtype=torch.int32)
    init = torch.randn(len(lens), h, d, d, generator=gen) if with_init else None
    return q, k, v, slope, cu, init


def check_prefill(lens, h, d, dtype, chunk, with_init, block_size=256, strided=False, seed=0):
    """Kernel vs reference on poisoned outputs and scratch; returns the rel errors (out, final)."""
    lightning, _ = interpreted_kernels()
    q, k, v, slope, cu, init = make_inputs(lens, h, d, dtype, seed, with_init)
    init_before = None if init is None else init.clone()
    ref_out, ref_final = lightning_prefill_ref(q, k, v, slope, cu, init, block_size)
    if strided:
        q, k, v = fused_views(q, k, v)
    out = poisoned(q.shape, dtype)
    final = poisoned((len(lens), h, d, d), torch.float32)
    with poisoned_empty():
        got_out, got_final = lightning.lightning_prefill_triton(
            q, k, v, slope, cu, init, block_size, chunk_size=chunk, out=out, final_states=final
        )
    assert got_out is out and got_final is final
    assert not out.isnan().any(), "NaN in out"
    assert not final.isnan().any(), "NaN in final states"
    if init is not None:
        assert torch.equal(init, init_before), "initial_states must not be modified"
    errors = rel_err(out, ref_out), rel_err(final, ref_final)
    tol = TOLERANCE[dtype]
    assert errors[0] < tol and errors[1] < tol, f"rel errors (out, final) {errors} over {tol}"
    return errors


def check_no_sequences():
    lightning, _ = interpreted_kernels()
    q = torch.randn(0, 2, 16)
    out, final = lightning.lightning_prefill_triton(q, q, q, torch.ones(2), torch.zeros(1, dtype=torch.int64), None, 256)
    assert out.shape == (0, 2, 16) and final.shape == (0, 2, 16, 16)


def check_chaining():
    """Prefilling in two calls, the second from the first's final state, equals one call."""
    lightning, _ = interpreted_kernels()
    prefill = lightning.lightning_prefill_triton
    q, k, v, slope, _, init = make_inputs([50], 2, 16, torch.float32, 3, True)
    whole, whole_final = prefill(q, k, v, slope, torch.tensor([0, 50]), init, 256, chunk_size=16)
    first, mid = prefill(q[:19], k[:19], v[:19], slope, torch.tensor([0, 19]), init, 256, chunk_size=16)
    second, last = prefill(q[19:], k[19:], v[19:], slope, torch.tensor([0, 31]), mid, 256, chunk_size=16)
    assert rel_err(torch.cat([first, second]), whole) < 1e-5
    assert rel_err(last, whole_final) < 1e-5


# name: (sequence lengths, H, D, chunk)
CASES = {
    "empty-and-ragged": ([17, 0, 40, 16, 1], 2, 16, 16),
    "all-empty": ([0, 0], 2, 16, 16),
    "head-dim-24": ([33], 3, 24, 16),
    "chunk-32": ([70, 5], 2, 32, 32),
}
DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])


@DTYPES
@pytest.mark.parametrize("with_init", [True, False], ids=["init", "zeros"])
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_prefill_matches_reference(interp, record_property, case, with_init, dtype):
    lens, h, d, chunk = CASES[case]
    record_property("rel_err", interp.run(check_prefill, lens, h, d, dtype, chunk, with_init))


@DTYPES
def test_prefill_reads_strided_qkv_views(interp, dtype):
    interp.run(check_prefill, [21, 9], 2, 16, dtype, 16, True, strided=True)


@pytest.mark.parametrize("block_size", [5, 16, 256])
def test_prefill_does_not_depend_on_the_reference_block_size(interp, block_size):
    interp.run(check_prefill, [45], 2, 16, torch.float32, 16, True, block_size=block_size)


def test_prefill_with_no_sequences(interp):
    interp.run(check_no_sequences)


def test_prefill_chains_through_its_final_state(interp):
    interp.run(check_chaining)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("seed", range(3))
def test_prefill_random_sweep(interp, dtype, seed):
    gen = torch.Generator().manual_seed(100 + seed)
    lens = torch.randint(1, 300, (4,), generator=gen).tolist()
    lens[seed % 4] = 0
    interp.run(check_prefill, lens, 4, 64, dtype, 64, seed % 2 == 0, seed=seed, strided=seed == 1)
