"""Every Triton kernel compiles for NVIDIA GPUs with the tiles its wrapper launches, here, offline.

The interpreter tests check the math; they cannot see what only the GPU compiler sees (layouts,
MMA lowering, register pressure). Triton's wheel carries ptxas, so each kernel is compiled to a
cubin for sm_90 (H100/H200) here, without a GPU, and the 16-bit hot paths at M1's head dim are
checked not to spill registers to local memory.
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch

triton = pytest.importorskip("triton", reason="triton is not installed")

if os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip("TRITON_INTERPRET=1 in this process: kernels are built for the interpreter", allow_module_level=True)

from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from minimax_m1.kernels import triton_lightning as lightning  # noqa: E402
from minimax_m1.kernels import triton_moe as moe  # noqa: E402

NVIDIA_BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
if not (NVIDIA_BIN / "ptxas").exists():
    pytest.skip(f"ptxas is not in Triton's wheel ({NVIDIA_BIN})", allow_module_level=True)

D, H = 128, 8  # M1: head dim 128, 64 heads / tp 8
TYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


def compile_kernel(fn, pointers: dict[str, str], constexprs: dict, num_warps: int, num_stages: int, arch: int = 90):
    """fn compiled to a cubin for sm_<arch>; scalar arguments that are not constexpr are i32."""
    signature = {name: "constexpr" if name in constexprs else pointers.get(name, "i32") for name in fn.arg_names}
    source = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
    options = {"num_warps": num_warps, "num_stages": num_stages}
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)


def stack_bytes(kernel) -> int | None:
    """Per-thread stack frame of the cubin (register spills land there); None without cuobjdump."""
    tool = NVIDIA_BIN / "cuobjdump"
    if not tool.exists():
        return None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        dump = subprocess.run([str(tool), "--dump-resource-usage", f.name], capture_output=True, text=True, check=True)
    return int(re.search(r"STACK:(\d+)", dump.stdout).group(1))


def lightning_kernels(dtype):
    t = TYPES[dtype]
    precision = lightning.dot_precision(dtype)
    st, ot, dt = lightning.state_tiles(D), lightning.output_tiles(D, dtype), lightning.decode_tiles(D)
    state_dtype = "fp32" if dtype == torch.float32 else t
    yield "prefill state pass", compile_kernel(
        lightning._prefill_state_kernel,
        {"k_ptr": f"*{t}", "v_ptr": f"*{t}", "slope_ptr": "*fp32", "cu_ptr": "*i32", "chunk_start_ptr": "*i64",
         "init_ptr": "*fp32", "chunk_states_ptr": f"*{state_dtype}", "final_ptr": "*fp32"},
        dict(H=H, D=D, BT=lightning.DEFAULT_CHUNK, BK=st.bk, BV=st.bv, HAS_INIT=True, PRECISION=precision, WIDEN=False),
        st.num_warps, 2,
    )
    yield "prefill output pass", compile_kernel(
        lightning._prefill_output_kernel,
        {"q_ptr": f"*{t}", "k_ptr": f"*{t}", "v_ptr": f"*{t}", "o_ptr": f"*{t}", "slope_ptr": "*fp32", "cu_ptr": "*i32",
         "chunk_start_ptr": "*i64", "chunk_seq_ptr": "*i32", "chunk_states_ptr": f"*{state_dtype}"},
        dict(H=H, D=D, BT=lightning.DEFAULT_CHUNK, BD=ot.bd, BV=ot.bv, PRECISION=precision, WIDEN=False),
        ot.num_warps, 2,
    )
    yield "decode", compile_kernel(
        lightning._decode_kernel,
        {"q_ptr": f"*{t}", "k_ptr": f"*{t}", "v_ptr": f"*{t}", "o_ptr": f"*{t}", "slope_ptr": "*fp32",
         "pool_ptr": "*fp32", "slot_ptr": "*i32"},
        dict(D=D, BD=dt.bd, BV=dt.bv, WIDEN=False),
        dt.num_warps, 3,
    )


def moe_kernels(dtype):
    t = TYPES[dtype]
    precision = lightning.dot_precision(dtype)
    for tokens in (64, 2048, 8192):  # top-2 over 8 local experts: each tile choice once
        tiles = moe.moe_tiles(2 * tokens, 8)
        label = f"{tokens} tokens, BM={tiles.bm}"
        yield f"moe gate-up, {label}", compile_kernel(
            moe._gate_up_kernel,
            {"x_ptr": f"*{t}", "w13_ptr": f"*{t}", "act_ptr": f"*{t}", "rows_ptr": "*i32", "block_expert_ptr": "*i32"},
            dict(TOPK=2, BM=tiles.bm, BN=tiles.bn, BK=tiles.bk, PRECISION=precision, WIDEN=False),
            tiles.num_warps, tiles.num_stages,
        )
        yield f"moe down, {label}", compile_kernel(
            moe._down_kernel,
            {"act_ptr": f"*{t}", "w2_ptr": f"*{t}", "weight_ptr": "*fp32", "y_ptr": "*fp32", "rows_ptr": "*i32",
             "block_expert_ptr": "*i32"},
            dict(BM=tiles.bm, BN=tiles.bn, BK=tiles.bk, PRECISION=precision, WIDEN=False),
            tiles.num_warps, tiles.num_stages,
        )


@pytest.mark.parametrize("family", [lightning_kernels, moe_kernels], ids=["lightning", "moe"])
def test_bf16_kernels_compile_for_sm90_without_spills(family):
    for name, kernel in family(torch.bfloat16):
        assert kernel.asm["cubin"], name
        spilled = stack_bytes(kernel)
        assert spilled in (None, 0), f"{name}: {spilled} bytes of stack per thread (register spills)"


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
@pytest.mark.parametrize("family", [lightning_kernels, moe_kernels], ids=["lightning", "moe"])
def test_other_dtypes_compile_for_sm90(family, dtype):
    for name, kernel in family(dtype):
        assert kernel.asm["cubin"], name
