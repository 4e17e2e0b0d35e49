"""The torch MoE reference against a per-token formula, with autograd, and with the experts stored
input-major (the CPU layout)."""
import pytest
import torch
import torch.nn.functional as F

from minimax_m1.kernels.moe_ref import moe_experts_ref
from minimax_m1.model_shards.layers import LocalExperts, prepare_cpu_experts


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
    (1, 8, 0, 16, 8), (33, 8, 0, 16, 8), (200, 8, 4, 16, 8), (40, 8, 0, 12, 6), (3, 4, 0, 8, 4), (2, 32, 0, 16, 8)])
@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("input_major", [False, True])
def test_moe_reference_equals_the_per_token_formula(tokens, experts, offset, hidden, inter, grad, input_major):
    g = torch.Generator().manual_seed(tokens)
    x = torch.randn(tokens, hidden, generator=g)
    local = LocalExperts(experts, hidden, inter, offset)
    with torch.no_grad():
        local.w13.copy_(torch.randn(experts, 2 * inter, hidden, generator=g) * 0.3)
        local.w2.copy_(torch.randn(experts, hidden, inter, generator=g) * 0.3)
    if input_major:
        local.use_cpu_layout()
        assert local.w13.transpose(1, 2).is_contiguous() and local.w2.transpose(1, 2).is_contiguous()
    w13, w2 = local.w13.detach(), local.w2.detach()
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


def test_input_major_layout_keeps_values_and_state_dict():
    local = LocalExperts(4, 8, 6)
    torch.nn.init.normal_(local.w13), torch.nn.init.normal_(local.w2)
    before = {k: v.clone() for k, v in local.state_dict().items()}
    local.use_cpu_layout()
    after = local.state_dict()
    assert all(torch.equal(before[k], after[k]) and before[k].shape == after[k].shape for k in before)


def test_cpu_experts_are_stored_input_major_by_the_model_and_the_helper():
    from minimax_m1.model_shards.model import build_random_model
    from minimax_m1.model_shards.tiny import tiny_config

    model = build_random_model(tiny_config(64), seed=0).to_compute(torch.float32, "cpu")
    experts = [m for m in model.modules() if isinstance(m, LocalExperts)]
    assert experts and all(e.w13.transpose(1, 2).is_contiguous() and e.w2.transpose(1, 2).is_contiguous()
                           for e in experts)
    root = torch.nn.Sequential(LocalExperts(2, 8, 4))
    prepare_cpu_experts(root)
    assert root[0].w13.transpose(1, 2).is_contiguous()
