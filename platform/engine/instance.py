"""ModelInstance: what the engine drives. One step = prefill chunks and decode tokens of a batch
of sequences, each with a state slot and a KV block table. It hides TP and EP.

Two implementations share this interface:
- InProcessModelInstance (tp = ep = 1, no Ray): fast tests and the local CLI;
- the Ray-sharded instance (minimax_m1.engine.sharded) with attention and expert workers.

Messages are explicit dataclasses, so the same objects cross the Ray boundary.
Legend: N packed tokens, S sequences, V vocabulary, L MoE layers, E experts.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


class InstanceDeadError(RuntimeError):
    """The model instance lost a worker or its state; in-flight steps fail and it must rebuild."""


@dataclass
class StepRequest:
    token_ids: list[int]  # [N] new tokens of all sequences, packed in order
    seq_lens: list[int]  # [S] new tokens per sequence
    start_positions: list[int]  # [S] tokens already cached per sequence
    slots: list[int]  # [S] lightning state slot per sequence
    block_tables: list[list[int]]  # [S] physical KV blocks per sequence (covering start + len)
    expert_thresholds: list[float] | None = None  # [S] per-sequence threshold, NaN = exact top-k
    collect_routing: bool = False  # return expert activation counts per sequence and layer


@dataclass
class StepResult:
    logits: torch.Tensor  # [S, V] fp32, at each sequence's last new token
    # [S, L, E] activation counts of this step's tokens, when collect_routing was set
    expert_counts: torch.Tensor | None = None


@dataclass(frozen=True)
class CacheShape:
    num_slots: int  # lightning state slots (max concurrent sequences)
    num_blocks: int  # KV blocks
    block_size: int  # tokens per KV block


class ModelInstance:
    """Interface. `config` is the model's MiniMaxM1Config; `cache_shape` how much cache it holds."""

    config = None
    cache_shape: CacheShape

    def step(self, request: StepRequest) -> StepResult:
        raise NotImplementedError

    def check_health(self) -> None:
        """Raise InstanceDeadError if the instance cannot serve."""

    def rebuild(self) -> None:
        """Re-create whatever died (workers, world, shards) without restarting the caller."""

    def close(self) -> None:
        pass


def to_forward_batch(request: StepRequest, device) -> "ForwardBatch":
    from minimax_m1.model_shards.batch import ForwardBatch

    threshold = None
    if request.expert_thresholds is not None and any(not math.isnan(t) for t in request.expert_thresholds):
        per_token = [t for t, n in zip(request.expert_thresholds, request.seq_lens) for _ in range(n)]
        threshold = torch.tensor(per_token, dtype=torch.float32)
    return ForwardBatch(request.seq_lens, request.start_positions, request.slots, expert_threshold=threshold,
                        collect_routing=request.collect_routing).to(device)


def routing_counts(expert_ids: list[torch.Tensor], cu_seqlens: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Per-sequence activation counts [S, L, E] from per-layer expert ids [N, K] (-1 = unused),
    with one bincount over (sequence, layer, expert) cells."""
    s, layers = cu_seqlens.numel() - 1, len(expert_ids)
    if layers == 0:
        return torch.zeros(s, 0, num_experts, dtype=torch.int64)
    ids = torch.stack([e.cpu() for e in expert_ids])  # [L, N, K]
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).cpu()
    seq_of = torch.repeat_interleave(torch.arange(s), lengths)  # [N]
    cell = (seq_of.view(1, -1, 1) * layers + torch.arange(layers).view(-1, 1, 1)) * num_experts + ids  # [L, N, K]
    counts = torch.bincount(cell[ids >= 0], minlength=s * layers * num_experts)
    return counts.view(s, layers, num_experts)


class InProcessModelInstance(ModelInstance):
    """The whole model in this process (tp = ep = 1)."""

    def __init__(self, model, cache_shape: CacheShape):
        from minimax_m1.engine.paged_cache import PagedCache

        self.model = model
        self.config = model.config
        self.cache_shape = cache_shape
        self.cache = PagedCache(model.config, cache_shape.num_slots, cache_shape.num_blocks, cache_shape.block_size,
                                model.dtype, model.device)

    @classmethod
    def from_pretrained(cls, path: str, cache_shape: CacheShape, dtype=None, device=None) -> "InProcessModelInstance":
        from minimax_m1.model_shards.model import MiniMaxM1ForCausalLM

        return cls(MiniMaxM1ForCausalLM.from_pretrained(path, dtype=dtype, device=device), cache_shape)

    def step(self, request: StepRequest) -> StepResult:
        batch = to_forward_batch(request, self.model.device)
        self.cache.set_block_tables(dict(zip(request.slots, request.block_tables)))
        ids = torch.tensor(request.token_ids, dtype=torch.long, device=self.model.device)
        out = self.model.step(ids, batch, self.cache)
        counts = None
        if request.collect_routing:
            counts = routing_counts(out.expert_ids, batch.cu_seqlens, self.config.num_local_experts)
        return StepResult(out.logits.cpu(), counts)


__all__ = ["ModelInstance", "InProcessModelInstance", "StepRequest", "StepResult", "CacheShape",
           "InstanceDeadError", "to_forward_batch", "routing_counts"]
