"""The MoE router: softmax -> top-k -> renormalise, and the expert_threshold top-p variant."""
import math

import torch

from minimax_m1.model_shards.layers import route


def test_exact_top2_renormalised():
    logits = torch.tensor([[0.0, 2.0, 1.0, -1.0]])
    ids, w = route(logits, 2, None)
    p = torch.softmax(logits, -1)[0]
    assert ids.tolist() == [[1, 2]]
    assert torch.allclose(w[0], torch.stack([p[1], p[2]]) / (p[1] + p[2]))


def test_threshold_takes_experts_until_mass_reaches_it():
    # probabilities 0.6, 0.3, 0.1 (top-k = 3)
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.1]])).repeat(4, 1)
    thr = torch.tensor([0.5, 0.7, 1.0, math.nan])
    ids, w = route(logits, 3, thr)
    # 0.5: 0.6 already >= 0.5 after the first -> one expert
    assert ids[0].tolist() == [0, -1, -1] and torch.allclose(w[0], torch.tensor([1.0, 0, 0]))
    # 0.7: first (0.6 < 0.7) then second (0.9 >= 0.7) -> two experts
    assert ids[1].tolist() == [0, 1, -1] and torch.allclose(w[1], torch.tensor([2 / 3, 1 / 3, 0]))
    # 1.0: capped at top-k
    assert ids[2].tolist() == [0, 1, 2]
    # unset: the exact top-k
    assert ids[3].tolist() == [0, 1, 2]
    # threshold 0 still takes one expert
    ids0, _ = route(logits[:1], 3, torch.tensor([0.0]))
    assert ids0[0].tolist() == [0, -1, -1]
