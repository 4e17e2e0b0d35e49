"""lightning_decode_ref's layouts of slots (in-place runs of consecutive slots, one gather and
scatter for scattered slots, padding rows) against the recurrence written out row by row."""
import pytest
import torch

from minimax_m1.kernels.lightning_ref import _MAX_VIEW_RUNS, _slot_runs, lightning_decode_ref

P, H, D = 12, 4, 8


def _naive(q, k, v, slope, pool, slots):
    pool = pool.clone()
    out = torch.zeros_like(q)
    for row, slot in enumerate(slots):
        if slot < 0:
            continue
        decay = torch.exp(-slope).view(H, 1, 1)
        pool[slot] = decay * pool[slot] + k[row].unsqueeze(-1) * v[row].unsqueeze(-2)
        out[row] = (q[row].unsqueeze(-2) @ pool[slot]).squeeze(-2)
    return out, pool


LAYOUTS = {
    "one run": [3, 4, 5, 6],
    "two runs": [0, 1, 2, 7, 8],
    "scattered (gather path)": [9, 2, 5, 0, 11, 7, 3],
    "scattered with padding": [9, -1, 5, 0, 11, -1, 3],
    "run with padding": [4, 5, -1, 6],
    "single row": [10],
}


@pytest.mark.parametrize("name", LAYOUTS)
def test_layouts_match_row_by_row(name):
    slots = LAYOUTS[name]
    g = torch.Generator().manual_seed(len(slots))
    q, k, v = (0.3 * torch.randn(len(slots), H, D, generator=g) for _ in range(3))
    slope = torch.tensor([0.5, 0.1, 0.02, 0.004])
    pool = 0.1 * torch.randn(P, H, D, D, generator=g)
    ref_out, ref_pool = _naive(q, k, v, slope, pool, slots)
    out = lightning_decode_ref(q, k, v, slope, pool, torch.tensor(slots))
    torch.testing.assert_close(out, ref_out, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(pool, ref_pool, atol=1e-6, rtol=1e-6)  # untouched slots stay as they were
    assert out.abs().max() > 0.01


def test_runs():
    assert _slot_runs([3, 4, 5, 9, 10, -1, 11]) == [(0, 3, 3), (3, 9, 2), (6, 11, 1)]
    assert len(_slot_runs(LAYOUTS["scattered (gather path)"])) > _MAX_VIEW_RUNS
