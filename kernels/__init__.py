"""Compute ops with one API: Triton kernels on CUDA tensors, torch reference ops otherwise.

The model and the workers call only the names exported here.
"""
from minimax_m1.kernels.ops import (lightning_attention, lightning_decode, lightning_prefill, moe_experts,
                                    paged_decode_attention, rms_norm, route_topk)

__all__ = ["lightning_attention", "lightning_prefill", "lightning_decode", "moe_experts", "paged_decode_attention",
           "rms_norm", "route_topk"]
