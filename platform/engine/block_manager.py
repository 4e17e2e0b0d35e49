"""StateManager: bookkeeping of the hybrid state cache (the memory itself lives in the instance).

Each running sequence holds one lightning state slot (fixed size, whatever its length) and a list
of physical KV blocks for the softmax layers (growing with its length). Free lists are LIFO for
slots and FIFO for blocks; the numbers only matter to the block tables sent with each step.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from minimax_m1.engine.request import Sequence


@dataclass(frozen=True, slots=True)
class CacheStats:
    slots_total: int
    slots_used: int
    blocks_total: int
    blocks_used: int
    block_size: int

    @property
    def slots_free(self) -> int:
        return self.slots_total - self.slots_used

    @property
    def blocks_free(self) -> int:
        return self.blocks_total - self.blocks_used


class StateManager:
    def __init__(self, num_slots: int, num_blocks: int, block_size: int):
        if num_slots < 1 or num_blocks < 1 or block_size < 1:
            raise ValueError(f"num_slots, num_blocks and block_size must be >= 1, got {num_slots}, {num_blocks}, {block_size}")
        self.num_slots, self.num_blocks, self.block_size = num_slots, num_blocks, block_size
        self._free_slots = list(range(num_slots - 1, -1, -1))
        self._free_blocks = deque(range(num_blocks))

    @property
    def capacity_tokens(self) -> int:
        """The longest sequence the KV pool can hold at all."""
        return self.num_blocks * self.block_size

    def blocks_needed(self, seq: Sequence, num_tokens: int) -> int:
        """Extra blocks `seq` needs so that its first `num_tokens` tokens have KV space."""
        return max(0, -(-num_tokens // self.block_size) - len(seq.blocks))

    def can_admit(self, seq: Sequence, num_tokens: int) -> bool:
        return bool(self._free_slots) and self.blocks_needed(seq, num_tokens) <= len(self._free_blocks)

    def can_grow(self, seq: Sequence, num_tokens: int) -> bool:
        return self.blocks_needed(seq, num_tokens) <= len(self._free_blocks)

    def admit(self, seq: Sequence, num_tokens: int) -> None:
        if not self.can_admit(seq, num_tokens):
            raise RuntimeError(f"cannot admit {seq.request_id}: no free slot or KV blocks")
        seq.slot = self._free_slots.pop()
        self.grow(seq, num_tokens)

    def grow(self, seq: Sequence, num_tokens: int) -> None:
        need = self.blocks_needed(seq, num_tokens)
        if need > len(self._free_blocks):
            raise RuntimeError(f"{seq.request_id} needs {need} KV blocks, {len(self._free_blocks)} free")
        seq.blocks.extend(self._free_blocks.popleft() for _ in range(need))

    def free(self, seq: Sequence) -> None:
        """Give back the slot and every block of `seq` (finish, error, cancel or preemption)."""
        if seq.slot is not None:
            self._free_slots.append(seq.slot)
            seq.slot = None
        self._free_blocks.extend(seq.blocks)
        seq.blocks = []

    def stats(self) -> CacheStats:
        return CacheStats(self.num_slots, self.num_slots - len(self._free_slots), self.num_blocks,
                          self.num_blocks - len(self._free_blocks), self.block_size)


__all__ = ["StateManager", "CacheStats"]
