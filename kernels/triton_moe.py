"""Triton kernels for the SiLU-gated mixture-of-experts compute, behind the API of moe_ref.py.

Legend: T tokens, K experts per token, E local experts, h hidden, I expert intermediate size,
BM rows per block. An "entry" is one (token, choice) pair, flat index t * K + k.

1. Group (torch ops on the device, no host sync): sort the entries by local expert and pad each
   expert's group to a multiple of BM, so every block of BM rows belongs to one expert. Entries
   routed to experts held elsewhere go to no block.
2. Gate-up launch, one program per (block, tile of I): silu(x W1^T) * (x W3^T) -> act [rows, I].
3. Down launch, one program per (block, tile of h): (act W2^T) * routing weight -> per-entry
   outputs [T * K, h] fp32, zero for entries routed elsewhere.
4. Sum the K entries of each token in fp32 and cast to x's dtype.
The grid is sized by the most blocks any routing can need, and blocks past the last expert's group
return at once, so the host never waits for the device.
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
    check_on,
    check_unit_stride,
    dot_precision,
    mm,
    widen,
)


@dataclass(frozen=True)
class Tiles:
    """Block and launch shape of both MoE launches. Chosen so that neither kernel spills registers
    on sm_90 in 16-bit (checked offline with ptxas: tests/kernels/test_kernel_compile.py)."""

    bm: int  # rows (token entries) per block, all of one expert
    bn: int  # output columns per program
    bk: int  # reduction step
    num_warps: int
    num_stages: int


def moe_tiles(num_entries: int, num_experts: int) -> Tiles:
    """Taller blocks read each expert's weights fewer times but pad more; the entries per local
    expert (an upper bound: some entries go to other ranks) picks the trade."""
    per_expert = num_entries / max(num_experts, 1)
    if per_expert <= 64:  # decode-sized: spread thinly, so small blocks waste less padding
        return Tiles(bm=16, bn=64, bk=64, num_warps=8, num_stages=3)
    if per_expert <= 512:
        return Tiles(bm=64, bn=64, bk=32, num_warps=8, num_stages=4)
    return Tiles(bm=128, bn=64, bk=32, num_warps=8, num_stages=4)


@triton.jit
def _gate_up_kernel(
    x_ptr, w13_ptr, act_ptr, rows_ptr, block_expert_ptr,
    num_entries, num_experts, inter, hidden,
    stride_xt, stride_we, stride_wn, stride_at,
    TOPK: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    PRECISION: tl.constexpr, WIDEN: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    expert = tl.load(block_expert_ptr + pid_m).to(tl.int64)
    if expert >= num_experts:  # past the last group
        return
    rm = pid_m * BM + tl.arange(0, BM)  # [BM] rows of this block
    entry = tl.load(rows_ptr + rm)  # [BM] entry of each row; num_entries marks a padding row
    live = entry < num_entries
    token = (entry // TOPK).to(tl.int64)
    rn = pid_n * BN + tl.arange(0, BN)  # [BN] columns of I
    mn = rn < inter
    w_gate = w13_ptr + expert * stride_we + rn[None, :] * stride_wn  # [1, BN] rows 0..I-1 of w13
    w_up = w_gate + inter * stride_wn  # rows I..2I-1
    gate = tl.zeros([BM, BN], dtype=tl.float32)
    up = tl.zeros([BM, BN], dtype=tl.float32)
    for k0 in range(0, hidden, BK):
        rk = k0 + tl.arange(0, BK)
        mk = rk < hidden
        xs = tl.load(x_ptr + token[:, None] * stride_xt + rk[None, :],
                     mask=live[:, None] & mk[None, :], other=0.0)  # [BM, BK]
        wmask = mk[:, None] & mn[None, :]
        wg = tl.load(w_gate + rk[:, None], mask=wmask, other=0.0)  # [BK, BN]
        wu = tl.load(w_up + rk[:, None], mask=wmask, other=0.0)  # [BK, BN]
        gate += mm(xs, wg, PRECISION, WIDEN)
        up += mm(xs, wu, PRECISION, WIDEN)
    # round as the reference does: each projection lands in x's dtype before the gating
    dtype = x_ptr.dtype.element_ty
    gate = cast(gate, dtype, WIDEN).to(tl.float32)
    up = cast(up, dtype, WIDEN).to(tl.float32)
    silu = cast(gate * tl.sigmoid(gate), dtype, WIDEN).to(tl.float32)
    act = cast(silu * up, dtype, WIDEN)
    tl.store(act_ptr + rm[:, None].to(tl.int64) * stride_at + rn[None, :], act, mask=mn[None, :])


@triton.jit
def _down_kernel(
    act_ptr, w2_ptr, weight_ptr, y_ptr, rows_ptr, block_expert_ptr,
    num_entries, num_experts, inter, hidden,
    stride_at, stride_we, stride_wn, stride_yt,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    PRECISION: tl.constexpr, WIDEN: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    expert = tl.load(block_expert_ptr + pid_m).to(tl.int64)
    if expert >= num_experts:
        return
    rm = pid_m * BM + tl.arange(0, BM)  # [BM]
    entry = tl.load(rows_ptr + rm)  # [BM]
    live = entry < num_entries
    rn = pid_n * BN + tl.arange(0, BN)  # [BN] columns of h
    mn = rn < hidden
    w = w2_ptr + expert * stride_we + rn[None, :] * stride_wn  # [1, BN]
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    for k0 in range(0, inter, BK):
        rk = k0 + tl.arange(0, BK)
        mk = rk < inter
        a = tl.load(act_ptr + rm[:, None].to(tl.int64) * stride_at + rk[None, :], mask=mk[None, :], other=0.0)  # [BM, BK]
        wd = tl.load(w + rk[:, None], mask=mk[:, None] & mn[None, :], other=0.0)  # [BK, BN]
        acc += mm(a, wd, PRECISION, WIDEN)
    weight = tl.load(weight_ptr + entry, mask=live, other=0.0)  # [BM] fp32
    y = cast(acc, act_ptr.dtype.element_ty, WIDEN).to(tl.float32) * weight[:, None]
    tl.store(y_ptr + entry[:, None].to(tl.int64) * stride_yt + rn[None, :], y, mask=live[:, None] & mn[None, :])


def group_by_expert(
    topk_ids: torch.Tensor,  # [T, K] global expert ids
    num_experts: int,  # E local experts
    expert_offset: int,
    block_m: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows sorted by expert, each expert's group padded to block_m. Returns (rows, block_expert).

    rows [R] int32: the entry (t * K + k) at each row, or T * K on a padding row.
    block_expert [R / block_m] int32: the local expert of each block, or E past the last group.
    R = T * K + E * (block_m - 1), rounded up to block_m: enough for any routing.
    """
    device = topk_ids.device
    num_entries = topk_ids.numel()
    local = topk_ids.reshape(-1).to(torch.int64) - expert_offset  # [T*K]
    local = torch.where((local >= 0) & (local < num_experts), local, num_experts)  # E = held elsewhere
    counts = torch.zeros(num_experts + 1, dtype=torch.int64, device=device)
    counts.scatter_add_(0, local, torch.ones_like(local))  # [E+1]
    padded = (counts[:num_experts] + block_m - 1) // block_m * block_m  # [E]
    padded_end = torch.cumsum(padded, 0)  # [E]
    group_start = torch.cumsum(counts, 0) - counts  # [E+1] first sorted entry of each expert
    order = torch.argsort(local, stable=True)  # [T*K] entries by expert
    expert_of = local[order]  # [T*K]
    rank = torch.arange(num_entries, device=device) - group_start[expert_of]  # [T*K] rank in its group
    num_rows = triton.cdiv(num_entries + num_experts * (block_m - 1), block_m) * block_m
    here = expert_of < num_experts
    row_start = padded_end - padded  # [E]
    dest = torch.where(here, row_start[expert_of.clamp(max=num_experts - 1)] + rank, num_rows)  # [T*K]
    rows = torch.full((num_rows + 1,), num_entries, dtype=torch.int64, device=device)  # +1: a sink row
    rows.scatter_(0, dest, order)
    block_first_row = torch.arange(0, num_rows, block_m, device=device)  # [R / BM]
    block_expert = torch.searchsorted(padded_end, block_first_row, right=True)  # [R / BM]
    return rows[:num_rows].to(torch.int32), block_expert.to(torch.int32)


def moe_experts_triton(
    x: torch.Tensor,  # [T, h]
    topk_ids: torch.Tensor,  # [T, K] global expert ids
    topk_weights: torch.Tensor,  # [T, K]
    w13: torch.Tensor,  # [E, 2I, h] gate rows first, then up
    w2: torch.Tensor,  # [E, h, I]
    expert_offset: int = 0,
    *,
    out: torch.Tensor | None = None,  # [T, h], x's dtype; written whole
) -> torch.Tensor:
    """moe_experts_ref's contract."""
    if x.dim() != 2 or x.dtype not in FLOAT_DTYPES:
        raise ValueError(f"x must be a float16/bfloat16/float32 tensor [T, h], got {x.dtype} {tuple(x.shape)}")
    num_tokens, hidden = x.shape
    device = x.device
    if topk_ids.dim() != 2 or topk_ids.shape[0] != num_tokens or topk_ids.dtype not in INDEX_DTYPES:
        raise ValueError(
            f"topk_ids must be an int32/int64 tensor [T={num_tokens}, K], got {topk_ids.dtype} {tuple(topk_ids.shape)}"
        )
    check_on(topk_ids, "topk_ids", topk_ids.dtype, device)
    if topk_weights.shape != topk_ids.shape or not topk_weights.is_floating_point():
        raise ValueError(
            f"topk_weights must be a float tensor of topk_ids' shape {tuple(topk_ids.shape)}, "
            f"got {topk_weights.dtype} {tuple(topk_weights.shape)}"
        )
    check_on(topk_weights, "topk_weights", topk_weights.dtype, device)
    if w13.dim() != 3 or w13.shape[2] != hidden or w13.shape[1] % 2:
        raise ValueError(f"w13 must be [E, 2I, h={hidden}], got {tuple(w13.shape)}")
    num_experts, inter = w13.shape[0], w13.shape[1] // 2
    if tuple(w2.shape) != (num_experts, hidden, inter):
        raise ValueError(f"w2 must be [E, h, I] = {(num_experts, hidden, inter)}, got {tuple(w2.shape)}")
    check_on(w13, "w13", x.dtype, device)
    check_on(w2, "w2", x.dtype, device)
    for name, t in (("x", x), ("w13", w13), ("w2", w2)):
        check_unit_stride(t, name)
    if isinstance(expert_offset, bool) or not isinstance(expert_offset, int):
        raise ValueError(f"expert_offset must be an int, got {expert_offset!r}")
    if out is None:
        out = torch.empty_like(x, memory_format=torch.contiguous_format)
    elif out.shape != x.shape or out.dtype != x.dtype or out.device != device:
        raise ValueError(f"out must be {tuple(x.shape)} {x.dtype} on {device}")
    topk = topk_ids.shape[1]
    num_entries = num_tokens * topk
    if num_entries == 0 or num_experts == 0 or inter == 0 or hidden == 0:
        out.zero_()
        return out

    tiles = moe_tiles(num_entries, num_experts)
    rows, block_expert = group_by_expert(topk_ids, num_experts, expert_offset, tiles.bm)
    num_blocks = block_expert.numel()
    act = torch.empty(rows.numel(), inter, dtype=x.dtype, device=device)  # [R, I]
    per_entry = torch.zeros(num_entries, hidden, dtype=torch.float32, device=device)  # [T*K, h]
    weights = topk_weights.reshape(-1).to(torch.float32).contiguous()  # [T*K]
    precision = dot_precision(x.dtype)
    _gate_up_kernel[(num_blocks, triton.cdiv(inter, tiles.bn))](
        x, w13, act, rows, block_expert,
        num_entries, num_experts, inter, hidden,
        x.stride(0), w13.stride(0), w13.stride(1), act.stride(0),
        TOPK=topk, BM=tiles.bm, BN=tiles.bn, BK=tiles.bk, PRECISION=precision, WIDEN=widen(x),
        num_warps=tiles.num_warps, num_stages=tiles.num_stages,
    )
    _down_kernel[(num_blocks, triton.cdiv(hidden, tiles.bn))](
        act, w2, weights, per_entry, rows, block_expert,
        num_entries, num_experts, inter, hidden,
        act.stride(0), w2.stride(0), w2.stride(1), per_entry.stride(0),
        BM=tiles.bm, BN=tiles.bn, BK=tiles.bk, PRECISION=precision, WIDEN=widen(x),
        num_warps=tiles.num_warps, num_stages=tiles.num_stages,
    )
    out.copy_(per_entry.view(num_tokens, topk, hidden).sum(dim=1))  # [T, h], summed in fp32
    return out
