"""Torch reference op for the SiLU-gated mixture-of-experts compute.

Legend: T tokens, K experts per token, E local experts, n routed entries (token, expert) kept,
h hidden, I expert intermediate size.
Expert e computes w2 (silu(w1 x) * w3 x); w1 and w3 are stored fused as w13 = [w1; w3].

The entries are sorted by expert once; the gather, activation, weighting and scatter then run
once for all experts, and each expert with entries runs its two GEMMs on its rows. Idle experts
cost nothing. Weights may be stored narrower than x (a bf16 copy of bf16-valued fp32 weights,
LocalExperts.use_cpu_layout): they are widened exactly. On the CPU the C kernel of moe_cpu runs
instead where it applies (kernels/ops.py); this op is its reference and fallback. (Batching the
experts into one padded GEMM, or torch's grouped GEMM, was measured slower on the demo model's
routing: it is uneven, so padding to the busiest expert multiplies the work, and the CPU grouped
GEMM walks idle experts too.)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def moe_experts_ref(
    x: torch.Tensor,  # [T, h]
    topk_ids: torch.Tensor,  # [T, K] global expert ids
    topk_weights: torch.Tensor,  # [T, K] routing weights (0 for unused slots)
    w13: torch.Tensor,  # [E, 2I, h] gate (w1) rows first, then up (w3); any strides; x's dtype or narrower
    w2: torch.Tensor,  # [E, h, I]; any strides; as w13
    expert_offset: int = 0,  # global id of local expert 0; ids outside the local range are skipped
) -> torch.Tensor:
    """Weighted sum of the experts each token routes to. Returns [T, h] in x's dtype."""
    num_local = w13.shape[0]
    t, k = topk_ids.shape
    local = topk_ids - expert_offset  # [T, K]
    valid = (local >= 0) & (local < num_local)
    flat_ids = torch.where(valid, local, num_local).flatten()  # [T*K], num_local = skip
    order = torch.argsort(flat_ids, stable=True)  # [T*K] entries grouped by expert; skipped ones last
    counts = torch.bincount(flat_ids, minlength=num_local + 1)[:num_local].tolist()  # [E]
    n = sum(counts)
    out = torch.zeros(t, x.shape[1], dtype=torch.float32, device=x.device)  # [T, h]
    if n == 0:
        return out.to(x.dtype)
    entries = order[:n]  # [n] entry index (token * K + slot), grouped by expert
    tokens = entries // k  # [n]
    xs = x.index_select(0, tokens)  # [n, h]
    parts, start = [], 0
    for e, c in enumerate(counts):
        if c:
            gate, up = (xs[start:start + c] @ w13[e].to(x.dtype).t()).chunk(2, dim=-1)  # [c, I] each
            parts.append((F.silu(gate) * up) @ w2[e].to(x.dtype).t())  # [c, h]
            start += c
    ys = parts[0] if len(parts) == 1 else torch.cat(parts)  # [n, h]
    weights = topk_weights.to(torch.float32).flatten()[entries]  # [n]
    out.index_add_(0, tokens, ys.to(torch.float32) * weights[:, None])
    return out.to(x.dtype)


def route_topk_ref(logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The router without a threshold: softmax over the gate logits [N, E] in fp32 -> top-k ->
    renormalise. Returns (ids [N, K] int64, weights [N, K] fp32). (The model's `route` adds the
    per-token threshold.)"""
    probs = torch.softmax(logits.to(torch.float32), dim=-1)  # [N, E]
    top_p, top_i = torch.topk(probs, top_k, dim=-1)  # [N, K]
    return top_i, top_p / top_p.sum(dim=-1, keepdim=True)
