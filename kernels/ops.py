"""Dispatch: pick the implementation of each op from the device of its inputs."""
from __future__ import annotations

import torch

from minimax_m1.kernels.lightning_ref import lightning_decode_ref, lightning_prefill_ref
from minimax_m1.kernels.moe_ref import moe_experts_ref


def lightning_prefill(q, k, v, slope, cu_seqlens, initial_states, block_size):
    return lightning_prefill_ref(q, k, v, slope, cu_seqlens, initial_states, block_size)


def lightning_decode(q, k, v, slope, state_pool, slot_ids):
    return lightning_decode_ref(q, k, v, slope, state_pool, slot_ids)


def moe_experts(x, topk_ids, topk_weights, w13, w2, expert_offset: int = 0):
    return moe_experts_ref(x, topk_ids, topk_weights, w13, w2, expert_offset)


__all__ = ["lightning_prefill", "lightning_decode", "moe_experts", "torch"]
