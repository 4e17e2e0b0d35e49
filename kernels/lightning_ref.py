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
    """Chunked prefill of packed sequences. Returns (out [N, H, D], final states [S, H, D, D] fp32).

    Several sequences advance together, one chunk of `compute_block(block_size, D)` tokens per round.
    The chunk length changes only the order of the sums, not their value: `block_size` (the
    model's, which the Triton kernel uses) caps it."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
    block = compute_block(block_size, q.shape[-1])
    if len(lengths) <= 1:  # nothing to batch: skip the padded buffers (a new prompt beside decodes)
        return _prefill_loop(q, k, v, slope, cu_seqlens, initial_states, block)
    return _prefill_batched(q, k, v, slope, lengths, initial_states, block)


def compute_block(block_size: int, head_dim: int) -> int:
    """Chunk length of the CPU prefill. Per token and head, a chunk of c tokens costs 2cD
    multiply-adds inside the chunk (q k^T, then times v) and 2D^2 across chunks (q S and the state
    update): they balance at c = D. Below 64 the extra rounds of small ops cost more than they save."""
    return min(block_size, max(64, head_dim))


def _prefill_batched(q, k, v, slope, lengths: list[int], initial_states, block: int):
    """lightning_prefill_ref for all sequences at once. They are laid out longest first in a
    zero-padded [S, H, T, D] buffer, so the sequences that still have tokens at chunk r are a
    prefix and each round works on views; chunks align at each sequence's start. In a chunk,
    sequence i has m_i (1..c) real rows and its state decays by exp(-s m_i); pad rows have k = v = 0,
    so padding never touches a state or an output. Autograd flows through (demo training)."""
    n, h, d = q.shape
    num_seqs = len(lengths)
    order = sorted(range(num_seqs), key=lambda i: -lengths[i])  # longest first
    rank = [0] * num_seqs
    for r, i in enumerate(order):
        rank[i] = r
    sorted_lens = [lengths[i] for i in order]
    longest = sorted_lens[0]
    dev = q.device
    lens_t = torch.tensor(lengths, device=dev)
    row = torch.repeat_interleave(torch.tensor(rank, device=dev), lens_t)  # [N] buffer row of each token
    pos = torch.arange(n, device=dev) - torch.repeat_interleave(lens_t.cumsum(0) - lens_t, lens_t)  # [N] position in its sequence
    padded = []
    for x in (q, k, v):
        buf = torch.zeros(num_seqs, h, longest, d, dtype=torch.float32, device=dev)  # [S, H, T, D]
        buf.transpose(1, 2)[row, pos] = x.to(torch.float32)
        padded.append(buf)
    qp, kp, vp = padded
    outp = torch.empty_like(qp)
    s = slope.to(torch.float32).view(1, h, 1, 1)  # [1, H, 1, 1]
    state = (initial_states.to(torch.float32)[order] if initial_states is not None
             else torch.zeros(num_seqs, h, d, d, dtype=torch.float32, device=dev))  # [S, H, D, D], buffer order
    c = max(1, min(block, longest))  # (all sequences may be empty)
    steps = torch.arange(c, device=dev, dtype=torch.float32)
    q_decay = torch.exp(-s * (steps + 1).view(1, 1, c, 1))  # [1, H, c, 1] decay from the previous state
    diff = steps.view(c, 1) - steps.view(1, c)  # [c, c]
    diag = torch.where(diff >= 0, torch.exp(-s * diff.clamp(min=0)), torch.zeros((), device=dev))  # [1, H, c, c]
    sorted_lens_t = torch.tensor(sorted_lens, device=dev, dtype=torch.float32).view(num_seqs, 1, 1, 1)
    active = num_seqs
    for b0 in range(0, longest, c):
        while sorted_lens[active - 1] <= b0:
            active -= 1
        m = min(c, longest - b0)
        mi = (sorted_lens_t[:active] - b0).clamp(max=m)  # [A, 1, 1, 1] real rows
        qb, kb, vb = (x[:active, :, b0:b0 + m] for x in (qp, kp, vp))  # [A, H, m, D]
        k_decay = torch.exp(-s * (mi - 1 - steps[:m].view(1, 1, m, 1)).clamp(min=0))  # [A, H, m, 1] to the chunk's end
        intra = ((qb @ kb.transpose(-1, -2)) * diag[..., :m, :m]) @ vb  # [A, H, m, D]
        inter = (qb * q_decay[:, :, :m]) @ state[:active]
        outp[:active, :, b0:b0 + m] = intra + inter
        new = torch.exp(-s * mi) * state[:active] + (kb * k_decay).transpose(-1, -2) @ vb
        state = new if active == num_seqs else torch.cat([new, state[active:]])
    finals = torch.empty_like(state)
    finals[order] = state
    return outp.transpose(1, 2)[row, pos].to(q.dtype), finals


def _prefill_loop(q, k, v, slope, cu_seqlens, initial_states, block_size: int):
    """The plain definition of lightning_prefill_ref: one sequence and one block at a time. It runs
    single sequences; tests check the batched path against it."""
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
    """One recurrent step per row: KV = exp(-s) KV + k^T v, o = q KV. Returns out [B, H, D].

    Rows whose slots are consecutive (the engine sends decodes sorted by slot) update their run of
    the pool in place through a view; with many runs, the rows' states are gathered, updated and
    scattered back. Either way each state is read and written a few times, never per row."""
    b, h, d = q.shape
    decay = torch.exp(-slope.to(torch.float32)).view(h, 1, 1)  # [H, 1, 1]
    q32, k32, v32 = (x.to(torch.float32) for x in (q, k, v))
    out = torch.zeros(b, h, d, dtype=torch.float32, device=q.device)
    slots = slot_ids.tolist()
    runs = _slot_runs(slots)
    if len(runs) <= _MAX_VIEW_RUNS:
        for row, slot, n in runs:
            _step_states(state_pool[slot:slot + n], decay, q32[row:row + n], k32[row:row + n], v32[row:row + n],
                         out[row:row + n])
        return out.to(q.dtype)
    if min(slots) >= 0:
        _step_gathered(state_pool, slot_ids, decay, q32, k32, v32, out)
        return out.to(q.dtype)
    keep = (slot_ids >= 0).nonzero().squeeze(1)  # [B'] rows with a slot
    rows_out = torch.empty(keep.numel(), h, d, dtype=torch.float32, device=q.device)
    _step_gathered(state_pool, slot_ids[keep], decay, q32[keep], k32[keep], v32[keep], rows_out)
    out[keep] = rows_out
    return out.to(q.dtype)


_MAX_VIEW_RUNS = 4  # beyond this many runs of consecutive slots, one gather and one scatter are cheaper


def _slot_runs(slots: list[int]) -> list[tuple[int, int, int]]:
    """Maximal runs of rows with consecutive slots, as (first row, first slot, length); rows of
    slot -1 (padding) belong to no run."""
    runs: list[tuple[int, int, int]] = []
    for row, slot in enumerate(slots):
        if slot < 0:
            continue
        if runs and runs[-1][0] + runs[-1][2] == row and runs[-1][1] + runs[-1][2] == slot:
            first_row, first_slot, n = runs[-1]
            runs[-1] = (first_row, first_slot, n + 1)
        else:
            runs.append((row, slot, 1))
    return runs


def _step_states(states: torch.Tensor, decay: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 out: torch.Tensor) -> None:
    """states [n, H, D, D] (contiguous; a view into the pool or a gathered copy) advance one token
    in place: states = decay * states + k^T v; out [n, H, D] = q states."""
    n, h, d = q.shape
    flat = states.view(n * h, d, d)
    states.mul_(decay)
    flat.baddbmm_(k.reshape(n * h, d, 1), v.reshape(n * h, 1, d))
    torch.bmm(q.reshape(n * h, 1, d), flat, out=out.view(n * h, 1, d))


def _step_gathered(state_pool: torch.Tensor, slot_ids: torch.Tensor, decay: torch.Tensor, q: torch.Tensor,
                   k: torch.Tensor, v: torch.Tensor, out: torch.Tensor) -> None:
    """_step_states on copies of the given slots' states (one gather), written back (one scatter)."""
    states = state_pool.index_select(0, slot_ids)  # [n, H, D, D]
    _step_states(states, decay, q, k, v, out)
    state_pool.index_copy_(0, slot_ids, states)
