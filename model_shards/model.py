"""MiniMaxM1ForCausalLM: the single-process reference model with the seed's API.

    model = MiniMaxM1ForCausalLM.from_pretrained(path)
    model(input_ids).logits                                  # [B, T, V] fp32
    model.generate(input_ids=..., attention_mask=..., max_new_tokens=N, do_sample=False)

Internally every forward is a `step` over packed tokens (ForwardBatch) with a StateCache, which
the engine and the sharded runtime use directly.
Legend: B batch rows, T row length, N packed tokens, S sequences, V vocabulary, h hidden.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch
from torch import nn

from minimax_m1.model_shards.batch import ForwardBatch
from minimax_m1.model_shards.cache import ContiguousCache, StateCache
from minimax_m1.model_shards.checkpoint import SafetensorsCheckpoint
from minimax_m1.model_shards.config import MiniMaxM1Config
from minimax_m1.model_shards.layers import DecoderLayer, RMSNorm, prepare_cpu_experts
from minimax_m1.model_shards.sampling import SamplingParams, sample_next
from minimax_m1.model_shards.weights import RELEASE, load_into, save_checkpoint

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class CausalLMOutput:
    logits: torch.Tensor  # [B, T, V] fp32


@dataclass
class StepOutput:
    logits: torch.Tensor  # [S, V] fp32, for each sequence's last new token (or [N, V] with all_logits)
    expert_ids: list[torch.Tensor] | None  # per MoE layer, [N, K] expert ids (-1 = unused), if collected


class MiniMaxM1Model(nn.Module):
    def __init__(self, config: MiniMaxM1Config):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, input_ids: torch.Tensor, batch: ForwardBatch, cache: StateCache
                ) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        x = self.embed_tokens(input_ids)  # [N, h]
        routing = [] if batch.collect_routing else None
        for layer in self.layers:
            x, expert_ids = layer(x, batch, cache)
            if routing is not None:
                routing.append(expert_ids)
        return self.norm(x), routing


class MiniMaxM1ForCausalLM(nn.Module):
    def __init__(self, config: MiniMaxM1Config):
        super().__init__()
        self.config = config
        self.model = MiniMaxM1Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    # ---- loading and saving -------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, dtype: torch.dtype | str | None = None,
                        device: torch.device | str | None = None) -> "MiniMaxM1ForCausalLM":
        """Load a checkpoint folder in the release or the transformers layout.

        Compute dtype: fp32 on CPU and bf16 on GPU unless `dtype` says otherwise; the lightning
        state and the LM head always run in fp32."""
        config = MiniMaxM1Config.from_pretrained(path)
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = _DTYPES[dtype] if isinstance(dtype, str) else dtype
        dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
        model = cls(config)
        with SafetensorsCheckpoint(path) as ckpt:
            load_into(model, ckpt, config)
        return model.to_compute(dtype, device)

    def to_compute(self, dtype: torch.dtype, device: torch.device | str = "cpu") -> "MiniMaxM1ForCausalLM":
        """Move to a device and compute dtype, keeping the LM head in fp32; on a CPU, experts take
        the CPU layout (LocalExperts.use_cpu_layout)."""
        self.to(device=device, dtype=dtype)
        self.lm_head.to(torch.float32)
        prepare_cpu_experts(self)
        return self.eval()

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    def save_pretrained(self, path: str | os.PathLike, layout: str = RELEASE, dtype: torch.dtype | None = None,
                        max_shard_bytes: int | None = None) -> None:
        path = os.fspath(path)
        state = {k: (v.to(dtype) if dtype else v).detach().cpu() for k, v in self.state_dict().items()}
        save_checkpoint(path, state, layout, max_shard_bytes)
        dtype_name = {v: k for k, v in _DTYPES.items()}[dtype or self.dtype]
        config = self.config.replace(torch_dtype=dtype_name)
        raw = config.to_release_dict() if layout == RELEASE else config.to_transformers_dict()
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump(raw, f, indent=2)

    # ---- the step API (engine, sharded runtime) --------------------------------------------------
    def new_cache(self, num_slots: int, capacity: int) -> ContiguousCache:
        return ContiguousCache(self.config, num_slots, capacity, self.dtype, self.device)

    @torch.inference_mode()
    def step(self, input_ids: torch.Tensor, batch: ForwardBatch, cache: StateCache, all_logits: bool = False) -> StepOutput:
        """Run packed tokens input_ids [N] through the model, updating the cache."""
        hidden, routing = self.model(input_ids, batch, cache)  # [N, h]
        if not all_logits:
            hidden = hidden[batch.last_token_indices()]  # [S, h]
        return StepOutput(self.compute_logits(hidden), routing)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden.to(torch.float32))  # fp32 LM head

    # ---- the transformers-like API ----------------------------------------------------------------
    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> CausalLMOutput:
        """Full forward of rows [B, T]; padded positions (attention_mask 0) get zero logits."""
        rows = _rows(input_ids, attention_mask)
        lengths = [len(r) for r in rows]
        cache = self.new_cache(len(rows), max(lengths))
        batch = ForwardBatch(lengths, [0] * len(rows), list(range(len(rows)))).to(self.device)
        packed = torch.cat(rows).to(self.device)
        logits = self.step(packed, batch, cache, all_logits=True).logits  # [N, V]
        out = torch.zeros(*input_ids.shape, self.config.vocab_size, dtype=torch.float32, device=self.device)
        mask = _mask(input_ids, attention_mask).to(self.device)
        out[mask] = logits
        return CausalLMOutput(out)

    @torch.inference_mode()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, max_new_tokens: int = 20,
                 do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                 eos_token_id: int | list[int] | None = None, pad_token_id: int | None = None,
                 seed: int | None = None, **unused) -> torch.Tensor:
        """Prompt plus continuation [B, T + new], like transformers' generate. Rows that end early
        (an end-of-sequence token) are padded with pad_token_id."""
        if unused:
            raise TypeError(f"generate() got unsupported arguments: {sorted(unused)}")
        if input_ids.dim() == 1:
            input_ids = input_ids[None]
        rows = _rows(input_ids, attention_mask)
        if any(len(r) == 0 for r in rows):
            raise ValueError("generate needs at least one prompt token per row")
        eos = set(self.config.eos_token_id if eos_token_id is None else
                  ([eos_token_id] if isinstance(eos_token_id, int) else eos_token_id))
        pad = pad_token_id if pad_token_id is not None else (self.config.pad_token_id if self.config.pad_token_id is not None else (min(eos) if eos else 0))
        params = SamplingParams(temperature=temperature if do_sample else 0.0, top_p=top_p, top_k=top_k or 0, seed=seed)
        b = len(rows)
        # one generator per row (row i seeded seed + i), so a row samples the same alone or batched
        gens = [params.replace(seed=None if seed is None else seed + i).make_generator() for i in range(b)]
        cache = self.new_cache(b, max(len(r) for r in rows) + max_new_tokens)
        lengths = [len(r) for r in rows]
        batch = ForwardBatch(lengths, [0] * b, list(range(b))).to(self.device)
        logits = self.step(torch.cat(rows).to(self.device), batch, cache).logits  # [B, V]
        new = [[] for _ in range(b)]
        live = list(range(b))
        for _ in range(max_new_tokens):
            tokens = sample_next(logits, [params] * len(live), [gens[i] for i in live])
            for i, t in zip(live, tokens):
                new[i].append(t)
                lengths[i] += 1
            live_tokens = [(i, t) for i, t in zip(live, tokens) if t not in eos]
            if not live_tokens or len(new[live[0]]) >= max_new_tokens:
                break
            live = [i for i, _ in live_tokens]
            batch = ForwardBatch([1] * len(live), [lengths[i] - 1 for i in live], live).to(self.device)
            ids = torch.tensor([t for _, t in live_tokens], device=self.device)
            logits = self.step(ids, batch, cache).logits
        width = max(len(x) for x in new)
        cont = torch.full((b, width), pad, dtype=input_ids.dtype)
        for i, x in enumerate(new):
            cont[i, : len(x)] = torch.tensor(x, dtype=input_ids.dtype)
        return torch.cat([input_ids.cpu(), cont], dim=1)


def _mask(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    if attention_mask is None:
        return torch.ones_like(input_ids, dtype=torch.bool)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask shape {list(attention_mask.shape)} does not match input_ids {list(input_ids.shape)}")
    return attention_mask.to(torch.bool)


def _rows(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> list[torch.Tensor]:
    """The unpadded token ids of each row."""
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [batch, length], got shape {list(input_ids.shape)}")
    mask = _mask(input_ids, attention_mask)
    return [row[m] for row, m in zip(input_ids, mask)]


def build_random_model(config: MiniMaxM1Config, seed: int = 0, std: float = 0.02) -> MiniMaxM1ForCausalLM:
    """A model with random weights (tiny checkpoints for tests and demos)."""
    from minimax_m1.model_shards.layers import init_weights

    g = torch.Generator().manual_seed(seed)
    model = MiniMaxM1ForCausalLM(config)
    init_weights(model, std, g)
    return model.eval()


__all__ = ["MiniMaxM1ForCausalLM", "MiniMaxM1Model", "CausalLMOutput", "StepOutput", "build_random_model"]
