"""The CPU kernels, in C: the mixture of experts and its router (moe_cpu.c, the meaning of
moe_experts_ref and route_topk_ref), the lightning attention recurrence (lightning_cpu.c,
lightning_ref), RMSNorm (norm_cpu.c, rms_norm_ref) and paged decode attention (attention_cpu.c,
attention_ref), for fp32 tensors on the CPU. Built into one library on first use with the
machine's C compiler, cached, and called through ctypes, holding the GIL (torch's ops release it; see
library()).

Why: a small model's step is mostly the fixed cost of torch calls (~4 us each, whatever their
size): two GEMMs per busy expert, ~15 ops per lightning chunk, ~6 per norm, a top-k at ~0.2 us a
row. These kernels make one call each. Each returns None when it does not apply (no C compiler,
another dtype or layout, autograd), and the caller (kernels/ops.py) then runs the torch reference.

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

SOURCES = tuple(Path(__file__).with_name(name)
                for name in ("moe_cpu.c", "lightning_cpu.c", "norm_cpu.c", "attention_cpu.c"))
HEADERS = (Path(__file__).with_name("cpu_simd.h"),)
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
        subprocess.run([cc, *FLAGS, *map(str, SOURCES), "-o", tmp, "-lm"], check=True, capture_output=True, text=True,
                       timeout=120)
        os.replace(tmp, target)  # atomic: processes building at once each install a whole file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@functools.cache
def library() -> ctypes.PyDLL | None:
    """The loaded kernels, built if needed; None (after one warning) where they cannot be built."""
    if not enabled():
        return None
    cc = os.environ.get("CC", "cc")
    sources = [path.read_bytes() for path in SOURCES + HEADERS]
    key = hashlib.sha256(b"\0".join([*sources, " ".join(FLAGS).encode(), cc.encode(), _cpu_flags().encode()]))
    cache = Path(os.environ.get("MINIMAX_M1_KERNEL_CACHE") or Path.home() / ".cache" / "minimax_m1" / "kernels")
    target = cache / f"cpu_kernels-{key.hexdigest()[:16]}.so"
    try:
        if not target.exists():
            _build(cc, target)
        # PyDLL: the calls keep the GIL (torch's ops release it). Released, every kernel call let another
        # thread running Python (an exporter encoding spans) take the GIL, and the step loop waited
        # for it until that thread's switch interval (5 ms) ran out: with a thread doing 5% pure-
        # Python work beside the engine, throughput fell 8.3% released and 5.6% held (idle: equal).
        lib = ctypes.PyDLL(str(target))
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", "") or exc
        log.warning("CPU kernels unavailable (%s); using the torch reference ops", detail)
        return None
    lib.moe_experts.restype = ctypes.c_int
    lib.moe_experts.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int] + [ctypes.c_void_p] + [ctypes.c_int64] * 6
    lib.lightning_scan.restype = None
    lib.lightning_scan.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 2 + [ctypes.c_void_p] * 5 + \
        [ctypes.c_int64] * 3 + [ctypes.c_void_p]
    lib.paged_decode_attention.restype = ctypes.c_int
    lib.paged_decode_attention.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64, ctypes.c_void_p] + \
        [ctypes.c_int64] * 5 + [ctypes.c_float, ctypes.c_void_p]
    lib.route_topk.restype = None
    lib.route_topk.argtypes = [ctypes.c_void_p] + [ctypes.c_int64] * 3 + [ctypes.c_void_p] * 2
    lib.rms_norm.restype = None
    lib.rms_norm.argtypes = [ctypes.c_void_p] + [ctypes.c_int64] * 3 + [ctypes.c_void_p, ctypes.c_float] + \
        [ctypes.c_void_p] * 2
    return lib


def _applies(*tensors: torch.Tensor) -> bool:
    """fp32 CPU tensors outside autograd."""
    grad = torch.is_grad_enabled()
    for t in tensors:
        if not t.is_cpu or t.dtype != torch.float32 or (grad and t.requires_grad):
            return False
    return True


def _rows(q, k, v) -> tuple[int, int] | None:
    """(row stride, head stride) shared by q, k, v [N, H, D] with contiguous heads, or None."""
    if not (q.stride() == k.stride() == v.stride() and q.stride(-1) == 1):
        return None
    return q.stride(0), q.stride(1)


def moe_experts_cpu(x, topk_ids, topk_weights, w13, w2, expert_offset: int = 0) -> torch.Tensor | None:
    """moe_experts_ref computed by the C kernel, or None when the kernel does not apply. x is fp32;
    the experts fp32 or bf16 (then used exactly as their fp32 widening: the arithmetic is fp32)."""
    w13_in, w2_in = w13.transpose(1, 2), w2.transpose(1, 2)  # [E, h, 2I], [E, I, h]: views
    if not (w13.dtype == w2.dtype and w13.dtype in (torch.float32, torch.bfloat16) and w13_in.is_contiguous()
            and w2_in.is_contiguous() and w13.device.type == "cpu"):
        return None
    if not _applies(x, topk_weights) or (torch.is_grad_enabled() and (w13.requires_grad or w2.requires_grad)):
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


def route_topk_cpu(logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """route_topk_ref computed by the C kernel, or None when it does not apply."""
    if not _applies(logits):
        return None
    lib = library()
    if lib is None:
        return None
    logits = logits.contiguous()
    n, e = logits.shape
    ids = torch.empty(n, top_k, dtype=torch.int64)
    weights = torch.empty(n, top_k, dtype=torch.float32)
    lib.route_topk(logits.data_ptr(), n, e, top_k, ids.data_ptr(), weights.data_ptr())
    return ids, weights


def lightning_scan_cpu(q, k, v, slope, pool, slot_ids, cu_seqlens, fresh=None) -> torch.Tensor | None:
    """The lightning recurrence over packed sequences (see lightning_cpu.c): sequence i's tokens
    cu_seqlens[i]..cu_seqlens[i+1] run from state pool[slot_ids[i]] (zeroed first where the bool
    fresh[i] is set), updated in place (a negative slot skips the sequence; its rows of the output
    are left as they were: zero). Returns out [N, H, D], or None when the kernel does not apply."""
    if not _applies(q, k, v, pool) or not pool.is_contiguous():
        return None
    strides = _rows(q, k, v)
    if strides is None:
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        strides = _rows(q, k, v)
    lib = library()
    if lib is None:
        return None
    n, h, d = q.shape
    assert pool.shape[1:] == (h, d, d), f"state pool {tuple(pool.shape)} does not hold [H={h}, D={d}, D] states"
    slope = slope.to(torch.float32).contiguous()
    slots = slot_ids.to(torch.int64).contiguous()
    cu = cu_seqlens.to(torch.int64).contiguous()
    fresh = None if fresh is None else fresh.to(torch.bool).contiguous()
    out = torch.zeros(n, h, d, dtype=torch.float32)
    lib.lightning_scan(q.data_ptr(), k.data_ptr(), v.data_ptr(), strides[0], strides[1], slope.data_ptr(),
                       pool.data_ptr(), slots.data_ptr(), cu.data_ptr(), None if fresh is None else fresh.data_ptr(),
                       slots.numel(), h, d, out.data_ptr())
    return out


def rms_norm_cpu(x: torch.Tensor, weight: torch.Tensor, eps: float, gate: torch.Tensor | None = None
                 ) -> torch.Tensor | None:
    """rms_norm_ref (without a custom variance) computed by the C kernel, or None when it does not
    apply. x [..., C] with contiguous channels; gate shaped like x."""
    if not _applies(x, weight) or x.stride(-1) != 1 or not weight.is_contiguous():
        return None
    if gate is not None:
        if not _applies(gate) or gate.shape != x.shape:
            return None
        gate = gate.contiguous()
    lib = library()
    if lib is None:
        return None
    c = x.shape[-1]
    rows = x.reshape(-1, c)  # a view for the layouts the model passes
    out = torch.empty(rows.shape, dtype=torch.float32)
    lib.rms_norm(rows.data_ptr(), rows.shape[0], c, rows.stride(0), weight.data_ptr(), eps,
                 None if gate is None else gate.data_ptr(), out.data_ptr())
    return out.view(x.shape)


def paged_decode_attention_cpu(q, k_pool, v_pool, tables, lengths) -> torch.Tensor | None:
    """paged_decode_attention_ref computed by the C kernel (the keys read in place through the
    block tables), or None when it does not apply."""
    if not _applies(q, k_pool, v_pool) or not (k_pool.is_contiguous() and v_pool.is_contiguous()):
        return None
    lib = library()
    if lib is None:
        return None
    b, h, d = q.shape
    _, bs, hkv, _ = k_pool.shape
    q = q.contiguous()
    tables = tables.to(torch.int64).contiguous()
    lengths = lengths.to(torch.int64).contiguous()
    out = torch.empty(b, h, d, dtype=torch.float32)
    rc = lib.paged_decode_attention(q.data_ptr(), k_pool.data_ptr(), v_pool.data_ptr(), tables.data_ptr(),
                                    tables.shape[1], lengths.data_ptr(), b, h, hkv, d, bs, d ** -0.5, out.data_ptr())
    if rc != 0:
        raise MemoryError("CPU decode attention kernel: out of memory for its running-softmax buffer")
    return out
