"""Tensor parallelism for the attention ranks, applied after the model is built (as gpt-fast does).

`apply_tp(model, plan, tp_rank, group)` swaps modules of a built (usually meta-device) model for
their sharded forms and returns where each sharded tensor comes from in the checkpoint, so that
`load_sharded` reads only this rank's rows. layers.py never mentions ranks.

Per layer, with rank r holding query heads [r*H/tp, (r+1)*H/tp):
- lightning: qkv_proj and output_gate are column-parallel (their rows are per head), the output
  RMSNorm spans all heads so its variance is all-reduced, out_proj is row-parallel (all-reduce);
- softmax: q_proj column-parallel by query heads, k_proj/v_proj by KV heads (one replicated head
  per rank when tp > Hkv), o_proj row-parallel;
- the LM head is vocab-parallel: each rank computes ceil(V/tp) logits, then they are gathered.
The embedding, layer norms and router gates are replicated.

Legend: N tokens, h hidden, H heads, D head dim, V vocabulary, S sequences.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from minimax_m1.model_shards.checkpoint import CheckpointError, SafetensorsCheckpoint
from minimax_m1.model_shards.config import MiniMaxM1Config, layer_decay_factor, lightning_slopes
from minimax_m1.model_shards.layers import LightningAttention, RMSNorm, SoftmaxAttention
from minimax_m1.model_shards.shard_plan import ShardPlan
from minimax_m1.model_shards.weights import check_names, detect_layout, read_param


class TPGroup:
    """The attention ranks' process group as the sharded modules see it, with a byte counter of
    what this rank contributes to collectives (for the traffic figures of bench/sharded_step.py)."""

    def __init__(self, rank: int, size: int, group=None):
        self.rank, self.size, self.group = rank, size, group
        self.bytes_sent = 0

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        if self.size > 1:
            import torch.distributed as dist

            dist.all_reduce(t, group=self.group)
            self.bytes_sent += t.numel() * t.element_size()
        return t

    def all_gather(self, t: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """Concatenate equal-shaped t of every rank along `dim`, in rank order."""
        if self.size == 1:
            return t
        import torch.distributed as dist

        t = t.contiguous()
        parts = [torch.empty_like(t) for _ in range(self.size)]
        dist.all_gather(parts, t, group=self.group)
        self.bytes_sent += t.numel() * t.element_size()
        return torch.cat(parts, dim=dim)


@dataclass(frozen=True)
class Shard:
    """The slice [start, end) along `dim` of the checkpoint's full tensor that a rank holds.
    A local tensor longer than end - start (the last vocab shard) is zero-padded."""

    dim: int
    start: int
    end: int


class RowParallelLinear(nn.Linear):
    """y = all_reduce(x_local @ W_local^T): the input features are split across ranks."""

    def __init__(self, in_features: int, out_features: int, group: TPGroup, device=None, dtype=None):
        super().__init__(in_features, out_features, bias=False, device=device, dtype=dtype)
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.group.all_reduce(F.linear(x, self.weight))


class AllReducedRMSNorm(RMSNorm):
    """RMSNorm over channels split across ranks: the mean of squares is all-reduced."""

    def __init__(self, local_size: int, full_size: int, eps: float, group: TPGroup):
        super().__init__(local_size, eps)
        self.full_size = full_size
        self.group = group

    def variance(self, x: torch.Tensor) -> torch.Tensor:
        squares = x.pow(2).sum(-1, keepdim=True)  # [N, 1] fp32
        return self.group.all_reduce(squares) / self.full_size


class VocabParallelLMHead(nn.Linear):
    """Each rank computes ceil(V/tp) logits; the gathered result is trimmed to V."""

    def __init__(self, hidden: int, vocab: int, group: TPGroup, device=None, dtype=None):
        super().__init__(hidden, math.ceil(vocab / group.size), bias=False, device=device, dtype=dtype)
        self.vocab = vocab
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        local = F.linear(x, self.weight)  # [S, V/tp]
        return self.group.all_gather(local, dim=-1)[..., : self.vocab]  # [S, V]


def _like(old: nn.Linear) -> dict:
    return {"device": old.weight.device, "dtype": old.weight.dtype}


def _column(old: nn.Linear, rows: int) -> nn.Linear:
    return nn.Linear(old.in_features, rows, bias=False, **_like(old))


def apply_tp(model: nn.Module, plan: ShardPlan, tp_rank: int, group: TPGroup) -> dict[str, Shard]:
    """Shard the attention and the LM head of a MiniMaxM1ForCausalLM in place for `tp_rank`.
    Returns {parameter or buffer name: Shard} for every tensor that is no longer full-size."""
    config: MiniMaxM1Config = model.config
    plan.validate(config)
    shards: dict[str, Shard] = {}
    heads = plan.heads_of(tp_rank, config.num_attention_heads)
    kv_heads = plan.kv_heads_of(tp_rank, config.num_key_value_heads)
    d = config.head_dim
    for i, layer in enumerate(model.model.layers):
        attn, p = layer.self_attn, f"model.layers.{i}.self_attn"
        if isinstance(attn, LightningAttention):
            # qkv rows are laid out per head as [H, 3D]: a head range is a contiguous row range.
            attn.qkv_proj = _column(attn.qkv_proj, len(heads) * 3 * d)
            shards[f"{p}.qkv_proj.weight"] = Shard(0, heads.start * 3 * d, heads.stop * 3 * d)
            attn.output_gate = _column(attn.output_gate, len(heads) * d)
            shards[f"{p}.output_gate.weight"] = Shard(0, heads.start * d, heads.stop * d)
            norm = AllReducedRMSNorm(len(heads) * d, config.num_attention_heads * d, attn.norm.eps, group)
            attn.norm = norm.to(device=attn.norm.weight.device, dtype=attn.norm.weight.dtype)
            shards[f"{p}.norm.weight"] = Shard(0, heads.start * d, heads.stop * d)
            attn.out_proj = RowParallelLinear(len(heads) * d, config.hidden_size, group, **_like(attn.out_proj))
            shards[f"{p}.out_proj.weight"] = Shard(1, heads.start * d, heads.stop * d)
            attn.slope = torch.empty(len(heads), dtype=torch.float32, device=attn.slope.device)
            shards[f"{p}.slope"] = Shard(0, heads.start, heads.stop)
        elif isinstance(attn, SoftmaxAttention):
            attn.q_proj = _column(attn.q_proj, len(heads) * d)
            shards[f"{p}.q_proj.weight"] = Shard(0, heads.start * d, heads.stop * d)
            for name in ("k_proj", "v_proj"):
                setattr(attn, name, _column(getattr(attn, name), len(kv_heads) * d))
                shards[f"{p}.{name}.weight"] = Shard(0, kv_heads.start * d, kv_heads.stop * d)
            attn.o_proj = RowParallelLinear(len(heads) * d, config.hidden_size, group, **_like(attn.o_proj))
            shards[f"{p}.o_proj.weight"] = Shard(1, heads.start * d, heads.stop * d)
            attn.num_kv_heads = len(kv_heads)
        else:
            raise TypeError(f"layer {i}: no tensor-parallel form for {type(attn).__name__}")
        attn.num_heads = len(heads)
    per = math.ceil(config.vocab_size / plan.tp)
    model.lm_head = VocabParallelLMHead(config.hidden_size, config.vocab_size, group, **_like(model.lm_head))
    shards["lm_head.weight"] = Shard(0, tp_rank * per, min(config.vocab_size, (tp_rank + 1) * per))
    return shards


def lightning_slope(config: MiniMaxM1Config, layer_idx: int) -> torch.Tensor:
    """The full [H] decay slopes of a lightning layer (the same formula as LightningAttention)."""
    factor = layer_decay_factor(layer_idx, config.num_hidden_layers)
    return (torch.tensor(lightning_slopes(config.num_attention_heads), dtype=torch.float64) * factor).to(torch.float32)


def load_sharded(model: nn.Module, ckpt: SafetensorsCheckpoint, config: MiniMaxM1Config, shards: dict[str, Shard],
                 skip: tuple[str, ...] = ()) -> None:
    """Fill the parameters of a (materialized) sharded model, reading only this rank's rows of
    column-parallel tensors. Row-parallel tensors (split along dim 1) are read whole and narrowed:
    safetensors stores rows contiguously, so a column range is not one byte range.
    Parameters whose name contains one of `skip` are left alone (expert weights load elsewhere)."""
    layout = detect_layout(ckpt)
    check_names(config, ckpt, layout)
    present = set(ckpt.names())
    modules = dict(model.named_modules())
    for name, param in model.named_parameters():
        if any(s in name for s in skip):
            continue
        shard = shards.get(name)
        with torch.no_grad():
            if shard is None:
                param.copy_(read_param(ckpt, layout, name, tuple(param.shape), modules, present))
            else:
                value = _read_shard(ckpt, name, shard, tuple(param.shape), present)
                param.zero_()
                param.narrow(shard.dim, 0, shard.end - shard.start).copy_(value)
    for name, buf in model.named_buffers():
        if name.endswith(".self_attn.slope"):
            layer_idx = int(name.split(".")[2])
            shard = shards.get(name)
            full = lightning_slope(config, layer_idx)
            buf.copy_(full if shard is None else full[shard.start:shard.end])


def _read_shard(ckpt: SafetensorsCheckpoint, name: str, shard: Shard, local_shape: tuple[int, ...],
                present: set[str]) -> torch.Tensor:
    source = name
    if name == "lm_head.weight" and name not in present:
        source = "model.embed_tokens.weight"  # tied embeddings
    full = ckpt.entry(source).shape
    same = [i for i in range(len(full)) if i != shard.dim]  # dims that are not split
    if (len(full) != len(local_shape) or any(full[i] != local_shape[i] for i in same)
            or shard.end > full[shard.dim]):
        raise CheckpointError(f"tensor '{source}' has shape {list(full)}, which does not hold the slice "
                              f"{shard.start}:{shard.end} of dim {shard.dim} for a local shape {list(local_shape)}")
    if shard.dim == 0:
        return ckpt.read(source, rows=(shard.start, shard.end))
    return ckpt.read(source).narrow(shard.dim, shard.start, shard.end - shard.start)


__all__ = ["TPGroup", "Shard", "RowParallelLinear", "AllReducedRMSNorm", "VocabParallelLMHead", "apply_tp",
           "load_sharded", "lightning_slope"]
