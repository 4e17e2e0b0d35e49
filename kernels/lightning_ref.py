"""Torch reference ops for lightning (decayed linear) attention.

Legend: N tokens (all sequences packed), S sequences, H heads, D head dim, P slots in a state pool.
For each head with decay rate s, the state after token t is
    KV_t = sum_{j<=t} exp(-s (t - j)) k_j^T v_j          # [D, D], kept in fp32
and the output is o_t = q_t KV_t. No 1/sqrt(D) scaling and no normaliser (MiniMax-M1).
"""
from __future__ import annotations

import torch


def lightning_prefill_ref(
    q: torch.Tensor,  # [N, H, D]
    k: torch.Tensor,  # [N, H, D]
    v: torch.Tensor,  # [N, H, D]
    slope: torch.Tensor,  # [H] decay rates
    cu_seqlens: torch.Tensor,  # [S + 1] int, offsets of each sequence in N
    initial_states: torch.Tensor | None,  # [S, H, D, D] fp32, or None for zeros
    block_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked prefill of packed sequences. Returns (out [N, H, D], final states [S, H, D, D] fp32)."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
    if len(lengths) > 1 and max(lengths) * len(lengths) <= 2 * sum(lengths):
        # Little padding waste (training batches, engine prefill chunks): all sequences at once.
        return _prefill_padded(q, k, v, slope, lengths, initial_states, block_size)
    return _prefill_loop(q, k, v, slope, cu_seqlens, initial_states, block_size)


def _prefill_padded(q, k, v, slope, lengths: list[int], initial_states, block_size: int):
    """lightning_prefill_ref vectorised over sequences padded to the longest. Blocks are aligned
    at each sequence's start; in a block, sequence i has m_i = its remaining tokens (0..B) real
    rows, and its state decays by exp(-s m_i), so padding never touches a state or an output."""
    n, h, d = q.shape
    num_seqs, longest = len(lengths), max(lengths)
    seq = torch.repeat_interleave(torch.arange(num_seqs, device=q.device), torch.tensor(lengths, device=q.device))  # [N]
    starts = torch.tensor([0] + lengths[:-1], device=q.device).cumsum(0)
    pos_in_seq = torch.arange(n, device=q.device) - starts[seq]  # [N]
    padded = []
    for x in (q, k, v):
        buf = torch.zeros(num_seqs, longest, h, d, dtype=torch.float32, device=q.device)  # [S, T, H, D]
        buf[seq, pos_in_seq] = x.to(torch.float32)
        padded.append(buf)
    qp, kp, vp = padded
    outp = torch.empty_like(qp)
    lens = torch.tensor(lengths, device=q.device)
    s = slope.to(torch.float32).view(1, h, 1, 1)  # [1, H, 1, 1]
    state = (initial_states.to(torch.float32) if initial_states is not None
             else torch.zeros(num_seqs, h, d, d, dtype=torch.float32, device=q.device))  # [S, H, D, D]
    for b0 in range(0, longest, block_size):
        m = min(block_size, longest - b0)
        mi = (lens - b0).clamp(0, m).to(torch.float32).view(num_seqs, 1, 1, 1)  # [S, 1, 1, 1] real rows
        qb, kb, vb = (x[:, b0:b0 + m].transpose(1, 2) for x in (qp, kp, vp))  # [S, H, m, D]
        pos = torch.arange(m, device=q.device, dtype=torch.float32)
        q_decay = torch.exp(-s * (pos + 1).view(1, 1, m, 1))  # [1, H, m, 1]
        k_decay = torch.exp(-s * (mi - 1 - pos.view(1, 1, m, 1)).clamp(min=0))  # [S, H, m, 1]; pad rows have k = 0
        diff = pos.view(m, 1) - pos.view(1, m)  # [m, m]
        diag = torch.where(diff >= 0, torch.exp(-s * diff.clamp(min=0)), torch.zeros((), device=q.device))  # [1, H, m, m]
        intra = ((qb @ kb.transpose(-1, -2)) * diag) @ vb  # [S, H, m, D]
        inter = (qb * q_decay) @ state
        outp[:, b0:b0 + m] = (intra + inter).transpose(1, 2)
        state = torch.exp(-s * mi) * state + (kb * k_decay).transpose(-1, -2) @ vb
    return outp[seq, pos_in_seq].to(q.dtype), state


def _prefill_loop(q, k, v, slope, cu_seqlens, initial_states, block_size: int):
    """lightning_prefill_ref for any lengths: one sequence and one block at a time."""
    n, h, d = q.shape
    num_seqs = cu_seqlens.numel() - 1
    out = torch.empty_like(q)
    finals = torch.empty(num_seqs, h, d, d, dtype=torch.float32, device=q.device)
    s = slope.to(torch.float32).view(h, 1, 1)  # [H, 1, 1]
    offsets = cu_seqlens.tolist()
    for i in range(num_seqs):
        start, end = offsets[i], offsets[i + 1]
        state = (
            initial_states[i].to(torch.float32).clone()
            if initial_states is not None
            else torch.zeros(h, d, d, dtype=torch.float32, device=q.device)
        )
        for b0 in range(start, end, block_size):
            b1 = min(b0 + block_size, end)
            m = b1 - b0
            qb = q[b0:b1].transpose(0, 1).to(torch.float32)  # [H, m, D]
            kb = k[b0:b1].transpose(0, 1).to(torch.float32)
            vb = v[b0:b1].transpose(0, 1).to(torch.float32)
            pos = torch.arange(m, device=q.device, dtype=torch.float32)
            q_decay = torch.exp(-s * (pos + 1).view(1, m, 1))  # [H, m, 1] decay from the previous state
            k_decay = torch.exp(-s * (m - 1 - pos).view(1, m, 1))  # [H, m, 1] decay to the block's end
            diff = pos.view(m, 1) - pos.view(1, m)  # [m, m]
            diag = torch.where(diff >= 0, torch.exp(-s * diff.clamp(min=0)), torch.zeros((), device=q.device))
            intra = ((qb @ kb.transpose(1, 2)) * diag) @ vb  # [H, m, D]
            inter = (qb * q_decay) @ state  # [H, m, D]
            out[b0:b1] = (intra + inter).transpose(0, 1).to(q.dtype)
            state = torch.exp(-s * m) * state + (kb * k_decay).transpose(1, 2) @ vb
        finals[i] = state
    return out, finals


def lightning_decode_ref(
    q: torch.Tensor,  # [B, H, D]
    k: torch.Tensor,  # [B, H, D]
    v: torch.Tensor,  # [B, H, D]
    slope: torch.Tensor,  # [H]
    state_pool: torch.Tensor,  # [P, H, D, D] fp32, updated in place
    slot_ids: torch.Tensor,  # [B] int; -1 marks a padding row, which is skipped
) -> torch.Tensor:
    """One recurrent step per row: KV = exp(-s) KV + k^T v, o = q KV. Returns out [B, H, D]."""
    b, h, d = q.shape
    decay = torch.exp(-slope.to(torch.float32)).view(h, 1, 1)  # [H, 1, 1]
    slots = slot_ids.tolist()
    if b > 1 and min(slots) >= 0:  # a batch without padding: one gather, batched math, one scatter
        states = state_pool[slot_ids]  # [B, H, D, D] copy
        states.mul_(decay).add_(k.to(torch.float32).unsqueeze(-1) * v.to(torch.float32).unsqueeze(-2))
        state_pool[slot_ids] = states
        return torch.matmul(q.to(torch.float32).unsqueeze(-2), states).squeeze(-2).to(q.dtype)
    out = torch.zeros_like(q)
    for row, slot in enumerate(slots):  # per row on a view of its slot: no gather/scatter copies
        if slot < 0:
            continue
        state = state_pool[slot]  # [H, D, D] view, updated in place
        state.mul_(decay).baddbmm_(k[row].to(torch.float32).unsqueeze(-1), v[row].to(torch.float32).unsqueeze(-2))
        out[row] = torch.bmm(q[row].to(torch.float32).unsqueeze(-2), state).squeeze(-2).to(q.dtype)
    return out

