"""The torch MoE reference against a per-token formula, down both of its GEMM paths (torch's grouped
GEMM in inference with aligned operands; one matmul per expert under autograd or unaligned shapes)."""
import pytest
import torch
import torch.nn.functional as F

from minimax_m1.kernels.moe_ref import moe_experts_ref


def per_token(x, ids, weights, w13, w2, offset):
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for j in range(ids.shape[1]):
            e = int(ids[t, j]) - offset
            if 0 <= e < w13.shape[0]:
                gate, up = (w13[e] @ x[t]).chunk(2)
                out[t] += weights[t, j] * (w2[e] @ (F.silu(gate) * up))
    return out


@pytest.mark.parametrize("tokens,experts,offset,hidden,inter", [
    (1, 8, 0, 16, 8), (33, 8, 0, 16, 8), (200, 8, 4, 16, 8), (40, 8, 0, 12, 6), (3, 4, 0, 8, 4)])
@pytest.mark.parametrize("grad", [False, True])
def test_moe_reference_equals_the_per_token_formula(tokens, experts, offset, hidden, inter, grad):
    g = torch.Generator().manual_seed(tokens)
    x = torch.randn(tokens, hidden, generator=g)
    w13 = torch.randn(experts, 2 * inter, hidden, generator=g) * 0.3
    w2 = torch.randn(experts, hidden, inter, generator=g) * 0.3
    ids = torch.randint(0, 12, (tokens, 2), generator=g)  # some ids fall outside [offset, offset + E)
    ids[::4, 1] = -1  # dropped slots (expert_threshold)
    ids[0, 0] = offset  # at least one local entry
    weights = torch.rand(tokens, 2, generator=g)
    if grad:
        x.requires_grad_()
    out = moe_experts_ref(x, ids, weights, w13, w2, offset)
    assert torch.allclose(out, per_token(x.detach(), ids, weights, w13, w2, offset), rtol=1e-5, atol=1e-5)
    if grad:
        out.sum().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0
