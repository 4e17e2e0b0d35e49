"""The hybrid state cache interface the layers use, and its simple in-process implementation.

Lightning layers keep one fp32 state [H, D, D] per sequence in a slot pool; softmax layers keep the
keys and values of every cached token. The engine provides a paged implementation of the same
interface (`StateCache`); the layers never know which one they talk to.
"""
from __future__ import annotations

import torch


class StateCache:
    """The lightning slot pools, shared by every implementation; subclasses store keys and values.
    Slots are small integers handed out by the owner of the cache.
    Legend: P slots, H heads (this rank's), D head dim."""

    def __init__(self, config, num_slots: int, num_heads: int | None, device: torch.device | str):
        h, d = num_heads or config.num_attention_heads, config.head_dim
        self._lightning = {layer: torch.zeros(num_slots, h, d, d, dtype=torch.float32, device=device)  # [P, H, D, D]
                           for layer in config.lightning_layers}

    def lightning_pool(self, layer_idx: int) -> torch.Tensor:
        """The fp32 state pool of a lightning layer, [P, H, D, D], indexed by slot."""
        return self._lightning[layer_idx]

    def append_kv(self, layer_idx: int, slot: int, start: int, k: torch.Tensor, v: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v [t, Hkv, D] at positions start..start+t-1 of `slot` and return all of the
        slot's keys and values up to start+t, [start+t, Hkv, D] each."""
        raise NotImplementedError

    def decode_kv(self, layer_idx: int, slots: list[int], positions: list[int], k: torch.Tensor, v: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Decode step of B sequences: store one token each (k, v [B, Hkv, D]) at `positions`, and
        return where every sequence's keys and values are, as a paged attention reads them
        (kernels.paged_decode_attention): block pools [NB, BS, Hkv, D] each, block tables [B, nb]
        int64 (sequence b's token t is in block tables[b, t // BS] at offset t % BS) and lengths
        [B] int64 (positions + 1), on the host (read there without a device sync)."""
        raise NotImplementedError


class ContiguousCache(StateCache):
    """Preallocated per-slot buffers: the single-process model and tests use it.

    Legend: P slots, L layers of a kind, H heads, Hkv key/value heads, D head dim, C capacity.
    """

    def __init__(self, config, num_slots: int, capacity: int, dtype: torch.dtype,
                 device: torch.device | str = "cpu", num_heads: int | None = None, num_kv_heads: int | None = None):
        super().__init__(config, num_slots, num_heads, device)
        hkv = num_kv_heads or config.num_key_value_heads
        d = config.head_dim
        self.capacity = capacity
        self._k = {layer: torch.zeros(num_slots, capacity, hkv, d, dtype=dtype, device=device)  # [P, C, Hkv, D]
                   for layer in config.softmax_layers}
        self._v = {layer: torch.zeros_like(self._k[layer]) for layer in config.softmax_layers}

    def append_kv(self, layer_idx, slot, start, k, v):
        end = start + k.shape[0]
        if end > self.capacity:
            raise ValueError(f"sequence length {end} exceeds the cache capacity {self.capacity}")
        kc, vc = self._k[layer_idx][slot], self._v[layer_idx][slot]
        kc[start:end] = k
        vc[start:end] = v
        return kc[:end], vc[:end]

    def decode_kv(self, layer_idx, slots, positions, k, v):
        # each slot's buffer is one block of `capacity` tokens
        if max(positions) >= self.capacity:
            raise ValueError(f"sequence length {max(positions) + 1} exceeds the cache capacity {self.capacity}")
        slot_ids = torch.tensor(slots, dtype=torch.long, device=k.device)
        pos = torch.tensor(positions, dtype=torch.long, device=k.device)
        kc, vc = self._k[layer_idx], self._v[layer_idx]
        kc[slot_ids, pos] = k
        vc[slot_ids, pos] = v
        return kc, vc, slot_ids.view(-1, 1), torch.tensor([p + 1 for p in positions])
