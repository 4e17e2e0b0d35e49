"""Name mapping between our parameters and the two published weight layouts, and loading.

Our parameter names follow the release, except that a layer's experts are held fused:
    model.layers.N.block_sparse_moe.experts.w13  [E, 2I, h]  (w1 rows, then w3 rows)
    model.layers.N.block_sparse_moe.experts.w2   [E, h, I]
Sources:
    release:       block_sparse_moe.experts.E.{w1,w3,w2}.weight, gate at block_sparse_moe.gate
    transformers:  mlp.experts.gate_up_proj [E, 2I, h] / mlp.experts.down_proj [E, h, I], gate at
                   mlp.gate (older transformers also save the release names, which load too)
Loading reads only what the model's modules hold: a LocalExperts with offset o and E experts
reads experts o..o+E-1 of each layer and nothing else.
"""
from __future__ import annotations

import json
import os
import re

import torch
from torch import nn

from minimax_m1.model_shards.checkpoint import CheckpointError, SafetensorsCheckpoint, write_safetensors
from minimax_m1.model_shards.config import MiniMaxM1Config

RELEASE, TRANSFORMERS = "release", "transformers"
_EXPERT_PARAM = re.compile(r"^model\.layers\.(\d+)\.block_sparse_moe\.experts\.(w13|w2)$")
# Buffers transformers saves that are derived from the config (we derive them per the release).
_DERIVED = re.compile(r"\.self_attn\.(slope_rate|query_decay|key_decay|diagonal_decay)$")


def detect_layout(ckpt: SafetensorsCheckpoint) -> str:
    names = ckpt.names()
    if any(".mlp.experts.gate_up_proj" in n for n in names):
        return TRANSFORMERS
    return RELEASE


def _gate_name(ckpt_names: set[str], layer: int) -> str:
    fused = f"model.layers.{layer}.mlp.gate.weight"
    return fused if fused in ckpt_names else f"model.layers.{layer}.block_sparse_moe.gate.weight"


def expected_source_names(config: MiniMaxM1Config, layout: str, ckpt_names: set[str]) -> set[str]:
    """Every tensor name a full load of this config consumes from a checkpoint in `layout`."""
    names = {"model.embed_tokens.weight", "model.norm.weight"}
    if not config.tie_word_embeddings:
        names.add("lm_head.weight")
    for i, kind in enumerate(config.attn_types):
        p = f"model.layers.{i}"
        names |= {f"{p}.input_layernorm.weight", f"{p}.post_attention_layernorm.weight", _gate_name(ckpt_names, i)}
        attn = ("qkv_proj", "output_gate", "norm", "out_proj") if kind == 0 else ("q_proj", "k_proj", "v_proj", "o_proj")
        names |= {f"{p}.self_attn.{a}.weight" for a in attn}
        if layout == TRANSFORMERS:
            names |= {f"{p}.mlp.experts.gate_up_proj", f"{p}.mlp.experts.down_proj"}
        else:
            names |= {f"{p}.block_sparse_moe.experts.{e}.{w}.weight" for e in range(config.num_local_experts) for w in ("w1", "w2", "w3")}
    return names


def check_names(config: MiniMaxM1Config, ckpt: SafetensorsCheckpoint, layout: str) -> None:
    """Fail on the first missing or unexpected tensor name (before any data is read)."""
    present = set(ckpt.names())
    expected = expected_source_names(config, layout, present)
    missing = sorted(expected - present)
    if missing:
        raise CheckpointError(f"missing tensor '{missing[0]}' in checkpoint {ckpt.path}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    unexpected = sorted(n for n in present - expected if not _DERIVED.search(n))
    if unexpected:
        raise CheckpointError(f"unexpected tensor '{unexpected[0]}' in checkpoint {ckpt.path}" + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""))


def load_into(model: nn.Module, ckpt: SafetensorsCheckpoint, config: MiniMaxM1Config, strict_names: bool = True) -> None:
    """Fill every parameter of `model` (a MiniMaxM1ForCausalLM or a part of one with the same
    parameter names) from the checkpoint, reading only the bytes those parameters need."""
    layout = detect_layout(ckpt)
    if strict_names:
        check_names(config, ckpt, layout)
    present = set(ckpt.names())
    modules = dict(model.named_modules())
    for name, param in model.named_parameters():
        with torch.no_grad():
            param.copy_(read_param(ckpt, layout, name, tuple(param.shape), modules, present))


def read_param(ckpt: SafetensorsCheckpoint, layout: str, name: str, shape: tuple[int, ...],
               modules: dict[str, nn.Module], present: set[str]) -> torch.Tensor:
    m = _EXPERT_PARAM.match(name)
    if m is None:
        source = name
        gate = re.match(r"^model\.layers\.(\d+)\.block_sparse_moe\.gate\.weight$", name)
        if gate:
            source = _gate_name(present, int(gate.group(1)))
        if name == "lm_head.weight" and source not in present and "model.embed_tokens.weight" in present:
            source = "model.embed_tokens.weight"  # tied embeddings
        return ckpt.read(source, expect_shape=shape)
    layer, kind = int(m.group(1)), m.group(2)
    experts = modules[name.rsplit(".", 1)[0]]
    first, count = experts.expert_offset, shape[0]
    if layout == TRANSFORMERS:
        fused = f"model.layers.{layer}.mlp.experts.{'gate_up_proj' if kind == 'w13' else 'down_proj'}"
        full = ckpt.entry(fused).shape
        if tuple(full[1:]) != tuple(shape[1:]):
            raise CheckpointError(f"tensor '{fused}' has shape {list(full)}, expected [E, {', '.join(map(str, shape[1:]))}]")
        return ckpt.read(fused, rows=(first, first + count))
    p = f"model.layers.{layer}.block_sparse_moe.experts"
    parts = []
    for e in range(first, first + count):
        if kind == "w13":
            half = (shape[1] // 2, shape[2])
            parts.append(torch.cat([ckpt.read(f"{p}.{e}.w1.weight", expect_shape=half),
                                    ckpt.read(f"{p}.{e}.w3.weight", expect_shape=half)]))
        else:
            parts.append(ckpt.read(f"{p}.{e}.w2.weight", expect_shape=tuple(shape[1:])))
    return torch.stack(parts)


def state_to_layout(state: dict[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
    """Our parameter names -> a checkpoint's tensor names in `layout`."""
    out: dict[str, torch.Tensor] = {}
    for name, t in state.items():
        m = _EXPERT_PARAM.match(name)
        if m is None:
            if layout == TRANSFORMERS and name.endswith("block_sparse_moe.gate.weight"):
                name = name.replace("block_sparse_moe.gate", "mlp.gate")
            out[name] = t
            continue
        layer, kind = m.group(1), m.group(2)
        if layout == TRANSFORMERS:
            out[f"model.layers.{layer}.mlp.experts.{'gate_up_proj' if kind == 'w13' else 'down_proj'}"] = t
            continue
        p = f"model.layers.{layer}.block_sparse_moe.experts"
        for e in range(t.shape[0]):
            if kind == "w13":
                w1, w3 = t[e].chunk(2, dim=0)
                out[f"{p}.{e}.w1.weight"], out[f"{p}.{e}.w3.weight"] = w1, w3
            else:
                out[f"{p}.{e}.w2.weight"] = t[e]
    return out


def save_checkpoint(path: str, state: dict[str, torch.Tensor], layout: str, max_shard_bytes: int | None = None) -> None:
    """Write tensors in `layout`, as one file or as shards with an index json."""
    tensors = state_to_layout(state, layout)
    os.makedirs(path, exist_ok=True)
    if max_shard_bytes is None:
        write_safetensors(os.path.join(path, "model.safetensors"), tensors, {"format": "pt"})
        return
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name in sorted(tensors):
        nbytes = tensors[name].numel() * tensors[name].element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensors[name]
        size += nbytes
    weight_map = {}
    total = len(shards)
    for i, shard in enumerate(shards):
        file = f"model-{i:05d}-of-{total:05d}.safetensors"
        write_safetensors(os.path.join(path, file), shard, {"format": "pt"})
        weight_map.update({n: file for n in shard})
    total_size = sum(t.numel() * t.element_size() for t in tensors.values())
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total_size}, "weight_map": weight_map}, f, indent=2, sort_keys=True)
