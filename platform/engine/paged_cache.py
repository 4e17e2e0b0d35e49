"""PagedCache: the hybrid state cache with paged KV blocks (the engine's StateCache).

Legend: P state slots, NB KV blocks, BS tokens per block, Hkv KV heads, D head dim.
- lightning layers: one fp32 state [H, D, D] per slot, in a pool [P, H, D, D] per layer;
- softmax layers: key/value blocks [NB, BS, Hkv, D] per layer, addressed through each sequence's
  block table (logical block i of a sequence -> physical block id).
The engine's scheduler owns the bookkeeping (which slot and which blocks a sequence holds) and
passes block tables with every step; this class only holds the memory.
"""
from __future__ import annotations

import torch

from minimax_m1.model_shards.cache import StateCache


class PagedCache(StateCache):
    def __init__(self, config, num_slots: int, num_blocks: int, block_size: int, dtype: torch.dtype,
                 device: torch.device | str = "cpu", num_heads: int | None = None, num_kv_heads: int | None = None):
        super().__init__(config, num_slots, num_heads, device)
        hkv = num_kv_heads or config.num_key_value_heads
        d = config.head_dim
        self.block_size = block_size
        self.num_blocks = num_blocks
        self._k = {layer: torch.zeros(num_blocks, block_size, hkv, d, dtype=dtype, device=device)
                   for layer in config.softmax_layers}  # [NB, BS, Hkv, D]
        self._v = {layer: torch.zeros_like(self._k[layer]) for layer in config.softmax_layers}
        self.block_tables: dict[int, list[int]] = {}  # slot -> physical blocks, set per step

    def set_block_tables(self, tables: dict[int, list[int]]) -> None:
        self.block_tables = tables

    def append_kv(self, layer_idx, slot, start, k, v):
        table = self.block_tables.get(slot)
        end = start + k.shape[0]
        if table is None or len(table) * self.block_size < end:
            have = 0 if table is None else len(table) * self.block_size
            raise RuntimeError(f"slot {slot} has KV blocks for {have} tokens, needs {end}")
        bs = self.block_size
        idx = torch.tensor(table, dtype=torch.long, device=k.device)
        pos = torch.arange(start, end, device=k.device)
        blocks, offsets = idx[pos // bs], pos % bs  # [t] each
        kc, vc = self._k[layer_idx], self._v[layer_idx]
        kc[blocks, offsets] = k
        vc[blocks, offsets] = v
        used = idx[: (end + bs - 1) // bs]
        keys = _gather_blocks(kc, used).view(-1, *kc.shape[2:])[:end]  # [end, Hkv, D]
        values = _gather_blocks(vc, used).view(-1, *vc.shape[2:])[:end]
        return keys, values

    def decode_kv(self, layer_idx, slots, positions, k, v):
        bs = self.block_size
        tables = [self.block_tables[s] for s in slots]
        lengths = [p + 1 for p in positions]
        if any(len(t) * bs < n for t, n in zip(tables, lengths)):
            raise RuntimeError("a sequence has too few KV blocks for its decode position")
        kc, vc = self._k[layer_idx], self._v[layer_idx]
        dest = torch.tensor([t[p // bs] for t, p in zip(tables, positions)], device=k.device)  # [B]
        offs = torch.tensor([p % bs for p in positions], device=k.device)
        kc[dest, offs] = k
        vc[dest, offs] = v
        nb = max((n + bs - 1) // bs for n in lengths)
        rows = [t[:nb] + [0] * (nb - len(t[:nb])) for t in tables]  # padding blocks are never read
        return kc, vc, torch.tensor(rows, dtype=torch.long, device=k.device), torch.tensor(lengths)


def _gather_blocks(pool: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """Copies of the given blocks of a [NB, BS, Hkv, D] pool. [len(blocks), BS, Hkv, D]
    (Whole blocks as rows of a 2-D view: on CPU several times faster than advanced indexing or a
    4-D index_select.)"""
    return pool.view(pool.shape[0], -1).index_select(0, blocks).view(-1, *pool.shape[1:])
