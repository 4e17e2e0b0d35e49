"""Dispatch: pick the implementation of each op from the device of its inputs.

CUDA tensors go to the Triton kernels when Triton imports (the lightning and MoE ops); fp32 CPU
tensors go to the C kernels of cpu_kernels where they apply (each returns None otherwise: another
dtype or layout, autograd, no compiler); everything else goes to the torch reference ops. On the
CPU the lightning layers take one C call for the whole step (lightning_attention), so the separate
lightning_prefill and lightning_decode ops run the reference there. All share one API and one meaning.
The Triton modules are imported on the first CUDA call, so CPU-only users never import Triton.
"""
from __future__ import annotations

import functools
from types import ModuleType

import torch

from minimax_m1.kernels.attention_ref import paged_decode_attention_ref
from minimax_m1.kernels.cpu_kernels import (lightning_scan_cpu, moe_experts_cpu, paged_decode_attention_cpu, rms_norm_cpu,
                                            route_topk_cpu)
from minimax_m1.kernels.lightning_ref import lightning_decode_ref, lightning_prefill_ref
from minimax_m1.kernels.moe_ref import moe_experts_ref, route_topk_ref
from minimax_m1.kernels.norm_ref import rms_norm_ref


@functools.cache
def _triton_kernels() -> tuple[ModuleType, ModuleType] | None:
    """(triton_lightning, triton_moe), or None where Triton is not installed."""
    try:
        from minimax_m1.kernels import triton_lightning, triton_moe
    except ImportError:
        return None
    return triton_lightning, triton_moe


def backend_for(device: torch.device) -> str:
    """'triton' for CUDA devices when Triton imports, else 'torch'."""
    if device.type == "cuda" and _triton_kernels() is not None:
        return "triton"
    return "torch"


def lightning_prefill(q, k, v, slope, cu_seqlens, initial_states, block_size):
    """See lightning_prefill_ref. Returns (out [N, H, D], final states [S, H, D, D] fp32)."""
    if backend_for(q.device) == "triton":
        return _triton_kernels()[0].lightning_prefill_triton(q, k, v, slope, cu_seqlens, initial_states, block_size)
    return lightning_prefill_ref(q, k, v, slope, cu_seqlens, initial_states, block_size)


def lightning_decode(q, k, v, slope, state_pool, slot_ids):
    """See lightning_decode_ref. Returns out [B, H, D]; updates state_pool in place."""
    if backend_for(q.device) == "triton":
        return _triton_kernels()[0].lightning_decode_triton(q, k, v, slope, state_pool, slot_ids)
    return lightning_decode_ref(q, k, v, slope, state_pool, slot_ids)


def lightning_attention(q, k, v, slope, pool, slot_ids, cu_seqlens, fresh, num_decode: int, block_size: int):
    """A lightning layer's attention for one engine step. Sequence i's tokens
    cu_seqlens[i]..cu_seqlens[i+1] (q, k, v [N, H, D]) continue from its state pool[slot_ids[i]]
    ([P, H, D, D] fp32; from zero where the bool fresh[i] is set), which is updated in place. The
    first num_decode sequences have one token each (the decode part). Returns out [N, H, D].
    `fresh` is a host tensor (read without a device sync). On the CPU one C call does it all;
    elsewhere lightning_decode runs the decode part and lightning_prefill the rest."""
    out = lightning_scan_cpu(q, k, v, slope, pool, slot_ids, cu_seqlens, fresh)
    if out is not None:
        return out
    nd, parts = num_decode, []
    if nd:
        slots = slot_ids[:nd]
        if fresh[:nd].any():  # a one-token prompt may land in a reused slot: start from zero
            pool[slots[fresh[:nd].to(slots.device)]] = 0.0
        parts.append(lightning_decode(q[:nd], k[:nd], v[:nd], slope, pool, slots))
    if nd < slot_ids.numel():
        slots = slot_ids[nd:]
        initial = pool[slots].masked_fill(fresh[nd:].to(pool.device).view(-1, 1, 1, 1), 0.0)  # [S', H, D, D]
        o, finals = lightning_prefill(q[nd:], k[nd:], v[nd:], slope, cu_seqlens[nd:] - nd, initial, block_size)
        pool[slots] = finals
        parts.append(o)
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def moe_experts(x, topk_ids, topk_weights, w13, w2, expert_offset: int = 0):
    """See moe_experts_ref. Returns [T, h] in x's dtype. On the CPU the C kernel (moe_cpu) runs
    where it applies."""
    if backend_for(x.device) == "triton":
        return _triton_kernels()[1].moe_experts_triton(x, topk_ids, topk_weights, w13, w2, expert_offset)
    out = moe_experts_cpu(x, topk_ids, topk_weights, w13, w2, expert_offset)
    return out if out is not None else moe_experts_ref(x, topk_ids, topk_weights, w13, w2, expert_offset)


def route_topk(logits, top_k: int):
    """See route_topk_ref. Returns (ids [N, K], weights [N, K] fp32). On the CPU the C kernel runs
    where it applies."""
    out = route_topk_cpu(logits, top_k)
    return out if out is not None else route_topk_ref(logits, top_k)


def rms_norm(x, weight, eps: float, variance=None, gate=None):
    """See rms_norm_ref. On the CPU the C kernel runs where it applies (no custom variance)."""
    out = rms_norm_cpu(x, weight, eps, gate) if variance is None else None
    return out if out is not None else rms_norm_ref(x, weight, eps, variance, gate)


def paged_decode_attention(q, k_pool, v_pool, tables, lengths):
    """See paged_decode_attention_ref. Returns [B, H, D]. On the CPU the C kernel runs where it applies."""
    out = paged_decode_attention_cpu(q, k_pool, v_pool, tables, lengths)
    return out if out is not None else paged_decode_attention_ref(q, k_pool, v_pool, tables, lengths)


__all__ = ["backend_for", "lightning_attention", "lightning_prefill", "lightning_decode", "moe_experts",
           "paged_decode_attention", "rms_norm", "route_topk"]
