"""MiniMaxM1Config: one model config read from either published config layout.

- the original release (model_type `minimax_m1`): `attn_type_list` (0 lightning, 1 softmax),
  `layernorm_{full_attention,linear_attention,mlp}_{alpha,beta}`, `rotary_dim`, `postnorm`;
- transformers (model_type `minimax`): `layer_types` ("linear_attention"/"full_attention"),
  `{full_attn,linear_attn,mlp}_{alpha,beta}_factor`, `rope_parameters` or `rope_theta`, and no
  `rotary_dim` (rotary over the whole head).

Optional serving fields: `think_start_token_id` / `think_end_token_id` name the tokens that open
and close a thinking section; with them set, a request's `thinking_budget` ends thinking by forcing
the end token once the budget is spent.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

LIGHTNING, SOFTMAX = 0, 1
_LAYER_TYPE_NAMES = {"linear_attention": LIGHTNING, "full_attention": SOFTMAX}
_RELEASE_TYPES = {"minimax_m1", "minimax_text_01", "minimax_m1_text"}
_TRANSFORMERS_TYPES = {"minimax"}


class ConfigError(ValueError):
    """A config field is missing or invalid; the message names the field."""


@dataclass(frozen=True)
class MiniMaxM1Config:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    attn_types: tuple[int, ...]  # per layer: 0 lightning, 1 softmax
    num_local_experts: int = 32
    num_experts_per_tok: int = 2
    rotary_dim: int | None = None  # None = head_dim (full rotary)
    rope_theta: float = 10_000_000.0
    rms_norm_eps: float = 1e-5
    lightning_norm_eps: float = 1e-6
    block_size: int = 256
    postnorm: bool = True
    linear_attn_alpha: float = 1.0
    linear_attn_beta: float = 1.0
    full_attn_alpha: float = 1.0
    full_attn_beta: float = 1.0
    mlp_alpha: float = 1.0
    mlp_beta: float = 1.0
    max_position_embeddings: int = 10_240_000
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_id: tuple[int, ...] = ()
    pad_token_id: int | None = None
    think_start_token_id: int | None = None
    think_end_token_id: int | None = None
    torch_dtype: str = "float32"  # the dtype the checkpoint was saved in
    source_layout: str = "release"  # which config layout this was read from
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        positive = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                    "num_attention_heads", "num_key_value_heads", "head_dim", "num_local_experts",
                    "num_experts_per_tok", "block_size")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"config field '{name}' must be a positive integer, got {value!r}")
        if len(self.attn_types) != self.num_hidden_layers:
            raise ConfigError(
                f"config field 'attn_types' (attn_type_list/layer_types) has {len(self.attn_types)} entries, "
                f"expected num_hidden_layers={self.num_hidden_layers}")
        for i, t in enumerate(self.attn_types):
            if t not in (LIGHTNING, SOFTMAX):
                raise ConfigError(f"config field 'attn_types'[{i}] = {t!r} is not a known layer type (0 lightning, 1 softmax)")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"config field 'num_attention_heads' ({self.num_attention_heads}) must be divisible by "
                f"'num_key_value_heads' ({self.num_key_value_heads})")
        if self.num_experts_per_tok > self.num_local_experts:
            raise ConfigError(
                f"config field 'num_experts_per_tok' ({self.num_experts_per_tok}) exceeds "
                f"'num_local_experts' ({self.num_local_experts})")
        rd = self.rotary_dim_effective
        if rd <= 0 or rd > self.head_dim or rd % 2:
            raise ConfigError(f"config field 'rotary_dim' must be even and in (0, head_dim={self.head_dim}], got {rd}")
        for name in ("rms_norm_eps", "lightning_norm_eps", "rope_theta"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"config field '{name}' must be > 0, got {getattr(self, name)!r}")
        if self.torch_dtype not in ("float32", "bfloat16", "float16"):
            raise ConfigError(f"config field 'torch_dtype' must be float32, bfloat16 or float16, got {self.torch_dtype!r}")

    # ---- derived ----------------------------------------------------------------------------
    @property
    def rotary_dim_effective(self) -> int:
        return self.head_dim if self.rotary_dim is None else self.rotary_dim

    @property
    def lightning_layers(self) -> list[int]:
        return [i for i, t in enumerate(self.attn_types) if t == LIGHTNING]

    @property
    def softmax_layers(self) -> list[int]:
        return [i for i, t in enumerate(self.attn_types) if t == SOFTMAX]

    def replace(self, **changes: Any) -> "MiniMaxM1Config":
        return dataclasses.replace(self, **changes)

    # ---- reading ----------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> "MiniMaxM1Config":
        """Read config.json from a checkpoint folder (or a config file path)."""
        path = os.fspath(path)
        file = os.path.join(path, "config.json") if os.path.isdir(path) else path
        try:
            with open(file, encoding="utf-8") as f:
                raw = json.load(f)
        except FileNotFoundError:
            raise ConfigError(f"no config.json at {file}") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{file} is not valid JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{file} must hold a JSON object")
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "MiniMaxM1Config":
        model_type = raw.get("model_type")
        if model_type in _RELEASE_TYPES or "attn_type_list" in raw:
            return cls(**_from_release(raw))
        if model_type in _TRANSFORMERS_TYPES or "layer_types" in raw:
            return cls(**_from_transformers(raw))
        raise ConfigError(f"config field 'model_type' = {model_type!r} is not minimax_m1 (release) or minimax (transformers)")

    def _eos_for_json(self) -> int | list[int] | None:
        if not self.eos_token_id:
            return None
        return self.eos_token_id[0] if len(self.eos_token_id) == 1 else list(self.eos_token_id)

    def to_release_dict(self) -> dict[str, Any]:
        """The config in the original release layout (what `save_pretrained` writes)."""
        d = {
            "architectures": ["MiniMaxM1ForCausalLM"], "model_type": "minimax_m1",
            "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size, "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads, "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim, "attn_type_list": list(self.attn_types),
            "num_local_experts": self.num_local_experts, "num_experts_per_tok": self.num_experts_per_tok,
            "rotary_dim": self.rotary_dim_effective, "rope_theta": self.rope_theta,
            "rms_norm_eps": self.rms_norm_eps, "block_size": self.block_size, "postnorm": self.postnorm,
            "layernorm_linear_attention_alpha": self.linear_attn_alpha,
            "layernorm_linear_attention_beta": self.linear_attn_beta,
            "layernorm_full_attention_alpha": self.full_attn_alpha,
            "layernorm_full_attention_beta": self.full_attn_beta,
            "layernorm_mlp_alpha": self.mlp_alpha, "layernorm_mlp_beta": self.mlp_beta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings, "hidden_act": "silu",
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self._eos_for_json(),
            "pad_token_id": self.pad_token_id, "torch_dtype": self.torch_dtype,
        }
        if self.think_start_token_id is not None:
            d["think_start_token_id"] = self.think_start_token_id
            d["think_end_token_id"] = self.think_end_token_id
        return d

    def to_transformers_dict(self) -> dict[str, Any]:
        """The config in transformers' `minimax` layout. That layout has no partial rotary; a partial
        `rotary_dim` is written as an extra field, which we read back and transformers ignores."""
        d = {
            "architectures": ["MiniMaxForCausalLM"], "model_type": "minimax",
            "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size, "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads, "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "layer_types": ["linear_attention" if t == LIGHTNING else "full_attention" for t in self.attn_types],
            "num_local_experts": self.num_local_experts, "num_experts_per_tok": self.num_experts_per_tok,
            "rope_parameters": {"rope_theta": self.rope_theta, "rope_type": "default"},
            "rms_norm_eps": self.rms_norm_eps, "block_size": self.block_size,
            "linear_attn_alpha_factor": self.linear_attn_alpha, "linear_attn_beta_factor": self.linear_attn_beta,
            "full_attn_alpha_factor": self.full_attn_alpha, "full_attn_beta_factor": self.full_attn_beta,
            "mlp_alpha_factor": self.mlp_alpha, "mlp_beta_factor": self.mlp_beta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings, "hidden_act": "silu",
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self._eos_for_json(),
            "pad_token_id": self.pad_token_id, "dtype": self.torch_dtype,
        }
        if self.rotary_dim_effective != self.head_dim:
            d["rotary_dim"] = self.rotary_dim_effective
        if self.think_start_token_id is not None:
            d["think_start_token_id"] = self.think_start_token_id
            d["think_end_token_id"] = self.think_end_token_id
        return d


def _require(raw: dict[str, Any], name: str) -> Any:
    if name not in raw or raw[name] is None:
        raise ConfigError(f"config field '{name}' is missing")
    return raw[name]


def _common(raw: dict[str, Any]) -> dict[str, Any]:
    hidden = _require(raw, "hidden_size")
    heads = _require(raw, "num_attention_heads")
    head_dim = raw.get("head_dim")
    if head_dim is None:
        if hidden % heads:
            raise ConfigError(f"config field 'head_dim' is missing and hidden_size ({hidden}) is not divisible by num_attention_heads ({heads})")
        head_dim = hidden // heads
    eos = raw.get("eos_token_id")
    eos_ids = () if eos is None else (tuple(eos) if isinstance(eos, (list, tuple)) else (eos,))
    dtype = raw.get("torch_dtype") or raw.get("dtype") or "float32"
    act = raw.get("hidden_act", "silu")
    if act != "silu":
        raise ConfigError(f"config field 'hidden_act' = {act!r} is not supported (only silu)")
    if raw.get("shared_intermediate_size", 0):
        raise ConfigError("config field 'shared_intermediate_size' > 0 (a shared expert) is not supported")
    return dict(
        vocab_size=_require(raw, "vocab_size"), hidden_size=hidden,
        intermediate_size=_require(raw, "intermediate_size"),
        num_hidden_layers=_require(raw, "num_hidden_layers"), num_attention_heads=heads,
        num_key_value_heads=raw.get("num_key_value_heads") or heads, head_dim=head_dim,
        num_local_experts=raw.get("num_local_experts", 32), num_experts_per_tok=raw.get("num_experts_per_tok", 2),
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-5)), block_size=raw.get("block_size", 256),
        max_position_embeddings=raw.get("max_position_embeddings", 10_240_000),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        bos_token_id=raw.get("bos_token_id"), eos_token_id=eos_ids, pad_token_id=raw.get("pad_token_id"),
        think_start_token_id=raw.get("think_start_token_id"), think_end_token_id=raw.get("think_end_token_id"),
        torch_dtype=str(dtype).replace("torch.", ""), extra=dict(raw),
    )


def _from_release(raw: dict[str, Any]) -> dict[str, Any]:
    kw = _common(raw)
    types = _require(raw, "attn_type_list")
    if not isinstance(types, list):
        raise ConfigError("config field 'attn_type_list' must be a list of 0/1")
    kw.update(
        attn_types=tuple(types), rotary_dim=raw.get("rotary_dim"),
        rope_theta=float(raw.get("rope_theta", 10_000_000.0)), postnorm=bool(raw.get("postnorm", False)),
        linear_attn_alpha=float(raw.get("layernorm_linear_attention_alpha", 1.0)),
        linear_attn_beta=float(raw.get("layernorm_linear_attention_beta", 1.0)),
        full_attn_alpha=float(raw.get("layernorm_full_attention_alpha", 1.0)),
        full_attn_beta=float(raw.get("layernorm_full_attention_beta", 1.0)),
        mlp_alpha=float(raw.get("layernorm_mlp_alpha", 1.0)), mlp_beta=float(raw.get("layernorm_mlp_beta", 1.0)),
        source_layout="release",
    )
    return kw


def _from_transformers(raw: dict[str, Any]) -> dict[str, Any]:
    kw = _common(raw)
    names = _require(raw, "layer_types")
    if not isinstance(names, list):
        raise ConfigError("config field 'layer_types' must be a list")
    types = []
    for i, name in enumerate(names):
        if name not in _LAYER_TYPE_NAMES:
            raise ConfigError(f"config field 'layer_types'[{i}] = {name!r} is not 'linear_attention' or 'full_attention'")
        types.append(_LAYER_TYPE_NAMES[name])
    rope = raw.get("rope_parameters") or {}
    theta = rope.get("rope_theta", raw.get("rope_theta", 1_000_000.0))
    if rope.get("rope_type", "default") != "default":
        raise ConfigError(f"config field 'rope_parameters.rope_type' = {rope.get('rope_type')!r} is not supported (only default)")
    if raw.get("sliding_window"):
        raise ConfigError("config field 'sliding_window' is set; sliding-window attention is not supported")
    kw.update(
        attn_types=tuple(types), rotary_dim=raw.get("rotary_dim"), rope_theta=float(theta), postnorm=True,
        linear_attn_alpha=float(raw.get("linear_attn_alpha_factor", 1.0)),
        linear_attn_beta=float(raw.get("linear_attn_beta_factor", 1.0)),
        full_attn_alpha=float(raw.get("full_attn_alpha_factor", 1.0)),
        full_attn_beta=float(raw.get("full_attn_beta_factor", 1.0)),
        mlp_alpha=float(raw.get("mlp_alpha_factor", 1.0)), mlp_beta=float(raw.get("mlp_beta_factor", 1.0)),
        source_layout="transformers",
    )
    return kw


def lightning_slopes(num_heads: int) -> list[float]:
    """ALiBi's slope series, as in the release: s_h = 2^(-8(h+1)/H) for a power-of-two H; otherwise
    the P slopes of the largest power of two P below H, then every other slope of the 2P series."""
    def power_of_two(n: int) -> list[float]:
        return [2.0 ** (-8.0 * (h + 1) / n) for h in range(n)]

    if math.log2(num_heads).is_integer():
        return power_of_two(num_heads)
    p = 2 ** math.floor(math.log2(num_heads))
    return power_of_two(p) + lightning_slopes(2 * p)[0::2][: num_heads - p]


def layer_decay_factor(layer_idx: int, num_layers: int) -> float:
    """Per-layer multiplier of the slopes: 1 - l/(L-1) + 1e-5 (the release's formula).
    A one-layer model has no L-1; it uses 1 + 1e-5."""
    if num_layers <= 1:
        return 1.0 + 1e-5
    return 1.0 - layer_idx / (num_layers - 1) + 1e-5
