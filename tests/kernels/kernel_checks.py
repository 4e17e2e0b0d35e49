"""Helpers for the kernel-test bodies, which run in the interpreter child (interp_worker.py)."""
from __future__ import annotations

import contextlib
import os
from types import ModuleType

import torch

# Relative-error bounds from the issue, ||out - ref|| / ||ref||: fp32 (IEEE dots under the
# interpreter; on a GPU with TF32 dots the bound would be 1e-3) and 16-bit inputs.
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}


def interpreted_kernels() -> tuple[ModuleType, ModuleType]:
    """(triton_lightning, triton_moe) as built in this process, checked to run on the interpreter."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("kernel-test bodies must run in the interpreter child (interp.run)")
    from minimax_m1.kernels import triton_lightning, triton_moe

    kind = type(triton_lightning._decode_kernel).__name__
    if kind != "InterpretedFunction":
        raise RuntimeError(f"the kernels were not built for Triton's interpreter: got {kind}")
    return triton_lightning, triton_moe


def interpreter_flag() -> str | None:
    """TRITON_INTERPRET as this process sees it."""
    return os.environ.get("TRITON_INTERPRET")


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref||, in fp64; 0 for two empty tensors."""
    if ref.numel() == 0:
        return 0.0
    ref64 = ref.to(torch.float64)
    return ((out.to(torch.float64) - ref64).norm() / ref64.norm().clamp_min(1e-30)).item()


def poisoned(shape, dtype: torch.dtype) -> torch.Tensor:
    """A NaN-filled tensor: a kernel that leaves any element unwritten leaves a NaN behind."""
    return torch.full(shape, float("nan"), dtype=dtype)


@contextlib.contextmanager
def poisoned_empty():
    """torch.empty / torch.empty_like hand out NaN-filled float tensors inside the block, so a
    scratch buffer that a kernel forgets to write shows up as NaN in its results."""
    empty, empty_like = torch.empty, torch.empty_like

    def fill(t: torch.Tensor) -> torch.Tensor:
        return t.fill_(float("nan")) if t.is_floating_point() else t

    torch.empty = lambda *a, **kw: fill(empty(*a, **kw))
    torch.empty_like = lambda *a, **kw: fill(empty_like(*a, **kw))
    try:
        yield
    finally:
        torch.empty, torch.empty_like = empty, empty_like


def fused_views(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """q, k, v as views into one [rows, H, 3D] tensor, as the model splits its qkv projection."""
    fused = torch.cat([q, k, v], dim=-1)  # [rows, H, 3D]
    return fused.split(q.shape[-1], dim=-1)
