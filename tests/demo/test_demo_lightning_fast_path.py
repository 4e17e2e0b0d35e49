"""The vectorised path of lightning_prefill_ref (training batches: equal lengths) against its
per-sequence loop, values and gradients, to 1e-6."""
import pytest
import torch

from minimax_m1.kernels import lightning_ref
from minimax_m1.kernels.lightning_ref import lightning_prefill_ref

S, L, H, D = 3, 37, 4, 8  # L is not a multiple of the block sizes below


def _inputs(seed: int, with_initial: bool):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (0.3 * torch.randn(S * L, H, D, generator=g) for _ in range(3))
    slope = torch.tensor([0.5, 0.1, 0.02, 0.004])
    initial = 0.1 * torch.randn(S, H, D, D, generator=g) if with_initial else None
    return q, k, v, slope, torch.arange(0, S * L + 1, L), initial


@pytest.mark.parametrize("block_size", [8, 16, 64])
@pytest.mark.parametrize("with_initial", [False, True])
def test_fast_path_matches_loop(block_size, with_initial):
    q, k, v, slope, cu, initial = _inputs(block_size, with_initial)
    fast_out, fast_final = lightning_ref._prefill_padded(q, k, v, slope, [L] * (q.shape[0] // L), initial, block_size)
    loop_out, loop_final = lightning_ref._prefill_loop(q, k, v, slope, cu, initial, block_size)
    torch.testing.assert_close(fast_out, loop_out, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(fast_final, loop_final, atol=1e-6, rtol=1e-6)
    assert fast_out.abs().max() > 0.01  # not trivially zero


def test_dispatch_vectorises_training_batches_and_stays_exact(monkeypatch):
    q, k, v, slope, cu, initial = _inputs(0, True)
    calls = []
    real = lightning_ref._prefill_padded
    monkeypatch.setattr(lightning_ref, "_prefill_padded", lambda *a: calls.append(a) or real(*a))
    lightning_prefill_ref(q, k, v, slope, cu, initial, 16)
    assert len(calls) == 1  # equal lengths (every training batch) take the vectorised path
    # mildly ragged (little padding) is vectorised too, very ragged stays on the loop; both exact
    for offsets, vectorised in (([0, 30, 70, S * L], True), ([0, 1, 2, S * L], False)):
        calls.clear()
        ragged = torch.tensor(offsets)
        out, finals = lightning_prefill_ref(q, k, v, slope, ragged, initial, 16)
        assert bool(calls) == vectorised
        ref_out, ref_finals = lightning_ref._prefill_loop(q, k, v, slope, ragged, initial, 16)
        torch.testing.assert_close(out, ref_out, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(finals, ref_finals, atol=1e-6, rtol=1e-6)


def test_gradients_match_loop():
    """Autograd flows through the in-place writes of both paths and agrees to 1e-6."""
    base = _inputs(7, True)

    def grads(fn):
        q, k, v, slope, cu, initial = (x.clone().requires_grad_(x.is_floating_point() and x.dim() > 1) if x is not None else None
                                       for x in base)
        out, final = fn(q, k, v, slope, cu, initial)
        g = torch.Generator().manual_seed(1)
        loss = (out * torch.randn(out.shape, generator=g)).sum() + (final * torch.randn(final.shape, generator=g)).sum()
        loss.backward()
        return [q.grad, k.grad, v.grad, initial.grad]

    fast = grads(lambda q, k, v, s, cu, i: lightning_ref._prefill_padded(q, k, v, s, [L] * (q.shape[0] // L), i, 16))
    loop = grads(lambda q, k, v, s, cu, i: lightning_ref._prefill_loop(q, k, v, s, cu, i, 16))
    for a, b in zip(fast, loop):
        assert a is not None and a.abs().max() > 0
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
