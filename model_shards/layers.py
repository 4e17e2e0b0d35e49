"""Layers of the MiniMax-M1 architecture, written for packed tokens.

Legend: N tokens (all sequences of a step, packed), h hidden size, H query heads, Hkv key/value
heads, D head dim, E experts, K experts per token, I expert intermediate size.

Every layer takes x [N, h], the step's ForwardBatch and a StateCache. The layers know nothing of
parallelism: the sharded runtime swaps modules after building the model (see the `num_heads`,
`slope` and `experts` attributes), never by editing this file.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from minimax_m1.kernels import lightning_attention, moe_experts, paged_decode_attention, rms_norm, route_topk
from minimax_m1.model_shards.batch import ForwardBatch
from minimax_m1.model_shards.cache import StateCache
from minimax_m1.model_shards.config import LIGHTNING, MiniMaxM1Config, layer_decay_factor, lightning_slopes


class RMSNorm(nn.Module):
    # Where the channels are split across ranks, a subclass sets this to a method returning the
    # all-reduced mean of squares (fp32 x [N, C] -> [N, 1]); see kernels.rms_norm.
    variance = None

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised x, times sigmoid(gate) where a gate (shaped like x) is given."""
        return rms_norm(x, self.weight, self.eps, self.variance, gate)


class LightningAttention(nn.Module):
    """Decayed linear attention with an fp32 [H, D, D] state per sequence (no 1/sqrt(D) scaling)."""

    def __init__(self, config: MiniMaxM1Config, layer_idx: int):
        super().__init__()
        h, heads, d = config.hidden_size, config.num_attention_heads, config.head_dim
        self.layer_idx = layer_idx
        self.num_heads = heads
        self.head_dim = d
        self.block_size = config.block_size
        self.qkv_proj = nn.Linear(h, heads * 3 * d, bias=False)
        self.output_gate = nn.Linear(h, heads * d, bias=False)
        self.norm = RMSNorm(heads * d, eps=config.lightning_norm_eps)
        self.out_proj = nn.Linear(heads * d, h, bias=False)
        factor = layer_decay_factor(layer_idx, config.num_hidden_layers)
        slope = torch.tensor(lightning_slopes(heads), dtype=torch.float64) * factor
        self.register_buffer("slope", slope.to(torch.float32), persistent=False)  # [H]

    def forward(self, x: torch.Tensor, batch: ForwardBatch, cache: StateCache) -> torch.Tensor:
        n = x.shape[0]
        qkv = F.silu(self.qkv_proj(x)).view(n, self.num_heads, 3 * self.head_dim)  # [N, H, 3D]
        q, k, v = qkv.split(self.head_dim, dim=-1)  # [N, H, D] each
        o = lightning_attention(q, k, v, self.slope, cache.lightning_pool(self.layer_idx), batch.slot_ids,
                                batch.cu_seqlens, batch.fresh, batch.num_decode, self.block_size)  # [N, H, D]
        o = self.norm(o.reshape(n, self.num_heads * self.head_dim), gate=self.output_gate(x))  # [N, H*D]
        return self.out_proj(o)


def rotary_cos_sin(positions: torch.Tensor, rotary_dim: int, theta: float, dtype: torch.dtype
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Neox-style RoPE tables for the first `rotary_dim` dims of a head. [N, rotary_dim] each."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.float32, device=positions.device) / rotary_dim))
    freqs = positions.to(torch.float32)[:, None] * inv_freq[None, :]  # [N, rotary_dim/2]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_partial_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first cos.shape[-1] dims of each head of x [N, heads, D]; the rest pass through."""
    rd = cos.shape[-1]
    rot, rest = x[..., :rd], x[..., rd:]
    half = rd // 2
    rotated = torch.cat((-rot[..., half:], rot[..., :half]), dim=-1)
    rot = rot * cos[:, None, :] + rotated * sin[:, None, :]
    return torch.cat((rot, rest), dim=-1) if rest.shape[-1] else rot


class SoftmaxAttention(nn.Module):
    """GQA attention with partial neox RoPE; keys and values live in the StateCache."""

    def __init__(self, config: MiniMaxM1Config, layer_idx: int):
        super().__init__()
        h, d = config.hidden_size, config.head_dim
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = d
        self.rotary_dim = config.rotary_dim_effective
        self.rope_theta = config.rope_theta
        self.q_proj = nn.Linear(h, self.num_heads * d, bias=False)
        self.k_proj = nn.Linear(h, self.num_kv_heads * d, bias=False)
        self.v_proj = nn.Linear(h, self.num_kv_heads * d, bias=False)
        self.o_proj = nn.Linear(self.num_heads * d, h, bias=False)

    def forward(self, x: torch.Tensor, batch: ForwardBatch, cache: StateCache) -> torch.Tensor:
        n, d = x.shape[0], self.head_dim
        q = self.q_proj(x).view(n, self.num_heads, d)  # [N, H, D]
        k = self.k_proj(x).view(n, self.num_kv_heads, d)  # [N, Hkv, D]
        v = self.v_proj(x).view(n, self.num_kv_heads, d)
        cos, sin = rotary_cos_sin(batch.positions, self.rotary_dim, self.rope_theta, x.dtype)
        q, k = apply_partial_rope(q, cos, sin), apply_partial_rope(k, cos, sin)
        out = torch.empty_like(q)
        nd = batch.num_decode if batch.num_decode > 1 else 0  # one decode row is as fast down the loop
        if nd:
            out[:nd] = self._decode_batch(q[:nd], k[:nd], v[:nd], batch.slots[:nd], batch.start_positions[:nd], cache)
        offsets = batch.cu_seqlens.tolist()
        for i in range(nd, batch.num_seqs):
            a, b, start = offsets[i], offsets[i + 1], batch.start_positions[i]
            keys, values = cache.append_kv(self.layer_idx, batch.slots[i], start, k[a:b], v[a:b])  # [L, Hkv, D]
            out[a:b] = _causal_attention(q[a:b], keys, values, start)
        return self.o_proj(out.view(n, self.num_heads * d))

    def _decode_batch(self, q, k, v, slots: list[int], positions: list[int], cache: StateCache) -> torch.Tensor:
        """One new token per sequence, all attending at once through the cache's blocks. -> [B, H, D]"""
        k_pool, v_pool, tables, lengths = cache.decode_kv(self.layer_idx, slots, positions, k, v)
        return paged_decode_attention(q, k_pool, v_pool, tables, lengths)


def _causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int) -> torch.Tensor:
    """q [t, H, D] at positions start..start+t-1 over k, v [L, Hkv, D] (L = start + t). -> [t, H, D]"""
    t, length = q.shape[0], k.shape[0]
    qh, kh, vh = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)  # [H, t, D], [Hkv, L, D]
    if t == 1:
        mask, causal = None, False
    elif start == 0:
        mask, causal = None, True
    else:
        query_pos = torch.arange(start, start + t, device=q.device)[:, None]
        mask, causal = torch.arange(length, device=q.device)[None, :] <= query_pos, False  # [t, L]
    o = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, is_causal=causal, enable_gqa=qh.shape[0] != kh.shape[0])
    return o.transpose(0, 1)


class LocalExperts(nn.Module):
    """The experts this process holds: ids expert_offset .. expert_offset + E - 1."""

    def __init__(self, num_experts: int, hidden: int, intermediate: int, expert_offset: int = 0):
        super().__init__()
        self.expert_offset = expert_offset
        self.w13 = nn.Parameter(torch.empty(num_experts, 2 * intermediate, hidden))  # [E, 2I, h] w1 rows, then w3
        self.w2 = nn.Parameter(torch.empty(num_experts, hidden, intermediate))  # [E, h, I]
        self._narrow: _NarrowCopy | None = None

    def forward(self, x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor) -> torch.Tensor:
        w13, w2 = self.w13, self.w2
        narrow = self._narrow
        if narrow is not None and not (torch.is_grad_enabled() and w13.requires_grad) and narrow.matches(w13, w2):
            w13, w2 = narrow.w13, narrow.w2
        return moe_experts(x, topk_ids, topk_weights, w13, w2, self.expert_offset)

    def use_cpu_layout(self) -> None:
        """Store each expert matrix transposed in memory (input-major); shapes, values and the
        state dict stay as they are. The CPU kernels then read the weights as contiguous rows.

        When the weights are fp32 and every value is exactly a bf16 (a bf16 checkpoint loaded in
        fp32, as the demo model is), a bf16 copy is kept beside them and used for inference: the
        kernels widen it exactly, so the results are the same, and a decode step, which reads
        every busy expert's weights, reads half the bytes. The copy is dropped from use as soon
        as the parameters change (training, load_state_dict, a move). The Triton kernels expect
        the default layout: see `prepare_cpu_experts`."""
        with torch.no_grad():
            for p in (self.w13, self.w2):
                p.data = p.data.transpose(1, 2).contiguous().transpose(1, 2)
            self._narrow = _NarrowCopy.of(self.w13, self.w2)


@dataclass(frozen=True)
class _NarrowCopy:
    """A bf16 copy of fp32 expert weights whose values are all bf16, valid while they are unchanged."""

    w13: torch.Tensor
    w2: torch.Tensor
    key: tuple

    @staticmethod
    def _key(w13: torch.Tensor, w2: torch.Tensor) -> tuple:
        return w13.data_ptr(), w13._version, w2.data_ptr(), w2._version

    @classmethod
    def of(cls, w13: torch.Tensor, w2: torch.Tensor) -> "_NarrowCopy | None":
        if w13.dtype != torch.float32 or w2.dtype != torch.float32:
            return None
        narrow = [w.transpose(1, 2).to(torch.bfloat16).transpose(1, 2) for w in (w13, w2)]  # input-major too
        if not all(torch.equal(n.to(torch.float32), w) for n, w in zip(narrow, (w13, w2))):
            return None
        return cls(narrow[0], narrow[1], cls._key(w13, w2))

    def matches(self, w13: torch.Tensor, w2: torch.Tensor) -> bool:
        return self.key == self._key(w13, w2)


def prepare_cpu_experts(root: nn.Module) -> None:
    """Every LocalExperts under `root` whose weights are on a CPU takes the CPU layout (the model
    after loading, an expert worker's shard)."""
    for module in root.modules():
        if isinstance(module, LocalExperts) and module.w13.device.type == "cpu":
            module.use_cpu_layout()


def route(logits: torch.Tensor, top_k: int, threshold: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Router: softmax over the gate logits in fp32 -> top-k -> renormalise.

    With a per-token `threshold` [N] (NaN = unset), experts are taken in descending probability
    until the mass already taken reaches the threshold (at least one, at most top-k); dropped
    slots get id -1 and weight 0. Returns (ids [N, K], weights [N, K] fp32)."""
    if threshold is None:
        return route_topk(logits, top_k)  # the same without the threshold (a CPU kernel)
    probs = torch.softmax(logits.to(torch.float32), dim=-1)  # [N, E]
    top_p, top_i = torch.topk(probs, top_k, dim=-1)  # [N, K]
    taken_before = torch.cumsum(top_p, dim=-1) - top_p  # [N, K] mass of the experts ranked above
    keep = (taken_before < threshold[:, None]) | torch.isnan(threshold)[:, None]
    keep[:, 0] = True
    top_p = top_p * keep
    top_i = torch.where(keep, top_i, torch.full_like(top_i, -1))
    return top_i, top_p / top_p.sum(dim=-1, keepdim=True)


class SparseMoE(nn.Module):
    def __init__(self, config: MiniMaxM1Config):
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.gate = nn.Linear(config.hidden_size, config.num_local_experts, bias=False)
        self.experts = LocalExperts(config.num_local_experts, config.hidden_size, config.intermediate_size)

    def forward(self, x: torch.Tensor, batch: ForwardBatch) -> tuple[torch.Tensor, torch.Tensor]:
        ids, weights = route(self.gate(x), self.top_k, batch.expert_threshold)  # [N, K] each
        return self.experts(x, ids, weights), ids


class DecoderLayer(nn.Module):
    """Attention then MoE, each with the DeepNorm residual h = residual * alpha + sublayer * beta
    (with postnorm the residual is the normed input)."""

    def __init__(self, config: MiniMaxM1Config, layer_idx: int):
        super().__init__()
        self.is_lightning = config.attn_types[layer_idx] == LIGHTNING
        self.postnorm = config.postnorm
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = LightningAttention(config, layer_idx) if self.is_lightning else SoftmaxAttention(config, layer_idx)
        if self.is_lightning:
            self.attn_alpha, self.attn_beta = config.linear_attn_alpha, config.linear_attn_beta
        else:
            self.attn_alpha, self.attn_beta = config.full_attn_alpha, config.full_attn_beta
        self.mlp_alpha, self.mlp_beta = config.mlp_alpha, config.mlp_beta
        self.block_sparse_moe = SparseMoE(config)

    def forward(self, x: torch.Tensor, batch: ForwardBatch, cache: StateCache) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.input_layernorm(x)
        residual = h if self.postnorm else x
        x = _deepnorm_add(residual, self.self_attn(h, batch, cache), self.attn_alpha, self.attn_beta)
        h = self.post_attention_layernorm(x)
        residual = h if self.postnorm else x
        moe_out, expert_ids = self.block_sparse_moe(h, batch)
        return _deepnorm_add(residual, moe_out, self.mlp_alpha, self.mlp_beta), expert_ids


def _deepnorm_add(residual: torch.Tensor, out: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """residual * alpha + out * beta, in one op where beta is 1 (every released config)."""
    return torch.add(out if beta == 1.0 else out * beta, residual, alpha=alpha)


def init_weights(module: nn.Module, std: float, generator: torch.Generator | None = None) -> None:
    """Random init for tiny test/demo checkpoints: normal(0, std) matrices, unit norms."""
    for name, p in module.named_parameters():
        with torch.no_grad():
            if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
                p.fill_(1.0)
            elif name.endswith("w2"):
                p.normal_(0.0, std / math.sqrt(2), generator=generator)
            else:
                p.normal_(0.0, std, generator=generator)
