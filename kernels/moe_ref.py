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
    t, k = topk_ids.shape
    local = topk_ids - expert_offset  # [T, K]
    valid = (local >= 0) & (local < num_local)
    flat_ids = torch.where(valid, local, num_local).flatten()  # [T*K], num_local = skip
    order = torch.argsort(flat_ids, stable=True)  # [T*K] entries grouped by expert
    counts = torch.bincount(flat_ids, minlength=num_local + 1).tolist()
    xs = x.index_select(0, order // k)  # [T*K, h] each entry's token, grouped by expert
    ys = torch.zeros(t * k, x.shape[1], dtype=torch.float32, device=x.device)  # [T*K, h]
    live = counts[:num_local]
    hit = [e for e in range(num_local) if live[e]]
    cap = max(live, default=0)
    if hit and cap <= 16 and len(hit) * cap <= 2 * sum(live) + len(hit):
        # Few entries per expert (decode-sized steps): pad each used expert's group to `cap` rows and run them
        # as two batched GEMMs instead of 2 x len(hit) small ones; padding at most doubles the work.
        group = flat_ids[order]  # [T*K] expert of each sorted entry (num_local = skipped)
        starts = torch.tensor([0] + list(torch.tensor(counts).cumsum(0)[:-1].tolist()), device=x.device)
        rank = torch.arange(order.numel(), device=x.device) - starts[group]  # row within its group
        keep = group < num_local
        slot_of = torch.full((num_local,), -1, dtype=torch.long, device=x.device)
        hit_ids = torch.tensor(hit, device=x.device)
        slot_of[hit_ids] = torch.arange(len(hit), device=x.device)
        g, r = slot_of[group[keep]], rank[keep]
        padded = torch.zeros(len(hit), cap, x.shape[1], dtype=x.dtype, device=x.device)  # [E', cap, h]
        padded[g, r] = xs[keep]
        gate, up = torch.bmm(padded, w13[hit_ids].transpose(1, 2)).chunk(2, dim=-1)  # [E', cap, I] each
        ys[keep] = torch.bmm(F.silu(gate) * up, w2[hit_ids].transpose(1, 2))[g, r].to(torch.float32)  # [n, h]
    else:
        start = 0
        for e in range(num_local):
            n = counts[e]
            if n:
                gate, up = F.linear(xs[start:start + n], w13[e]).chunk(2, dim=-1)  # [n, I] each
                ys[start:start + n] = F.linear(F.silu(gate) * up, w2[e])  # [n, h]
            start += n
    # back to (token, k) order, weight, and sum over k; skipped entries stay zero
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    ys = ys.index_select(0, inverse).view(t, k, -1)  # [T, K, h]
    out = (ys * topk_weights.to(torch.float32).unsqueeze(-1)).sum(dim=1)  # [T, h]
    return out.to(x.dtype)
