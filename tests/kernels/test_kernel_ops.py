"""The dispatch in kernels/ops.py, and the argument checks of the Triton wrappers."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import minimax_m1.kernels as kernels
from minimax_m1.kernels import ops
from minimax_m1.kernels.lightning_ref import lightning_decode_ref, lightning_prefill_ref
from minimax_m1.kernels.moe_ref import moe_experts_ref
from tests.kernels.kernel_checks import interpreted_kernels, interpreter_flag


def test_cpu_tensors_take_the_cpu_path_which_agrees_with_the_torch_reference():
    """On the CPU the ops run the C kernels where they apply (cpu_kernels; tests/kernels/
    test_cpu_kernels.py) or the torch reference: either way the reference's results."""
    assert ops.backend_for(torch.device("cpu")) == "torch"
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(10, 2, 8, generator=gen) for _ in range(3))
    slope, cu = torch.tensor([0.3, 0.1]), torch.tensor([0, 4, 10])
    out, final = kernels.lightning_prefill(q, k, v, slope, cu, None, 4)
    ref_out, ref_final = lightning_prefill_ref(q, k, v, slope, cu, None, 4)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(final, ref_final)

    pool = torch.randn(3, 2, 8, 8, generator=gen)
    ref_pool = pool.clone()
    slots = torch.tensor([2, -1])
    out = kernels.lightning_decode(q[:2], k[:2], v[:2], slope, pool, slots)
    torch.testing.assert_close(out, lightning_decode_ref(q[:2], k[:2], v[:2], slope, ref_pool, slots))
    torch.testing.assert_close(pool, ref_pool)

    x = torch.randn(5, 8, generator=gen)
    ids, weights = torch.randint(0, 4, (5, 2), generator=gen), torch.rand(5, 2, generator=gen)
    w13, w2 = torch.randn(4, 12, 8, generator=gen), torch.randn(4, 8, 6, generator=gen)
    assert torch.equal(kernels.moe_experts(x, ids, weights, w13, w2, 0), moe_experts_ref(x, ids, weights, w13, w2, 0))


def test_the_interpreter_flag_stays_in_the_child(interp):
    if "TRITON_INTERPRET" in os.environ:
        pytest.skip("TRITON_INTERPRET was set by whoever started pytest")
    assert interp.run(interpreter_flag) == "1"
    assert interpreter_flag() is None  # this process, and the processes other tests start, never see it


def check_cuda_takes_triton():
    interpreted_kernels()  # Triton imports in this child
    from minimax_m1.kernels import ops as child_ops

    assert child_ops.backend_for(torch.device("cuda")) == "triton"
    assert child_ops.backend_for(torch.device("cuda", 1)) == "triton"
    assert child_ops.backend_for(torch.device("cpu")) == "torch"


def test_cuda_devices_take_triton_when_it_imports(interp):
    interp.run(check_cuda_takes_triton)


def test_cuda_devices_fall_back_to_torch_without_triton():
    probe = (
        "import sys; sys.modules['triton'] = None\n"  # `import triton` now raises ImportError
        "import torch; from minimax_m1.kernels import ops\n"
        "print(ops.backend_for(torch.device('cuda')))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "torch"


def _qkv(n=6, h=2, d=16, dtype=torch.float32):
    return [torch.randn(n, h, d, dtype=dtype) for _ in range(3)]


def bad_prefill_calls():
    q, k, v = _qkv()
    slope, cu = torch.ones(2), torch.tensor([0, 6])
    yield "must have q's shape", (q, k[:5], v, slope, cu, None, 256)
    yield "must be torch.float32", (q, k.bfloat16(), v, slope, cu, None, 256)
    yield "unit stride", (q, k.transpose(1, 2).contiguous().transpose(1, 2), v, slope, cu, None, 256)
    yield "float16, bfloat16 or float32", (q.double(), k.double(), v.double(), slope, cu, None, 256)
    yield "slope must be", (q, k, v, torch.ones(3), cu, None, 256)
    yield "cu_seqlens must be a 1-D", (q, k, v, slope, cu.float(), None, 256)
    yield "must rise from 0 to N", (q, k, v, slope, torch.tensor([0, 5]), None, 256)
    yield "must rise from 0 to N", (q, k, v, slope, torch.tensor([0, 4, 3, 6]), None, 256)
    yield "initial_states must have shape", (q, k, v, slope, cu, torch.zeros(2, 2, 16, 16), 256)
    yield "initial_states must be torch.float32", (q, k, v, slope, cu, torch.zeros(1, 2, 16, 16).bfloat16(), 256)
    yield "block_size must be a positive int", (q, k, v, slope, cu, None, 0)


def bad_decode_calls():
    q, k, v = _qkv(n=2)
    slope, pool, slots = torch.ones(2), torch.zeros(3, 2, 16, 16), torch.tensor([0, -1])
    yield "state_pool must be", (q, k, v, slope, torch.zeros(3, 2, 16), slots)
    yield "state_pool must have shape", (q, k, v, slope, torch.zeros(3, 2, 8, 8), slots)
    yield "state_pool must be torch.float32", (q, k, v, slope, pool.bfloat16(), slots)
    yield "each \\[D, D\\] state contiguous", (q, k, v, slope, pool.transpose(2, 3), slots)
    yield "slot_ids must be", (q, k, v, slope, pool, torch.tensor([0]))
    yield "slot_ids must be", (q, k, v, slope, pool, torch.tensor([0.0, 1.0]))


def bad_moe_calls():
    x = torch.randn(4, 32)
    ids, weights = torch.zeros(4, 2, dtype=torch.long), torch.ones(4, 2)
    w13, w2 = torch.randn(3, 16, 32), torch.randn(3, 32, 8)
    yield "x must be", (x[0], ids, weights, w13, w2)
    yield "topk_ids must be", (x, ids[:3], weights, w13, w2)
    yield "topk_ids must be", (x, ids.float(), weights, w13, w2)
    yield "topk_weights must be", (x, ids, weights[:, :1], w13, w2)
    yield "w13 must be", (x, ids, weights, torch.randn(3, 15, 32), w2)
    yield "w2 must be", (x, ids, weights, w13, torch.randn(3, 8, 32))
    yield "w13 must be torch.float32", (x, ids, weights, w13.bfloat16(), w2)
    yield "unit stride", (x, ids, weights, w13, w2.transpose(1, 2).contiguous().transpose(1, 2))
    yield "expert_offset must be an int", (x, ids, weights, w13, w2, 1.5)


def check_bad_arguments(op_name):
    lightning, moe = interpreted_kernels()
    op, calls = {
        "prefill": (lightning.lightning_prefill_triton, bad_prefill_calls),
        "decode": (lightning.lightning_decode_triton, bad_decode_calls),
        "moe": (moe.moe_experts_triton, bad_moe_calls),
    }[op_name]
    for message, args in calls():
        with pytest.raises(ValueError, match=message):
            op(*args)
    return sum(1 for _ in calls())


@pytest.mark.parametrize("op_name", ["prefill", "decode", "moe"])
def test_wrappers_reject_bad_arguments_with_the_argument_named(interp, op_name):
    assert interp.run(check_bad_arguments, op_name) > 5
