"""Torch reference op for decode attention over paged keys and values (the softmax layers' decode
step; the CPU kernel is kernels/attention_cpu.c).

Legend: B sequences, H query heads, Hkv key/value heads, D head dim, NB blocks of BS tokens, nb
blocks per table row."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def gather_blocks(pool: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """Copies of the given blocks of a [NB, BS, Hkv, D] pool. [len(blocks), BS, Hkv, D]
    (Whole blocks as rows of a 2-D view: on CPU several times faster than advanced indexing or a
    4-D index_select.)"""
    return pool.view(pool.shape[0], -1).index_select(0, blocks).view(-1, *pool.shape[1:])


def paged_decode_attention_ref(
    q: torch.Tensor,  # [B, H, D], one new token per sequence
    k_pool: torch.Tensor,  # [NB, BS, Hkv, D]
    v_pool: torch.Tensor,  # [NB, BS, Hkv, D]
    tables: torch.Tensor,  # [B, nb] int64 block ids (rows padded with any valid block)
    lengths: torch.Tensor,  # [B] int64 tokens to attend to, at most nb * BS
) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v over each sequence's first lengths[b] cached tokens. [B, H, D]"""
    b, nb = tables.shape
    bs = k_pool.shape[1]
    keys = gather_blocks(k_pool, tables.reshape(-1)).view(b, nb * bs, *k_pool.shape[2:])  # [B, L, Hkv, D]
    values = gather_blocks(v_pool, tables.reshape(-1)).view(b, nb * bs, *v_pool.shape[2:])
    mask = torch.arange(nb * bs, device=q.device)[None, :] < lengths[:, None]  # [B, L]
    o = F.scaled_dot_product_attention(q.unsqueeze(2), keys.transpose(1, 2), values.transpose(1, 2),
                                       attn_mask=mask[:, None, None, :], enable_gqa=q.shape[1] != k_pool.shape[2])
    return o.squeeze(2)
