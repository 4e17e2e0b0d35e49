"""Helpers for parity with transformers' MiniMaxForCausalLM (the oracle where it agrees with the release)."""
from __future__ import annotations

import torch

from minimax_m1.model_shards.config import MiniMaxM1Config


def hf_model(config: MiniMaxM1Config, seed: int = 0):
    """A random transformers MiniMaxForCausalLM for `config` (full rotary, power-of-two heads),
    with perturbed norm weights so the norms are exercised too."""
    from transformers import MiniMaxConfig, MiniMaxForCausalLM

    raw = config.to_transformers_dict()
    for key in ("architectures", "model_type", "dtype"):
        raw.pop(key)
    torch.manual_seed(seed)
    model = MiniMaxForCausalLM(MiniMaxConfig(**raw)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn_like(p))
    return model


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())
