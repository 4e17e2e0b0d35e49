"""The CPU mixture-of-experts kernel (moe_cpu.c): built on first use with the machine's C compiler,
cached, and called through ctypes. Same meaning as moe_experts_ref, for fp32 tensors on the CPU.

One call per MoE layer instead of two torch GEMM calls per busy expert (~4 us each, whatever
their size: most of a small model's decode step). `moe_experts_cpu` returns None when the kernel
does not apply (no C compiler, another dtype, experts not stored input-major, autograd), and the
caller then runs the torch reference.

    MINIMAX_M1_CPU_KERNELS=0        never build or use it (the torch reference runs)
    MINIMAX_M1_KERNEL_CACHE=DIR     where the built library is kept (default ~/.cache/minimax_m1/kernels)
    CC                              the compiler (default cc)

The library's name carries a hash of the source, the flags, the compiler and the CPU's feature
flags (it is built with -march=native), so a changed source or another CPU model builds afresh.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import subprocess
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("moe_cpu.c")
FLAGS = ("-O3", "-march=native", "-shared", "-fPIC")


def enabled() -> bool:
    return os.environ.get("MINIMAX_M1_CPU_KERNELS", "1") != "0"


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        return ""


def _build(cc: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".so.tmp")
    os.close(fd)
    try:
        subprocess.run([cc, *FLAGS, str(SOURCE), "-o", tmp, "-lm"], check=True, capture_output=True, text=True, timeout=120)
        os.replace(tmp, target)  # atomic: processes building at once each install a whole file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded kernel, built if needed; None (after one warning) where it cannot be built."""
    if not enabled():
        return None
    cc = os.environ.get("CC", "cc")
    source = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, " ".join(FLAGS).encode(), cc.encode(), _cpu_flags().encode()]))
    cache = Path(os.environ.get("MINIMAX_M1_KERNEL_CACHE") or Path.home() / ".cache" / "minimax_m1" / "kernels")
    target = cache / f"moe_cpu-{key.hexdigest()[:16]}.so"
    try:
        if not target.exists():
            _build(cc, target)
        lib = ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", "") or exc
        log.warning("CPU MoE kernel unavailable (%s); using the torch reference", detail)
        return None
    fn = lib.moe_experts
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int] + [ctypes.c_void_p] + [ctypes.c_int64] * 6
    return lib


def moe_experts_cpu(x, topk_ids, topk_weights, w13, w2, expert_offset: int = 0) -> torch.Tensor | None:
    """moe_experts_ref computed by the C kernel, or None when the kernel does not apply. x is fp32;
    the experts fp32 or bf16 (then used exactly as their fp32 widening: the arithmetic is fp32)."""
    w13_in, w2_in = w13.transpose(1, 2), w2.transpose(1, 2)  # [E, h, 2I], [E, I, h]: views
    if not (x.device.type == "cpu" and x.dtype == torch.float32 and w13.dtype == w2.dtype
            and w13.dtype in (torch.float32, torch.bfloat16) and w13_in.is_contiguous() and w2_in.is_contiguous()):
        return None
    if torch.is_grad_enabled() and (x.requires_grad or w13.requires_grad or w2.requires_grad or topk_weights.requires_grad):
        return None
    lib = library()
    if lib is None:
        return None
    t, k = topk_ids.shape
    num_experts, h, two_i = w13_in.shape
    x = x.contiguous()
    ids = topk_ids.to(torch.int64).contiguous()
    weights = topk_weights.to(torch.float32).contiguous()
    out = torch.empty(t, h, dtype=torch.float32)
    rc = lib.moe_experts(x.data_ptr(), ids.data_ptr(), weights.data_ptr(), w13_in.data_ptr(), w2_in.data_ptr(),
                         int(w13.dtype == torch.bfloat16), out.data_ptr(), t, k, num_experts, h, two_i // 2, expert_offset)
    if rc != 0:
        raise MemoryError("CPU MoE kernel: out of memory for its scratch buffers")
    return out
