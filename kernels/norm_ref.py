"""Torch reference op for RMSNorm (the model's norms; the CPU kernel is kernels/norm_cpu.c)."""
from __future__ import annotations

from typing import Callable

import torch


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float,
                 variance: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 gate: torch.Tensor | None = None) -> torch.Tensor:
    """weight * x / sqrt(mean(x^2) + eps) over the last dim, computed in fp32, returned in x's dtype
    (then times the weight), then times sigmoid(gate) where a gate (shaped like x) is given.
    `variance` replaces the mean of squares (fp32 x [N, C] -> [N, 1]) where the channels are split
    across ranks and it must be all-reduced."""
    dtype = x.dtype
    x = x.to(torch.float32)
    var = variance(x) if variance is not None else x.pow(2).mean(-1, keepdim=True)
    out = weight * (x * torch.rsqrt(var + eps)).to(dtype)
    return out if gate is None else torch.sigmoid(gate) * out
