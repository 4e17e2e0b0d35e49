"""Torch reference op for the SiLU-gated mixture-of-experts compute.

Legend: T tokens, K experts per token, E local experts, n routed entries (token, expert) kept,
h hidden, I expert intermediate size.
Expert e computes w2 (silu(w1 x) * w3 x); w1 and w3 are stored fused as w13 = [w1; w3].

The entries are sorted by expert once; each used expert then costs exactly two GEMMs written in
place (`out=` views of shared buffers), and the gather, activation, weighting and scatter run once
for all experts. On a CPU, decode steps give each expert a handful of rows, so the number of ops per
expert, not FLOPs, sets the time.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def moe_experts_ref(
    x: torch.Tensor,  # [T, h]
    topk_ids: torch.Tensor,  # [T, K] global expert ids
    topk_weights: torch.Tensor,  # [T, K] routing weights (0 for unused slots)
    w13: torch.Tensor,  # [E, 2I, h] gate (w1) rows first, then up (w3)
    w2: torch.Tensor,  # [E, h, I]
    expert_offset: int = 0,  # global id of local expert 0; ids outside the local range are skipped
) -> torch.Tensor:
    """Weighted sum of the experts each token routes to. Returns [T, h] in x's dtype."""
    num_local, two_i = w13.shape[0], w13.shape[1]
    t, k = topk_ids.shape
    local = topk_ids - expert_offset  # [T, K]
    valid = (local >= 0) & (local < num_local)
    flat_ids = torch.where(valid, local, num_local).flatten()  # [T*K], num_local = skip
    order = torch.argsort(flat_ids, stable=True)  # [T*K] entries grouped by expert; skipped ones last
    counts = torch.bincount(flat_ids, minlength=num_local + 1).tolist()[:num_local]
    n = sum(counts)
    out = torch.zeros(t, x.shape[1], dtype=torch.float32, device=x.device)  # [T, h]
    if n == 0:
        return out.to(x.dtype)
    entries = order[:n]  # [n] entry index (token * K + slot), grouped by expert
    tokens = entries // k  # [n]
    xs = x.index_select(0, tokens)  # [n, h]
    h13 = x.new_empty(n, two_i)  # [n, 2I]
    start = 0
    for e, c in enumerate(counts):
        if c:
            torch.mm(xs[start:start + c], w13[e].t(), out=h13[start:start + c])
            start += c
    gate, up = h13.chunk(2, dim=-1)  # [n, I] each
    act = F.silu(gate) * up
    ys = torch.empty_like(xs)  # [n, h]
    start = 0
    for e, c in enumerate(counts):
        if c:
            torch.mm(act[start:start + c], w2[e].t(), out=ys[start:start + c])
            start += c
    weights = topk_weights.to(torch.float32).flatten()[entries]  # [n]
    out.index_add_(0, tokens, ys.to(torch.float32) * weights[:, None])
    return out.to(x.dtype)
