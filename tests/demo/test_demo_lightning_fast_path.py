"""The batched path of lightning_prefill_ref (all sequences at once, longest first, chunks of
compute_block tokens) against the plain per-sequence loop: values and gradients, to 1e-6."""
import pytest
import torch

from minimax_m1.kernels import lightning_ref
from minimax_m1.kernels.lightning_ref import compute_block, lightning_prefill_ref

S, L, H, D = 3, 37, 4, 8  # L is not a multiple of the block sizes below


def _inputs(seed: int, with_initial: bool, n: int = S * L, seqs: int = S):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (0.3 * torch.randn(n, H, D, generator=g) for _ in range(3))
    slope = torch.tensor([0.5, 0.1, 0.02, 0.004])
    initial = 0.1 * torch.randn(seqs, H, D, D, generator=g) if with_initial else None
    return q, k, v, slope, torch.arange(0, n + 1, L), initial


@pytest.mark.parametrize("block_size", [8, 16, 64])
@pytest.mark.parametrize("with_initial", [False, True])
def test_batched_matches_loop_equal_lengths(block_size, with_initial):
    """Equal lengths (every training batch); chunks of block_size tokens."""
    q, k, v, slope, cu, initial = _inputs(block_size, with_initial)
    fast_out, fast_final = lightning_ref._prefill_batched(q, k, v, slope, [L] * S, initial, block_size)
    loop_out, loop_final = lightning_ref._prefill_loop(q, k, v, slope, cu, initial, block_size)
    torch.testing.assert_close(fast_out, loop_out, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(fast_final, loop_final, atol=1e-6, rtol=1e-6)
    assert fast_out.abs().max() > 0.01  # not trivially zero


@pytest.mark.parametrize("offsets", [[0, 30, 70, S * L], [0, 1, 2, S * L], [0, 100, 101, S * L], [0, S * L]])
@pytest.mark.parametrize("block_size", [4, 16, 256])
def test_ragged_lengths_in_any_order_match_loop(offsets, block_size):
    """Sequences shorter and longer than a chunk, in any order: each sequence's output and final
    state land in its own place (the batched path sorts them longest first internally)."""
    q, k, v, slope, _, _ = _inputs(3, False)
    initial = 0.1 * torch.randn(len(offsets) - 1, H, D, D, generator=torch.Generator().manual_seed(5))
    cu = torch.tensor(offsets)
    out, finals = lightning_prefill_ref(q, k, v, slope, cu, initial, block_size)
    ref_out, ref_finals = lightning_ref._prefill_loop(q, k, v, slope, cu, initial, block_size)
    torch.testing.assert_close(out, ref_out, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(finals, ref_finals, atol=1e-6, rtol=1e-6)


def test_compute_block_balances_chunk_and_state_work():
    assert compute_block(256, 32) == 64  # small heads: no chunk below 64 tokens
    assert compute_block(256, 128) == 128  # M1's heads: c = D
    assert compute_block(16, 128) == 16  # never above the model's block


def test_gradients_match_loop():
    """Autograd flows through the in-place writes of both paths and agrees to 1e-6, with ragged
    lengths (a shorter sequence stops advancing before the others)."""
    base = _inputs(7, True)
    lengths = [37, 50, 24]

    def grads(fn):
        q, k, v, slope, cu, initial = (x.clone().requires_grad_(x.is_floating_point() and x.dim() > 1) if x is not None else None
                                       for x in base)
        out, final = fn(q, k, v, slope, initial)
        g = torch.Generator().manual_seed(1)
        loss = (out * torch.randn(out.shape, generator=g)).sum() + (final * torch.randn(final.shape, generator=g)).sum()
        loss.backward()
        return [q.grad, k.grad, v.grad, initial.grad]

    cu = torch.tensor([0, 37, 87, S * L])
    fast = grads(lambda q, k, v, s, i: lightning_ref._prefill_batched(q, k, v, s, lengths, i, 16))
    loop = grads(lambda q, k, v, s, i: lightning_ref._prefill_loop(q, k, v, s, cu, i, 16))
    for a, b in zip(fast, loop):
        assert a is not None and a.abs().max() > 0
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
