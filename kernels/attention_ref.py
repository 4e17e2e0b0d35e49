"""Torch reference op for decode attention over paged keys and values (the softmax layers' decode
step; the CPU kernel is kernels/attention_cpu.c).

Legend: B sequences, H query heads, Hkv key/value heads, D head dim, NB blocks of BS tokens, nb
blocks per table row."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def paged_decode_attention_ref(
    q: torch.Tensor,  # [B, H, D], one new token per sequence
    k_pool: torch.Tensor,  # [NB, BS, Hkv, D]
    v_pool: torch.Tensor,  # [NB, BS, Hkv, D]
    tables: torch.Tensor,  # [B, nb] int64 block ids (rows padded with any valid block)
    lengths: torch.Tensor,  # [B] int64 tokens to attend to, at most nb * BS; on the host
) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v over each sequence's first lengths[b] cached tokens. [B, H, D]"""
    b, bs = tables.shape[0], k_pool.shape[1]
    width = int(lengths.max()) if b else 0  # a host tensor: no device sync
    pos = torch.arange(width, device=q.device)  # [L]
    blocks = tables.gather(1, (pos // bs).expand(b, width))  # [B, L] block of each position
    keys, values = k_pool[blocks, pos % bs], v_pool[blocks, pos % bs]  # [B, L, Hkv, D]
    mask = pos[None, :] < lengths.to(q.device)[:, None]  # [B, L]
    o = F.scaled_dot_product_attention(q.unsqueeze(2), keys.transpose(1, 2), values.transpose(1, 2),
                                       attn_mask=mask[:, None, None, :], enable_gqa=q.shape[1] != k_pool.shape[2])
    return o.squeeze(2)
