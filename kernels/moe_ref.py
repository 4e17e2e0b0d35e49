"""Torch reference op for the SiLU-gated mixture-of-experts compute.

Legend: T tokens, K experts per token, E local experts, n routed entries (token, expert) kept,
h hidden, I expert intermediate size.
Expert e computes w2 (silu(w1 x) * w3 x); w1 and w3 are stored fused as w13 = [w1; w3].

The entries are sorted by expert once; the experts' GEMMs then run as two grouped GEMMs, and the
gather, activation, weighting and scatter run once for all experts. On a CPU, decode steps give
each expert a handful of rows, so the number of ops per expert, not FLOPs, sets the time.
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
    order = torch.argsort(flat_ids, stable=True)  # [T*K] entries grouped by expert; skipped ones last
    counts_t = torch.bincount(flat_ids, minlength=num_local + 1)[:num_local]  # [E]
    counts = counts_t.tolist()
    n = sum(counts)
    out = torch.zeros(t, x.shape[1], dtype=torch.float32, device=x.device)  # [T, h]
    if n == 0:
        return out.to(x.dtype)
    entries = order[:n]  # [n] entry index (token * K + slot), grouped by expert
    tokens = entries // k  # [n]
    xs = x.index_select(0, tokens)  # [n, h]
    ends = counts_t.cumsum(0, dtype=torch.int32)  # [E] row ends, for both grouped GEMMs
    h13 = _grouped_mm(xs, w13, counts, ends)  # [n, 2I]
    gate, up = h13.chunk(2, dim=-1)  # [n, I] each
    ys = _grouped_mm(F.silu(gate) * up, w2, counts, ends)  # [n, h]
    weights = topk_weights.to(torch.float32).flatten()[entries]  # [n]
    out.index_add_(0, tokens, ys.to(torch.float32) * weights[:, None])
    return out.to(x.dtype)


def _grouped_mm(rows: torch.Tensor, weights: torch.Tensor, counts: list[int], ends: torch.Tensor) -> torch.Tensor:
    """rows [n, a] grouped by expert (counts[e] rows for expert e, ending at row ends[e]) times
    weights[e] [b, a]^T -> [n, b].

    Inference uses torch's native grouped GEMM (one op for all experts) where this torch has it and
    the operands are 16-byte aligned, as it requires; under autograd (demo training), and otherwise,
    one matmul per used expert."""
    if (_HAS_GROUPED_MM and not (torch.is_grad_enabled() and (rows.requires_grad or weights.requires_grad))
            and _aligned16(rows) and _aligned16(weights)):
        return torch._grouped_mm(rows, weights.transpose(1, 2), offs=ends)
    parts, start = [], 0
    for e, c in enumerate(counts):
        if c:
            parts.append(rows[start:start + c] @ weights[e].t())
            start += c
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _aligned16(t: torch.Tensor) -> bool:
    return t.stride(-1) == 1 and all(st * t.element_size() % 16 == 0 for st in t.stride()[:-1])


_HAS_GROUPED_MM = hasattr(torch, "_grouped_mm")
