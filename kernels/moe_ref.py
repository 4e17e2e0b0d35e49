"""Torch reference op for the SiLU-gated mixture-of-experts compute.

Legend: T tokens, K experts per token, E local experts, h hidden, I expert intermediate size.
Expert e computes w2 (silu(w1 x) * w3 x); w1 and w3 are stored fused as w13 = [w1; w3].
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
    num_local = w13.shape[0]
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    local = topk_ids - expert_offset  # [T, K]
    valid = (local >= 0) & (local < num_local)
    flat_ids = torch.where(valid, local, num_local).flatten()  # [T*K], num_local = skip
    order = torch.argsort(flat_ids, stable=True)
    counts = torch.bincount(flat_ids, minlength=num_local + 1).tolist()
    token_of = order // topk_ids.shape[1]  # [T*K] token index of each sorted entry
    weight_of = topk_weights.flatten()[order]
    start = 0
    for e in range(num_local):
        n = counts[e]
        if n == 0:
            continue
        tok = token_of[start : start + n]
        xe = x[tok]  # [n, h]
        gate, up = F.linear(xe, w13[e]).chunk(2, dim=-1)  # [n, I] each
        ye = F.linear(F.silu(gate) * up, w2[e])  # [n, h]
        out.index_add_(0, tok, ye.to(torch.float32) * weight_of[start : start + n, None].to(torch.float32))
        start += n
    return out.to(x.dtype)
