"""ShardPlan: how one model instance is cut across workers, and whether it fits on the GPUs.

Two placements, one data path (an all_to_all over the instance's torch.distributed world):
- `disaggregated` (default): `tp` attention workers (world ranks 0..tp-1) and `ep` expert
  workers (world ranks tp..tp+ep-1) are separate processes, so the expert pool (about 96% of
  M1's weights) scales independently of the small, state-heavy attention pool;
- `colocated`: W workers, each holding attention TP rank r and expert EP rank r (tp = ep = W),
  which is how the release fits on one 8-GPU node.

Attention rank r holds query heads [r*H/tp, (r+1)*H/tp). Key/value heads are split the same way
while tp <= Hkv; beyond that each rank holds the one KV head its query heads read (replicated
tp/Hkv times). Expert rank j holds experts [j*E/ep, (j+1)*E/ep).

Legend: H query heads, Hkv key/value heads, D head dim, E experts, h hidden, I expert intermediate
size, V vocabulary, W workers.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from minimax_m1.model_shards.config import MiniMaxM1Config

DISAGGREGATED, COLOCATED = "disaggregated", "colocated"
ATTENTION, EXPERT = "attention", "expert"
PLACEMENTS = (DISAGGREGATED, COLOCATED)
DTYPE_BYTES = {"float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2, "int8": 1, "fp8": 1}
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


class PlanError(ValueError):
    """A plan that cannot work for this model; the message says what to change."""


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@dataclass(frozen=True)
class WorkerRole:
    """What world rank `rank` holds: attention TP rank and/or expert EP rank."""

    rank: int
    kind: str  # "attention", "expert" or "colocated"
    tp_rank: int | None
    ep_rank: int | None

    @property
    def has_attention(self) -> bool:
        return self.tp_rank is not None

    @property
    def has_experts(self) -> bool:
        return self.ep_rank is not None


@dataclass(frozen=True)
class ShardPlan:
    tp: int = 1
    ep: int = 1
    placement: str = DISAGGREGATED
    pods: int = 1  # pods (nodes) the instance spans: PACK within one pod, SPREAD across several

    def __post_init__(self) -> None:
        for name in ("tp", "ep", "pods"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise PlanError(f"plan field '{name}' must be a positive integer, got {value!r}")
        if self.placement not in PLACEMENTS:
            raise PlanError(f"plan field 'placement' must be one of {', '.join(PLACEMENTS)}, got {self.placement!r}")
        if self.placement == COLOCATED and self.tp != self.ep:
            raise PlanError(f"a colocated plan needs tp == ep (one attention and one expert rank per worker), "
                            f"got tp={self.tp}, ep={self.ep}: use ShardPlan.colocated(W) or placement='disaggregated'")
        if self.pods > self.world_size:
            raise PlanError(f"plan field 'pods' ({self.pods}) exceeds the number of workers ({self.world_size})")

    @classmethod
    def colocated(cls, workers: int, pods: int = 1) -> "ShardPlan":
        return cls(tp=workers, ep=workers, placement=COLOCATED, pods=pods)

    def __str__(self) -> str:
        if self.placement == COLOCATED:
            return f"colocated(W={self.tp})"
        return f"disaggregated(tp={self.tp}, ep={self.ep})"

    # ---- ranks ----------------------------------------------------------------------------------
    @property
    def world_size(self) -> int:
        return self.tp if self.placement == COLOCATED else self.tp + self.ep

    @property
    def attention_ranks(self) -> list[int]:
        return list(range(self.tp))

    @property
    def expert_ranks(self) -> list[int]:
        """World rank of each EP rank, in EP order."""
        first = 0 if self.placement == COLOCATED else self.tp
        return list(range(first, first + self.ep))

    def role(self, rank: int) -> WorkerRole:
        if not 0 <= rank < self.world_size:
            raise PlanError(f"rank {rank} is outside the world of {self.world_size} workers")
        if self.placement == COLOCATED:
            return WorkerRole(rank, COLOCATED, rank, rank)
        if rank < self.tp:
            return WorkerRole(rank, ATTENTION, rank, None)
        return WorkerRole(rank, EXPERT, None, rank - self.tp)

    # ---- validation against a model ----------------------------------------------------------------
    def validate(self, config: MiniMaxM1Config) -> None:
        """Raise PlanError naming what to change when this plan cannot shard `config`."""
        heads, kv, experts = config.num_attention_heads, config.num_key_value_heads, config.num_local_experts
        if heads % self.tp:
            raise PlanError(f"tp={self.tp} does not divide the {heads} attention heads: choose tp from {_divisors(heads)}")
        if self.tp <= kv and kv % self.tp:
            raise PlanError(f"tp={self.tp} does not divide the {kv} key/value heads: choose tp from "
                            f"{[d for d in _divisors(heads) if (d <= kv and kv % d == 0) or (d > kv and d % kv == 0)]}")
        if self.tp > kv and self.tp % kv:
            raise PlanError(f"tp={self.tp} exceeds the {kv} key/value heads but is not a multiple of it, so a rank's "
                            f"query heads would read two KV heads: choose tp as a multiple of {kv}")
        if experts % self.ep:
            raise PlanError(f"ep={self.ep} does not divide the {experts} experts: choose ep from {_divisors(experts)}")

    # ---- maps ----------------------------------------------------------------------------------
    def experts_of(self, ep_rank: int, num_experts: int) -> range:
        per = num_experts // self.ep
        return range(ep_rank * per, (ep_rank + 1) * per)

    def expert_map(self, num_experts: int) -> list[int]:
        """World rank owning each expert. [E]"""
        per = num_experts // self.ep
        return [self.expert_ranks[e // per] for e in range(num_experts)]

    def heads_of(self, tp_rank: int, num_heads: int) -> range:
        per = num_heads // self.tp
        return range(tp_rank * per, (tp_rank + 1) * per)

    def head_map(self, num_heads: int) -> list[int]:
        """TP rank holding each query head. [H]"""
        per = num_heads // self.tp
        return [h // per for h in range(num_heads)]

    def kv_heads_of(self, tp_rank: int, num_kv_heads: int) -> range:
        """KV heads rank `tp_rank` holds; one replicated head when tp > Hkv."""
        if self.tp <= num_kv_heads:
            per = num_kv_heads // self.tp
            return range(tp_rank * per, (tp_rank + 1) * per)
        head = tp_rank * num_kv_heads // self.tp
        return range(head, head + 1)

    def kv_replication(self, num_kv_heads: int) -> int:
        """How many ranks hold each KV head."""
        return max(1, self.tp // num_kv_heads)

    # ---- placement group ----------------------------------------------------------------------------
    def bundles(self, use_gpu: bool, cpus_per_worker: float = 1.0) -> list[dict[str, float]]:
        """One bundle per worker, in world-rank order: CPU only without GPUs, one GPU each otherwise."""
        bundle = {"CPU": float(cpus_per_worker)}
        if use_gpu:
            bundle["GPU"] = 1.0
        return [dict(bundle) for _ in range(self.world_size)]

    @property
    def strategy(self) -> str:
        """Ray placement-group strategy: PACK keeps an instance inside one pod (NVLink, shared
        host); an instance that spans several pods SPREADs its bundles across them."""
        return "PACK" if self.pods == 1 else "SPREAD"

    # ---- capacity --------------------------------------------------------------------------------------
    def capacity(self, config: MiniMaxM1Config, gpu_memory: int, dtype: str = "bfloat16",
                 expert_dtype: str | None = None, context_tokens: int = 131_072,
                 reserve_fraction: float = 0.1) -> "CapacityReport":
        """Per worker kind: weight bytes, the memory left for state/KV, and whether the plan fits.

        `reserve_fraction` of each GPU is kept for the CUDA context, activations and allocator
        slack. An attention rank must hold the state of at least one sequence of `context_tokens`."""
        self.validate(config)
        if not 0 <= reserve_fraction < 1:
            raise PlanError(f"reserve_fraction must be in [0, 1), got {reserve_fraction}")
        for name, value in (("dtype", dtype), ("expert_dtype", expert_dtype or dtype)):
            if value not in DTYPE_BYTES:
                raise PlanError(f"{name} must be one of {sorted(DTYPE_BYTES)}, got {value!r}")
        b, eb = DTYPE_BYTES[dtype], DTYPE_BYTES[expert_dtype or dtype]
        reserve = int(gpu_memory * reserve_fraction)
        attn = attention_weight_bytes(config, self, b)
        experts = expert_weight_bytes(config, self, eb)
        per_seq = state_bytes_per_sequence(config, self, context_tokens, b)
        kinds = []
        if self.placement == COLOCATED:
            kinds.append(_worker_capacity(COLOCATED, self.tp, attn + experts, gpu_memory, reserve, per_seq))
        else:
            kinds.append(_worker_capacity(ATTENTION, self.tp, attn, gpu_memory, reserve, per_seq))
            kinds.append(_worker_capacity(EXPERT, self.ep, experts, gpu_memory, reserve, None))
        return CapacityReport(self, gpu_memory, reserve, context_tokens, dtype, expert_dtype or dtype, kinds)


@dataclass(frozen=True)
class WorkerCapacity:
    kind: str
    count: int
    weight_bytes: int  # per worker
    budget_bytes: int  # per worker: memory - reserve - weights (state/KV on attention ranks)
    state_bytes_per_sequence: int | None  # per worker, for one sequence of the planned context
    max_sequences: int | None  # sequences of the planned context the budget holds

    @property
    def fits(self) -> bool:
        if self.budget_bytes < 0:
            return False
        return self.max_sequences is None or self.max_sequences >= 1


@dataclass(frozen=True)
class CapacityReport:
    plan: ShardPlan
    gpu_memory: int
    reserve_bytes: int
    context_tokens: int
    dtype: str
    expert_dtype: str
    workers: list[WorkerCapacity]

    @property
    def fits(self) -> bool:
        return all(w.fits for w in self.workers)

    @property
    def gpus(self) -> int:
        return self.plan.world_size

    def format(self) -> str:
        lines = [f"plan {self.plan}: {self.gpus} GPUs of {format_bytes(self.gpu_memory)} "
                 f"(reserve {format_bytes(self.reserve_bytes)} each), weights {self.dtype}, experts {self.expert_dtype}",
                 f"{'worker':<11}{'count':>6}{'weights/GPU':>14}{'left/GPU':>14}{'state/seq':>14}"
                 f"{'seqs@' + _short_tokens(self.context_tokens):>12}  fits"]
        for w in self.workers:
            state = format_bytes(w.state_bytes_per_sequence) if w.state_bytes_per_sequence is not None else "-"
            seqs = str(w.max_sequences) if w.max_sequences is not None else "-"
            lines.append(f"{w.kind:<11}{w.count:>6}{format_bytes(w.weight_bytes):>14}{format_bytes(w.budget_bytes):>14}"
                         f"{state:>14}{seqs:>12}  {'yes' if w.fits else 'NO'}")
        lines.append(f"fits: {'yes' if self.fits else 'no'}")
        return "\n".join(lines)


def _worker_capacity(kind: str, count: int, weights: int, memory: int, reserve: int, per_seq: int | None) -> WorkerCapacity:
    left = memory - reserve - weights
    max_seqs = None if per_seq is None else max(0, left) // per_seq
    return WorkerCapacity(kind, count, weights, left, per_seq, max_seqs)


# ---- byte counts from a config ---------------------------------------------------------------------
def attention_weight_bytes(config: MiniMaxM1Config, plan: ShardPlan, dtype_bytes: int) -> int:
    """Bytes one attention rank holds: replicated embedding, norms and router gates (fp32, as the
    release stores them); its share of the attention projections; its share of the (fp32)
    vocab-parallel LM head."""
    h, d, e, v = config.hidden_size, config.head_dim, config.num_local_experts, config.vocab_size
    heads = config.num_attention_heads // plan.tp
    kv = len(plan.kv_heads_of(0, config.num_key_value_heads))
    params = v * h + h  # embedding, final norm
    for kind in config.attn_types:
        params += 2 * h  # layer norms
        if kind == 0:
            params += 3 * heads * d * h + heads * d * h + heads * d + h * heads * d  # qkv, gate, norm, out
        else:
            params += heads * d * h + 2 * kv * d * h + h * heads * d  # q, k, v, o
    gates = config.num_hidden_layers * e * h * 4
    lm_head = 0 if config.tie_word_embeddings else math.ceil(v / plan.tp) * h * 4
    return params * dtype_bytes + gates + lm_head


def expert_weight_bytes(config: MiniMaxM1Config, plan: ShardPlan, dtype_bytes: int) -> int:
    """Bytes one expert rank holds: E/ep experts of every layer, w1, w3 [I, h] and w2 [h, I] each."""
    per_expert = 3 * config.intermediate_size * config.hidden_size
    return config.num_hidden_layers * (config.num_local_experts // plan.ep) * per_expert * dtype_bytes


def state_bytes_per_sequence(config: MiniMaxM1Config, plan: ShardPlan, context_tokens: int, dtype_bytes: int) -> int:
    """One sequence's cache on one attention rank: fp32 [H/tp, D, D] per lightning layer (fixed)
    plus keys and values of every token per softmax layer."""
    d, heads = config.head_dim, config.num_attention_heads // plan.tp
    kv = len(plan.kv_heads_of(0, config.num_key_value_heads))
    lightning = len(config.lightning_layers) * heads * d * d * 4
    kv_per_token = len(config.softmax_layers) * 2 * kv * d * dtype_bytes
    return lightning + context_tokens * kv_per_token


def checkpoint_bytes(config: MiniMaxM1Config, dtype_bytes: int = 2) -> int:
    """Bytes of the whole checkpoint stored in `dtype_bytes` (router gates in fp32, as released)."""
    one = ShardPlan(1, 1)
    without_head = attention_weight_bytes(config.replace(tie_word_embeddings=True), one, dtype_bytes)
    lm_head = 0 if config.tie_word_embeddings else config.vocab_size * config.hidden_size * dtype_bytes
    return without_head + lm_head + expert_weight_bytes(config, one, dtype_bytes)


# ---- units ---------------------------------------------------------------------------------------------
def parse_bytes(text: str) -> int:
    """'80GiB', '141GB', '80 gib', '1e9' -> bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise PlanError(f"cannot read {text!r} as a memory size: use a number with a unit such as 80GiB or 141GB")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def format_bytes(n: int) -> str:
    sign = "-" if n < 0 else ""
    n = abs(n)
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{sign}{n / size:.1f} {unit}"
    return f"{sign}{n} B"


def _short_tokens(n: int) -> str:
    return f"{n // 1024}K" if n % 1024 == 0 and n >= 1024 else str(n)


__all__ = ["ShardPlan", "PlanError", "WorkerRole", "WorkerCapacity", "CapacityReport", "DISAGGREGATED", "COLOCATED",
           "ATTENTION", "EXPERT", "parse_bytes", "format_bytes", "attention_weight_bytes", "expert_weight_bytes",
           "state_bytes_per_sequence", "checkpoint_bytes"]
