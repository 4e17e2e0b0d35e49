"""What a shard is allowed to read from a checkpoint: the byte ranges of its own tensors."""
from __future__ import annotations

import os

from minimax_m1.model_shards.checkpoint import SafetensorsCheckpoint
from minimax_m1.model_shards.config import MiniMaxM1Config
from minimax_m1.model_shards.weights import TRANSFORMERS, detect_layout


def expert_ranges(path: str, experts: range) -> list[tuple[str, int, int]]:
    """(file, begin, end) of every byte of these experts, in every layer, in either layout."""
    config = MiniMaxM1Config.from_pretrained(path)
    out = []
    with SafetensorsCheckpoint(path) as ckpt:
        layout = detect_layout(ckpt)
        for layer in range(config.num_hidden_layers):
            if layout == TRANSFORMERS:
                for name in ("gate_up_proj", "down_proj"):
                    entry = ckpt.entry(f"model.layers.{layer}.mlp.experts.{name}")
                    row = entry.nbytes // entry.shape[0]
                    out.append((os.path.basename(entry.file), entry.begin + experts.start * row, entry.begin + experts.stop * row))
                continue
            for e in experts:
                for w in ("w1", "w2", "w3"):
                    entry = ckpt.entry(f"model.layers.{layer}.block_sparse_moe.experts.{e}.{w}.weight")
                    out.append((os.path.basename(entry.file), entry.begin, entry.end))
    return out


def outside(reads: list[tuple[str, int, int]], allowed: list[tuple[str, int, int]]) -> list[tuple[str, int, int]]:
    """The reads not contained in any allowed range."""
    return [r for r in reads if not any(r[0] == a[0] and a[1] <= r[1] and r[2] <= a[2] for a in allowed)]


def total(ranges) -> int:
    return sum(e - b for _, b, e in ranges)
