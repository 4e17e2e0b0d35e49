"""What one forward step computes: packed tokens of several sequences, with their cache slots.

Legend: N tokens in the step (all sequences packed in order), S sequences.
A sequence contributes `seq_lens[i]` new tokens whose first absolute position is
`start_positions[i]` (the number of its tokens already in the cache).

A step may mix decodes and prefill chunks: the leading run of one-token sequences (the first
`num_decode`, whose tokens are the first `num_decode` of N) takes the attention layers' decode path,
the rest their prefill path; everything else (projections, norms, MoE) runs once over all N.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ForwardBatch:
    seq_lens: list[int]  # new tokens per sequence
    start_positions: list[int]  # tokens already cached per sequence
    slots: list[int]  # cache slot per sequence
    # Per-token dynamic routing threshold in [0, 1]; NaN = the model's exact top-k. [N] or None.
    expert_threshold: torch.Tensor | None = None
    collect_routing: bool = False  # return the experts each token used, per MoE layer
    # Derived, filled by `prepare`:
    cu_seqlens: torch.Tensor = field(init=False, repr=False)  # [S + 1]
    positions: torch.Tensor = field(init=False, repr=False)  # [N] absolute positions
    slot_ids: torch.Tensor = field(init=False, repr=False)  # [S]
    num_decode: int = field(init=False)  # leading one-token sequences (the decode part)
    # [S] bool: starts at position 0 (state must start empty). Stays on the host: read there.
    fresh: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not (len(self.seq_lens) == len(self.start_positions) == len(self.slots)):
            raise ValueError("seq_lens, start_positions and slots must have one entry per sequence")
        if any(n <= 0 for n in self.seq_lens):
            raise ValueError("every sequence in a step must add at least one token")
        offsets = [0]
        for n in self.seq_lens:
            offsets.append(offsets[-1] + n)
        self.cu_seqlens = torch.tensor(offsets, dtype=torch.int64)
        # one tensor from a list (an arange per sequence costs a torch call each: 32 in a decode step)
        self.positions = torch.tensor([p for s, n in zip(self.start_positions, self.seq_lens) for p in range(s, s + n)],
                                      dtype=torch.int64)
        self.slot_ids = torch.tensor(self.slots, dtype=torch.int64)
        self.num_decode = next((i for i, n in enumerate(self.seq_lens) if n != 1), len(self.seq_lens))
        self.fresh = torch.tensor([p == 0 for p in self.start_positions], dtype=torch.bool)

    @property
    def num_tokens(self) -> int:
        return int(self.cu_seqlens[-1])

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens)

    @property
    def is_decode(self) -> bool:
        """Every sequence adds exactly one token (no prefill part)."""
        return self.num_decode == len(self.seq_lens)

    def last_token_indices(self) -> torch.Tensor:
        """Index in N of each sequence's last new token. [S]"""
        return self.cu_seqlens[1:] - 1

    def to(self, device: torch.device | str) -> "ForwardBatch":
        self.cu_seqlens = self.cu_seqlens.to(device)
        self.positions = self.positions.to(device)
        self.slot_ids = self.slot_ids.to(device)
        if self.expert_threshold is not None:
            self.expert_threshold = self.expert_threshold.to(device)
        return self
