"""Pieces shared by the Triton kernels: dot and cast helpers, tile sizes, argument checks."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
INDEX_DTYPES = (torch.int32, torch.int64)


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot input precision: fp32 inputs honour torch's TF32 switch; 16-bit inputs ignore it."""
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def tile(n: int) -> int:
    """The power-of-two tile that covers n; tl.dot needs every tile side >= 16."""
    return max(16, triton.next_power_of_2(n))


def widen(t: torch.Tensor) -> bool:
    """The WIDEN flag of the helpers below: True when Triton runs on the CPU interpreter."""
    return not t.is_cuda


# WIDEN is True only under Triton's CPU interpreter (no CUDA tensor), whose bfloat16 support has two
# faults (Triton 3.9): tl.dot multiplies bfloat16 operands as their raw uint16 bits, and an fp32 ->
# bfloat16 cast truncates where the GPU rounds to nearest even. The two helpers below route around
# both, so interpreted runs round exactly as the GPU does; on the GPU they are a plain dot and cast.
@triton.jit
def mm(a, b, PRECISION: tl.constexpr, WIDEN: tl.constexpr):
    """a @ b with fp32 accumulation."""
    if WIDEN:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def cast(x, dtype: tl.constexpr, WIDEN: tl.constexpr):
    """x.to(dtype), rounding to nearest even."""
    if WIDEN:
        if dtype == tl.bfloat16:
            bits = x.to(tl.float32).to(tl.uint32, bitcast=True)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
            x = bits.to(tl.float32, bitcast=True)  # now exact in bfloat16, so truncation is exact
    return x.to(dtype)


def check_like(t: torch.Tensor, name: str, ref: torch.Tensor, ref_name: str) -> None:
    """t has ref's shape, dtype and device."""
    if t.shape != ref.shape:
        raise ValueError(f"{name} must have {ref_name}'s shape {tuple(ref.shape)}, got {tuple(t.shape)}")
    check_on(t, name, ref.dtype, ref.device)


def check_on(t: torch.Tensor, name: str, dtype: torch.dtype, device: torch.device) -> None:
    if t.dtype != dtype:
        raise ValueError(f"{name} must be {dtype}, got {t.dtype}")
    if t.device != device:
        raise ValueError(f"{name} must be on {device}, got {t.device}")


def check_unit_stride(t: torch.Tensor, name: str) -> None:
    if t.numel() and t.stride(-1) != 1:
        raise ValueError(f"{name} must have unit stride in its last axis, got strides {t.stride()}")
