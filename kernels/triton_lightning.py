"""Triton kernels for lightning (decayed linear) attention, behind the API of lightning_ref.py.

Legend: N tokens (all sequences packed), S sequences, H heads, D head dim, P slots in a state pool,
C chunks over all sequences, BT tokens per chunk. For a head with decay rate s:
    KV_t = exp(-s) KV_{t-1} + k_t^T v_t        o_t = q_t KV_t        (KV in fp32, no scaling)

Prefill runs in two launches, so that a long sequence spreads over the whole GPU:
  1. a state pass, one program per (sequence, head, state tile), walks the chunks of its sequence
     in order, writes the state each chunk starts from into a buffer [C, H, D, D], and the final
     state;
  2. an output pass, one program per (chunk, head, value tile), all independent:
     o = ((Q K^T) * decay mask) V + (Q * q_decay) KV_chunk_start.
Decode is one launch, one program per (row, head, value tile), that updates the pool in place.

Every exponent is formed as exp(-s * distance) with distance >= 0, never as a ratio of cumulative
decays, so nothing overflows however long the chunk or large the slope.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from minimax_m1.kernels.triton_common import (
    FLOAT_DTYPES,
    INDEX_DTYPES,
    cast,
    check_like,
    check_on,
    check_unit_stride,
    dot_precision,
    mm,
    tile,
    widen,
)

# Tokens per chunk in the Triton prefill. The result does not depend on it (the math is exact for
# any chunking); the reference's block_size only fixes the reference's own evaluation order.
DEFAULT_CHUNK = 64


@dataclass(frozen=True)
class Tiles:
    """Tile sides and launch shape of one kernel. Chosen so that, for head dim 128 on sm_90, no
    16-bit kernel spills registers (checked offline with ptxas: tests/kernels/test_kernel_compile.py)."""

    bd: int  # covers the head dim (key side)
    bv: int  # value columns per program
    num_warps: int
    bk: int = 0  # key rows per program, state pass only


def state_tiles(d: int) -> Tiles:
    bd = tile(d)
    return Tiles(bd=bd, bk=min(bd, 64), bv=min(bd, 32), num_warps=4)


def output_tiles(d: int, dtype: torch.dtype) -> Tiles:
    bd = tile(d)
    # fp32 IEEE dots run on FMA units and need far more registers per element than 16-bit MMA
    return Tiles(bd=bd, bv=min(bd, 32 if dtype == torch.float32 else 64), num_warps=8)


def decode_tiles(d: int) -> Tiles:
    bd = tile(d)
    return Tiles(bd=bd, bv=min(bd, 32), num_warps=4)


# ----------------------------------------------------------------------------------------------
# Prefill, launch 1: state pass
# ----------------------------------------------------------------------------------------------
@triton.jit
def _prefill_state_kernel(
    k_ptr, v_ptr, slope_ptr, cu_ptr, chunk_start_ptr, init_ptr, chunk_states_ptr, final_ptr,
    stride_kt, stride_kh, stride_vt, stride_vh,
    H: tl.constexpr, D: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    HAS_INIT: tl.constexpr, PRECISION: tl.constexpr, WIDEN: tl.constexpr,
):
    pid_sh = tl.program_id(0)  # unbounded counts go on axis 0: CUDA caps axes 1 and 2 at 65535
    pid_k = tl.program_id(1)
    pid_v = tl.program_id(2)
    seq = pid_sh // H
    head = pid_sh % H
    start = tl.load(cu_ptr + seq).to(tl.int64)
    length = tl.load(cu_ptr + seq + 1).to(tl.int64) - start
    first_chunk = tl.load(chunk_start_ptr + seq).to(tl.int64)
    num_chunks = tl.cdiv(length, BT)
    s = tl.load(slope_ptr + head).to(tl.float32)

    rk = pid_k * BK + tl.arange(0, BK)  # [BK] state rows (key dims)
    rv = pid_v * BV + tl.arange(0, BV)  # [BV] state cols (value dims)
    rt = tl.arange(0, BT)  # [BT] token within a chunk
    mk = rk < D
    mv = rv < D
    state_offs = rk[:, None] * D + rv[None, :]  # [BK, BV] offsets inside one [D, D] state
    state_mask = mk[:, None] & mv[None, :]
    head_state = (seq * H + head).to(tl.int64) * D * D

    if HAS_INIT:
        state = tl.load(init_ptr + head_state + state_offs, mask=state_mask, other=0.0)  # [BK, BV] fp32
    else:
        state = tl.zeros([BK, BV], dtype=tl.float32)

    for c in range(0, num_chunks):
        # the state this chunk starts from, for the output pass
        chunk_head = ((first_chunk + c) * H + head) * D * D
        start_state = cast(state, chunk_states_ptr.dtype.element_ty, WIDEN)
        tl.store(chunk_states_ptr + chunk_head + state_offs, start_state, mask=state_mask)
        m = tl.minimum(length - c * BT, BT)  # tokens in this chunk
        tok = start + c * BT + rt  # [BT]
        mt = rt < m
        k_t = tl.load(k_ptr + tok[None, :] * stride_kt + head * stride_kh + rk[:, None],
                      mask=mk[:, None] & mt[None, :], other=0.0)  # [BK, BT]
        v = tl.load(v_ptr + tok[:, None] * stride_vt + head * stride_vh + rv[None, :],
                    mask=mt[:, None] & mv[None, :], other=0.0)  # [BT, BV]
        to_end = tl.maximum(m - 1 - rt, 0).to(tl.float32)  # [BT] distance to the chunk's last token
        k_decay = tl.where(mt, tl.exp(-s * to_end), 0.0)  # [BT]
        k_t = cast(k_t.to(tl.float32) * k_decay[None, :], v.dtype, WIDEN)
        state = state * tl.exp(-s * m.to(tl.float32)) + mm(k_t, v, PRECISION, WIDEN)

    tl.store(final_ptr + head_state + state_offs, state, mask=state_mask)


# ----------------------------------------------------------------------------------------------
# Prefill, launch 2: output pass
# ----------------------------------------------------------------------------------------------
@triton.jit
def _prefill_output_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, slope_ptr, cu_ptr, chunk_start_ptr, chunk_seq_ptr, chunk_states_ptr,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
    H: tl.constexpr, D: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr,
    PRECISION: tl.constexpr, WIDEN: tl.constexpr,
):
    chunk = tl.program_id(0).to(tl.int64)
    pid_v = tl.program_id(1)
    head = tl.program_id(2)
    seq = tl.load(chunk_seq_ptr + chunk)
    c = chunk - tl.load(chunk_start_ptr + seq).to(tl.int64)  # chunk index inside its sequence
    start = tl.load(cu_ptr + seq).to(tl.int64)
    length = tl.load(cu_ptr + seq + 1).to(tl.int64) - start
    m = tl.minimum(length - c * BT, BT)
    s = tl.load(slope_ptr + head).to(tl.float32)

    rt = tl.arange(0, BT)  # [BT]
    rd = tl.arange(0, BD)  # [BD] key dims
    rv = pid_v * BV + tl.arange(0, BV)  # [BV] value dims
    md = rd < D
    mv = rv < D
    mt = rt < m
    tok = start + c * BT + rt  # [BT]

    q = tl.load(q_ptr + tok[:, None] * stride_qt + head * stride_qh + rd[None, :],
                mask=mt[:, None] & md[None, :], other=0.0)  # [BT, BD]
    k_t = tl.load(k_ptr + tok[None, :] * stride_kt + head * stride_kh + rd[:, None],
                  mask=md[:, None] & mt[None, :], other=0.0)  # [BD, BT]
    v = tl.load(v_ptr + tok[:, None] * stride_vt + head * stride_vh + rv[None, :],
                mask=mt[:, None] & mv[None, :], other=0.0)  # [BT, BV]

    # intra-chunk: causal scores times exp(-s (i - j))
    dist = rt[:, None] - rt[None, :]  # [BT, BT]
    decay = tl.where(dist >= 0, tl.exp(-s * tl.maximum(dist, 0).to(tl.float32)), 0.0)
    scores = mm(q, k_t, PRECISION, WIDEN) * decay  # [BT, BT] fp32
    out = mm(cast(scores, v.dtype, WIDEN), v, PRECISION, WIDEN)  # [BT, BV]

    # inter-chunk: queries decayed back to the state the chunk starts from
    chunk_head = (chunk * H + head) * D * D
    kv = tl.load(chunk_states_ptr + chunk_head + rd[:, None] * D + rv[None, :],
                 mask=md[:, None] & mv[None, :], other=0.0)  # [BD, BV]
    q_decay = tl.exp(-s * (rt + 1).to(tl.float32))  # [BT]
    q_dec = cast(q.to(tl.float32) * q_decay[:, None], kv.dtype, WIDEN)
    out += mm(q_dec, kv, PRECISION, WIDEN)

    tl.store(o_ptr + tok[:, None] * stride_ot + head * stride_oh + rv[None, :],
             cast(out, o_ptr.dtype.element_ty, WIDEN), mask=mt[:, None] & mv[None, :])


# ----------------------------------------------------------------------------------------------
# Decode
# ----------------------------------------------------------------------------------------------
@triton.jit
def _decode_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, slope_ptr, pool_ptr, slot_ptr, num_slots,
    stride_qb, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh, stride_ob, stride_oh,
    stride_ps, stride_ph,
    D: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr, WIDEN: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    pid_v = tl.program_id(2)
    slot = tl.load(slot_ptr + row).to(tl.int64)
    s = tl.load(slope_ptr + head).to(tl.float32)

    rd = tl.arange(0, BD)  # [BD] key dims
    rv = pid_v * BV + tl.arange(0, BV)  # [BV] value dims
    # -1 marks padding; an id past the pool is skipped too, so no launch can write out of bounds.
    # (The row's slot is broadcast to a vector: the interpreter rejects scalar-by-vector masks.)
    slot_d = tl.zeros([BD], dtype=tl.int64) + slot
    slot_v = tl.zeros([BV], dtype=tl.int64) + slot
    md = (rd < D) & (slot_d >= 0) & (slot_d < num_slots)
    mv = (rv < D) & (slot_v >= 0) & (slot_v < num_slots)
    q = tl.load(q_ptr + row * stride_qb + head * stride_qh + rd, mask=md, other=0.0).to(tl.float32)  # [BD]
    k = tl.load(k_ptr + row * stride_kb + head * stride_kh + rd, mask=md, other=0.0).to(tl.float32)  # [BD]
    v = tl.load(v_ptr + row * stride_vb + head * stride_vh + rv, mask=mv, other=0.0).to(tl.float32)  # [BV]

    state_ptrs = pool_ptr + slot * stride_ps + head * stride_ph + rd[:, None] * D + rv[None, :]
    state_mask = md[:, None] & mv[None, :]
    kv = tl.load(state_ptrs, mask=state_mask, other=0.0)  # [BD, BV] fp32
    kv = kv * tl.exp(-s) + k[:, None] * v[None, :]
    tl.store(state_ptrs, kv, mask=state_mask)
    out = tl.sum(q[:, None] * kv, axis=0)  # [BV]; exactly 0 on a padding row
    rv_out = pid_v * BV + tl.arange(0, BV)
    tl.store(o_ptr + row * stride_ob + head * stride_oh + rv_out, cast(out, o_ptr.dtype.element_ty, WIDEN), mask=rv_out < D)


# ----------------------------------------------------------------------------------------------
# Wrappers: check, then launch
# ----------------------------------------------------------------------------------------------
def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows: str) -> tuple[int, int, int]:
    if q.dim() != 3:
        raise ValueError(f"q must be [{rows}, H, D], got shape {tuple(q.shape)}")
    if q.dtype not in FLOAT_DTYPES:
        raise ValueError(f"q must be float16, bfloat16 or float32, got {q.dtype}")
    check_like(k, "k", q, "q")
    check_like(v, "v", q, "q")
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_unit_stride(t, name)
    return tuple(q.shape)  # type: ignore[return-value]


def _check_slope(slope: torch.Tensor, h: int, device: torch.device) -> torch.Tensor:
    if slope.shape != (h,) or not slope.is_floating_point():
        raise ValueError(f"slope must be a float tensor [H] = [{h}], got {slope.dtype} {tuple(slope.shape)}")
    check_on(slope, "slope", slope.dtype, device)
    return slope.to(torch.float32).contiguous()


def _check_states(t: torch.Tensor, name: str, shape: tuple[int, ...], device: torch.device) -> None:
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    check_on(t, name, torch.float32, device)


def _check_out(out: torch.Tensor, q: torch.Tensor) -> None:
    check_like(out, "out", q, "q")
    check_unit_stride(out, "out")


def lightning_prefill_triton(
    q: torch.Tensor,  # [N, H, D]
    k: torch.Tensor,  # [N, H, D]
    v: torch.Tensor,  # [N, H, D]
    slope: torch.Tensor,  # [H]
    cu_seqlens: torch.Tensor,  # [S + 1]
    initial_states: torch.Tensor | None,  # [S, H, D, D] fp32 or None
    block_size: int,
    *,
    chunk_size: int = DEFAULT_CHUNK,
    out: torch.Tensor | None = None,  # [N, H, D], q's dtype; written whole
    final_states: torch.Tensor | None = None,  # [S, H, D, D] fp32; written whole
) -> tuple[torch.Tensor, torch.Tensor]:
    """lightning_prefill_ref's contract. block_size is checked; the kernel chunks by chunk_size."""
    n, h, d = _check_qkv(q, k, v, "N")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size <= 0:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    if chunk_size < 16 or chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size must be a power of two >= 16, got {chunk_size}")
    device = q.device
    slope32 = _check_slope(slope, h, device)
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1 or cu_seqlens.dtype not in INDEX_DTYPES:
        raise ValueError(
            f"cu_seqlens must be a 1-D int32/int64 tensor [S + 1], got {cu_seqlens.dtype} {tuple(cu_seqlens.shape)}"
        )
    check_on(cu_seqlens, "cu_seqlens", cu_seqlens.dtype, device)
    num_seqs = cu_seqlens.numel() - 1
    state_shape = (num_seqs, h, d, d)
    if initial_states is not None:
        _check_states(initial_states, "initial_states", state_shape, device)
        initial_states = initial_states.contiguous()
    if out is None:
        out = torch.empty_like(q, memory_format=torch.contiguous_format)
    else:
        _check_out(out, q)
    if final_states is None:
        final_states = torch.empty(state_shape, dtype=torch.float32, device=device)
    else:
        _check_states(final_states, "final_states", state_shape, device)
        if not final_states.is_contiguous():
            raise ValueError("final_states must be contiguous")
    if num_seqs == 0:
        return out, final_states

    # Chunk bookkeeping. One host sync, for the chunk count that sizes the chunk-state buffer.
    bounds = cu_seqlens.tolist()
    if bounds[0] != 0 or bounds[-1] != n or any(a > b for a, b in zip(bounds, bounds[1:])):
        raise ValueError(f"cu_seqlens must rise from 0 to N = {n}, got {bounds}")
    num_chunks = sum(triton.cdiv(b - a, chunk_size) for a, b in zip(bounds, bounds[1:]))
    cu = cu_seqlens.to(torch.int64)
    chunks_per_seq = (cu[1:] - cu[:-1] + chunk_size - 1) // chunk_size  # [S]
    chunk_start = torch.cumsum(chunks_per_seq, 0) - chunks_per_seq  # [S] first chunk of each sequence
    chunk_seq = torch.repeat_interleave(
        torch.arange(num_seqs, device=device, dtype=torch.int32), chunks_per_seq, output_size=num_chunks
    )  # [C] sequence of each chunk
    # 16-bit inputs meet the chunk states in 16-bit dots; the running state itself stays fp32.
    state_dtype = torch.float32 if q.dtype == torch.float32 else q.dtype
    chunk_states = torch.empty(num_chunks, h, d, d, dtype=state_dtype, device=device)  # [C, H, D, D]

    precision = dot_precision(q.dtype)
    st = state_tiles(d)
    init = initial_states if initial_states is not None else final_states  # any valid pointer; unread
    _prefill_state_kernel[(num_seqs * h, triton.cdiv(d, st.bk), triton.cdiv(d, st.bv))](
        k, v, slope32, cu_seqlens, chunk_start, init, chunk_states, final_states,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        H=h, D=d, BT=chunk_size, BK=st.bk, BV=st.bv,
        HAS_INIT=initial_states is not None, PRECISION=precision, WIDEN=widen(q),
        num_warps=st.num_warps, num_stages=2,
    )
    if num_chunks:
        ot = output_tiles(d, q.dtype)
        _prefill_output_kernel[(num_chunks, triton.cdiv(d, ot.bv), h)](
            q, k, v, out, slope32, cu_seqlens, chunk_start, chunk_seq, chunk_states,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
            out.stride(0), out.stride(1),
            H=h, D=d, BT=chunk_size, BD=ot.bd, BV=ot.bv, PRECISION=precision, WIDEN=widen(q),
            num_warps=ot.num_warps, num_stages=2,
        )
    return out, final_states


def lightning_decode_triton(
    q: torch.Tensor,  # [B, H, D]
    k: torch.Tensor,  # [B, H, D]
    v: torch.Tensor,  # [B, H, D]
    slope: torch.Tensor,  # [H]
    state_pool: torch.Tensor,  # [P, H, D, D] fp32, updated in place
    slot_ids: torch.Tensor,  # [B] int, -1 = padding
    *,
    out: torch.Tensor | None = None,  # [B, H, D], q's dtype; written whole (zeros on padding rows)
) -> torch.Tensor:
    """lightning_decode_ref's contract. Live slot ids must be distinct, as for the reference."""
    b, h, d = _check_qkv(q, k, v, "B")
    device = q.device
    slope32 = _check_slope(slope, h, device)
    if state_pool.dim() != 4:
        raise ValueError(f"state_pool must be [P, {h}, {d}, {d}], got {tuple(state_pool.shape)}")
    _check_states(state_pool, "state_pool", (state_pool.shape[0], h, d, d), device)
    if state_pool.stride(-1) != 1 or state_pool.stride(-2) != d:
        raise ValueError(f"state_pool must hold each [D, D] state contiguous, got strides {state_pool.stride()}")
    if slot_ids.shape != (b,) or slot_ids.dtype not in INDEX_DTYPES:
        raise ValueError(f"slot_ids must be an int32/int64 tensor [B] = [{b}], got {slot_ids.dtype} {tuple(slot_ids.shape)}")
    check_on(slot_ids, "slot_ids", slot_ids.dtype, device)
    if out is None:
        out = torch.empty_like(q, memory_format=torch.contiguous_format)
    else:
        _check_out(out, q)
    if b == 0:
        return out
    dt = decode_tiles(d)
    _decode_kernel[(b, h, triton.cdiv(d, dt.bv))](
        q, k, v, out, slope32, state_pool, slot_ids.contiguous(), state_pool.shape[0],
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        out.stride(0), out.stride(1), state_pool.stride(0), state_pool.stride(1),
        D=d, BD=dt.bd, BV=dt.bv, WIDEN=widen(q),
        num_warps=dt.num_warps,
    )
    return out
