"""The C kernels (kernels/moe_cpu.c, lightning_cpu.c, norm_cpu.c, attention_cpu.c, built by
kernels/cpu_kernels.py with the machine's C compiler) against the torch reference ops: the MoE with
fp32 and bf16 weight storage and its router, the lightning recurrence as prefill and decode,
RMSNorm, paged decode attention; batch invariance; where they do not apply;
and the experts' bf16 copy of bf16-valued fp32 weights."""
import logging
import shutil

import pytest
import torch

from minimax_m1.kernels import (cpu_kernels, lightning_attention, lightning_prefill, moe_experts, paged_decode_attention,
                                rms_norm, route_topk)
from minimax_m1.kernels.attention_ref import paged_decode_attention_ref
from minimax_m1.kernels.lightning_ref import lightning_decode_ref, lightning_prefill_ref
from minimax_m1.kernels.moe_ref import moe_experts_ref, route_topk_ref
from minimax_m1.kernels.norm_ref import rms_norm_ref
from minimax_m1.model_shards.layers import LocalExperts

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler (cc) to build the CPU kernels")


def input_major(t: torch.Tensor) -> torch.Tensor:
    return t.transpose(1, 2).contiguous().transpose(1, 2)


def case(tokens, experts, hidden, inter, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, hidden, generator=g)
    w13 = input_major((torch.randn(experts, 2 * inter, hidden, generator=g) * 0.2).to(dtype))
    w2 = input_major((torch.randn(experts, hidden, inter, generator=g) * 0.2).to(dtype))
    ids = torch.randint(0, experts + 4, (tokens, 2), generator=g)  # some ids are another shard's
    ids[::3, 1] = -1  # dropped slots (expert_threshold)
    ids[: tokens // 2, 0] = 1  # one busy expert: rows past the first group of 4
    weights = torch.rand(tokens, 2, generator=g)
    return x, ids, weights, w13, w2


@pytest.fixture(autouse=True)
def fresh_library(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIMAX_M1_KERNEL_CACHE", str(tmp_path / "kernels"))
    cpu_kernels.library.cache_clear()
    yield
    cpu_kernels.library.cache_clear()


@pytest.mark.parametrize("tokens,experts,offset,hidden,inter", [
    (0, 4, 0, 16, 8), (1, 8, 0, 16, 8), (7, 8, 2, 32, 24), (64, 32, 0, 128, 96), (300, 8, 4, 48, 40),
    (5, 3, 0, 20, 10)])  # hidden / intermediate sizes that are not multiples of the 16-lane blocks
def test_the_kernel_equals_the_reference(tokens, experts, offset, hidden, inter):
    x, ids, weights, w13, w2 = case(tokens, experts, hidden, inter, seed=tokens)
    ids = ids + offset
    got = cpu_kernels.moe_experts_cpu(x, ids, weights, w13, w2, offset)
    assert got is not None, "the kernel should apply to fp32 input-major experts"
    want = moe_experts_ref(x, ids, weights, w13, w2, offset)
    assert got.shape == want.shape == (tokens, hidden)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_bf16_storage_gives_exactly_the_fp32_result_of_the_same_values():
    x, ids, weights, w13, w2 = case(40, 8, 64, 48, dtype=torch.bfloat16)
    narrow = cpu_kernels.moe_experts_cpu(x, ids, weights, w13, w2)
    wide = cpu_kernels.moe_experts_cpu(x, ids, weights, input_major(w13.float()), input_major(w2.float()))
    assert narrow is not None and torch.equal(narrow, wide)
    torch.testing.assert_close(narrow, moe_experts_ref(x, ids, weights, w13, w2), rtol=1e-5, atol=1e-5)


def test_a_tokens_output_does_not_depend_on_the_rest_of_the_batch():
    x, ids, weights, w13, w2 = case(33, 8, 64, 48)
    batch = cpu_kernels.moe_experts_cpu(x, ids, weights, w13, w2)
    for t in (0, 5, 32):
        alone = cpu_kernels.moe_experts_cpu(x[t:t + 1], ids[t:t + 1], weights[t:t + 1], w13, w2)
        assert torch.equal(alone[0], batch[t])


def test_where_the_kernel_does_not_apply_the_dispatcher_runs_the_reference():
    x, ids, weights, w13, w2 = case(6, 4, 16, 8)
    default_layout = (w13.contiguous(), w2.contiguous())
    assert cpu_kernels.moe_experts_cpu(x, ids, weights, *default_layout) is None
    assert cpu_kernels.moe_experts_cpu(x.double(), ids, weights, w13.double(), w2.double()) is None
    xg = x.clone().requires_grad_()
    assert cpu_kernels.moe_experts_cpu(xg, ids, weights, w13, w2) is None
    out = moe_experts(xg, ids, weights, *default_layout)  # autograd through the reference
    out.sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0
    torch.testing.assert_close(out.detach(), moe_experts_ref(x, ids, weights, w13, w2))


def test_switched_off_or_without_a_compiler_the_reference_runs(monkeypatch, caplog):
    x, ids, weights, w13, w2 = case(6, 4, 16, 8)
    want = moe_experts_ref(x, ids, weights, w13, w2)
    monkeypatch.setenv("MINIMAX_M1_CPU_KERNELS", "0")
    assert cpu_kernels.library() is None and cpu_kernels.moe_experts_cpu(x, ids, weights, w13, w2) is None
    monkeypatch.delenv("MINIMAX_M1_CPU_KERNELS")
    monkeypatch.setenv("CC", "/nonexistent/cc")
    cpu_kernels.library.cache_clear()
    with caplog.at_level(logging.WARNING, logger="minimax_m1.kernels.cpu_kernels"):
        assert cpu_kernels.library() is None
    assert "CPU kernels unavailable" in caplog.text
    torch.testing.assert_close(moe_experts(x, ids, weights, w13, w2), want)


def test_the_built_library_is_cached_per_source_and_cpu(tmp_path):
    assert cpu_kernels.library() is not None
    built = list((tmp_path / "kernels").glob("cpu_kernels-*.so"))
    assert len(built) == 1
    cpu_kernels.library.cache_clear()
    assert cpu_kernels.library() is not None and list((tmp_path / "kernels").glob("cpu_kernels-*.so")) == built


def _experts(bf16_values: bool) -> LocalExperts:
    local = LocalExperts(4, 32, 16)
    with torch.no_grad():
        torch.nn.init.normal_(local.w13, std=0.2), torch.nn.init.normal_(local.w2, std=0.2)
        if bf16_values:
            local.w13.copy_(local.w13.to(torch.bfloat16)), local.w2.copy_(local.w2.to(torch.bfloat16))
    return local


def test_experts_keep_a_bf16_copy_only_of_bf16_valued_weights_and_drop_it_when_they_change():
    x, ids, weights, _, _ = case(10, 4, 32, 16)
    exact = _experts(bf16_values=True)
    before = exact.state_dict()
    exact.use_cpu_layout()
    assert exact._narrow is not None and exact._narrow.w13.dtype == torch.bfloat16
    assert all(v.dtype == torch.float32 for v in exact.state_dict().values())  # the state dict is untouched
    assert all(torch.equal(before[k], v) for k, v in exact.state_dict().items())
    with torch.inference_mode():
        out = exact(x, ids, weights)
    torch.testing.assert_close(out, moe_experts_ref(x, ids, weights, exact.w13.detach(), exact.w2.detach()),
                               rtol=1e-5, atol=1e-5)

    with torch.no_grad():  # an optimizer step / load_state_dict: the copy no longer matches
        exact.w13.mul_(0.5)
    with torch.inference_mode():
        changed = exact(x, ids, weights)
    assert not exact._narrow.matches(exact.w13, exact.w2)
    torch.testing.assert_close(changed, moe_experts_ref(x, ids, weights, exact.w13.detach(), exact.w2.detach()),
                               rtol=1e-5, atol=1e-5)

    general = _experts(bf16_values=False)
    general.use_cpu_layout()
    assert general._narrow is None  # a bf16 copy would change the values


def qkv_views(tokens, heads, dim, seed):
    """q, k, v as the lightning layer makes them: views into one fused [N, H, 3D] projection."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(tokens, heads, 3 * dim, generator=g) * 0.3).split(dim, dim=-1)


@pytest.mark.parametrize("lengths,heads,dim", [([76], 4, 32), ([3, 130, 1, 40], 2, 16), ([0, 5, 0], 2, 8), ([300], 1, 20)])
@pytest.mark.parametrize("initial", [False, True])
def test_lightning_prefill_equals_the_reference(lengths, heads, dim, initial):
    q, k, v = qkv_views(sum(lengths), heads, dim, seed=len(lengths))
    assert cpu_kernels._rows(q, k, v) is not None  # the kernel reads the views in place
    slope = torch.tensor([0.9, 0.3, 0.05, 0.002][:heads])
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    states = torch.randn(len(lengths), heads, dim, dim) * 0.1 if initial else None
    want_out, want_final = lightning_prefill_ref(q, k, v, slope, cu, states, 64)
    final = states.clone() if initial else torch.full((len(lengths), heads, dim, dim), 7.0)  # the pool
    fresh = torch.full((len(lengths),), not initial)  # without initial states: start from zero
    with torch.inference_mode():
        out = lightning_attention(q, k, v, slope, final, torch.arange(len(lengths)), cu, fresh, 0, 64)
    torch.testing.assert_close(out, want_out, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(final, want_final, rtol=1e-4, atol=1e-5)
    if states is not None:
        assert not torch.equal(states, final)  # the caller's initial states are not written


def test_lightning_decode_updates_the_pool_in_place_and_skips_padding():
    q, k, v = qkv_views(6, 4, 32, seed=1)
    slope = torch.tensor([0.9, 0.3, 0.05, 0.002])
    pool = torch.randn(10, 4, 32, 32) * 0.1
    slots = torch.tensor([3, 4, 9, -1, 0, 5])
    start, want_pool = pool.clone(), pool.clone()
    want = lightning_decode_ref(q, k, v, slope, want_pool, slots)
    got = cpu_kernels.lightning_scan_cpu(q, k, v, slope, pool, slots, torch.arange(7))
    assert got is not None
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pool, want_pool, rtol=1e-5, atol=1e-6)
    assert torch.equal(got[3], torch.zeros(4, 32))  # the padding row
    no_fresh = torch.zeros(6, dtype=torch.bool)
    assert torch.equal(lightning_attention(q, k, v, slope, start, slots, torch.arange(7), no_fresh, 6, 64), got)
    assert torch.equal(start, pool)  # the op takes the kernel


def test_a_prompt_in_chunks_or_beside_others_gives_the_same_bits():
    """The recurrence runs token by token per sequence: chunking and batching change nothing."""
    q, k, v = qkv_views(50, 2, 16, seed=2)
    slope = torch.tensor([0.5, 0.01])

    def prefill(q, k, v, cu, pool, fresh):
        return lightning_attention(q, k, v, slope, pool, torch.arange(len(fresh)), cu, torch.tensor(fresh), 0, 64)

    whole_final, final = torch.empty(1, 2, 16, 16), torch.empty(1, 2, 16, 16)
    whole = prefill(q, k, v, torch.tensor([0, 50]), whole_final, [True])
    first = prefill(q[:17], k[:17], v[:17], torch.tensor([0, 17]), final, [True])
    rest = prefill(q[17:], k[17:], v[17:], torch.tensor([0, 33]), final, [False])  # continues the state
    assert torch.equal(torch.cat([first, rest]), whole) and torch.equal(final, whole_final)
    other_q, other_k, other_v = qkv_views(9, 2, 16, seed=3)
    both = prefill(torch.cat([other_q, q]), torch.cat([other_k, k]), torch.cat([other_v, v]), torch.tensor([0, 9, 59]),
                   torch.empty(2, 2, 16, 16), [True, True])
    assert torch.equal(both[9:], whole)


def test_lightning_falls_back_to_the_reference_under_autograd():
    q, k, v = (t.clone().requires_grad_() for t in qkv_views(12, 2, 8, seed=4))
    slope, cu = torch.tensor([0.5, 0.1]), torch.tensor([0, 12])
    assert cpu_kernels.lightning_scan_cpu(q, k, v, slope, torch.zeros(1, 2, 8, 8), torch.arange(1), cu) is None
    out, _ = lightning_prefill(q, k, v, slope, cu, None, 4)
    out.sum().backward()
    assert q.grad is not None and q.grad.abs().sum() > 0


@pytest.mark.parametrize("shape", [(7, 128), (1, 20), (0, 16), (3, 5, 48)])
def test_rms_norm_equals_the_reference(shape):
    g = torch.Generator().manual_seed(shape[0])
    x, weight = torch.randn(*shape, generator=g) * 3, torch.rand(shape[-1], generator=g) + 0.5
    got = cpu_kernels.rms_norm_cpu(x, weight, 1e-5)
    assert got is not None and got.shape == x.shape
    torch.testing.assert_close(got, rms_norm_ref(x, weight, 1e-5), rtol=1e-5, atol=1e-6)
    wide = torch.randn(4, 2 * shape[-1], generator=g)[:, : shape[-1]]  # rows with a stride: read in place
    torch.testing.assert_close(cpu_kernels.rms_norm_cpu(wide, weight, 1e-5), rms_norm_ref(wide, weight, 1e-5),
                               rtol=1e-5, atol=1e-6)


def test_rms_norm_with_a_custom_variance_or_autograd_takes_the_reference():
    x, weight = torch.randn(4, 8), torch.rand(8)
    halved = rms_norm(x, weight, 1e-5, variance=lambda v: v.pow(2).mean(-1, keepdim=True) / 2)  # e.g. all-reduced
    torch.testing.assert_close(halved, rms_norm_ref(x, weight, 1e-5) / 2 ** -0.5, rtol=1e-4, atol=1e-5)
    w = weight.clone().requires_grad_()
    assert cpu_kernels.rms_norm_cpu(x, w, 1e-5) is None
    rms_norm(x, w, 1e-5).sum().backward()
    assert w.grad is not None


@pytest.mark.parametrize("heads,kv_heads,block", [(4, 2, 16), (4, 4, 8), (8, 1, 5)])
def test_paged_decode_attention_equals_the_reference(heads, kv_heads, block):
    g = torch.Generator().manual_seed(heads + block)
    lengths = torch.tensor([1, 37, 16, 80])
    nb = -(-int(lengths.max()) // block)
    pool_blocks = 4 * nb + 3
    k_pool, v_pool = (torch.randn(pool_blocks, block, kv_heads, 32, generator=g) for _ in range(2))
    tables = torch.randperm(pool_blocks, generator=g)[: 4 * nb].view(4, nb)  # scattered blocks
    q = torch.randn(4, heads, 32, generator=g)
    got = cpu_kernels.paged_decode_attention_cpu(q, k_pool, v_pool, tables, lengths)
    assert got is not None
    torch.testing.assert_close(got, paged_decode_attention_ref(q, k_pool, v_pool, tables, lengths), rtol=1e-5, atol=1e-5)
    alone = cpu_kernels.paged_decode_attention_cpu(q[1:2], k_pool, v_pool, tables[1:2], lengths[1:2])
    assert torch.equal(alone[0], got[1])  # batch-invariant
    torch.testing.assert_close(paged_decode_attention(q, k_pool, v_pool, tables, lengths), got)


@pytest.mark.parametrize("tokens,experts,top_k", [(1, 32, 2), (300, 32, 2), (7, 8, 3), (0, 4, 1)])
def test_route_topk_equals_the_reference(tokens, experts, top_k):
    logits = torch.randn(tokens, experts, generator=torch.Generator().manual_seed(tokens)) * 3
    got = cpu_kernels.route_topk_cpu(logits, top_k)
    assert got is not None
    want = route_topk_ref(logits, top_k)
    assert torch.equal(got[0], want[0])
    torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-6)
    assert torch.equal(route_topk(logits, top_k)[0], want[0])


def test_rms_norm_with_a_gate_equals_the_reference():
    g = torch.Generator().manual_seed(9)
    x, gate, weight = torch.randn(5, 64, generator=g), torch.randn(5, 64, generator=g) * 4, torch.rand(64, generator=g)
    got = cpu_kernels.rms_norm_cpu(x, weight, 1e-5, gate)
    assert got is not None
    want = rms_norm_ref(x, weight, 1e-5, gate=gate)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(want, torch.sigmoid(gate) * rms_norm_ref(x, weight, 1e-5))


def test_lightning_attention_in_one_call_equals_the_composed_reference_ops(monkeypatch):
    """The layer's op: decode rows first, then prefill chunks, fresh sequences from zero, states in
    place. The CPU kernel against the composition of the reference ops (the CPU kernels switched off)."""
    lengths = [1, 1, 1, 5, 12]  # three decodes (one fresh: a one-token prompt), two prefill chunks (one fresh)
    q, k, v = qkv_views(sum(lengths), 4, 16, seed=7)
    slope = torch.tensor([0.9, 0.3, 0.05, 0.002])
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    slots, fresh = torch.tensor([4, 0, 2, 1, 3]), torch.tensor([False, True, False, False, True])
    pool = torch.randn(6, 4, 16, 16) * 0.1
    kernel_pool, reference_pool = pool.clone(), pool.clone()
    got = lightning_attention(q, k, v, slope, kernel_pool, slots, cu, fresh, 3, 8)
    monkeypatch.setenv("MINIMAX_M1_CPU_KERNELS", "0")
    cpu_kernels.library.cache_clear()
    want = lightning_attention(q, k, v, slope, reference_pool, slots, cu, fresh, 3, 8)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(kernel_pool, reference_pool, rtol=1e-5, atol=1e-5)
    assert torch.equal(kernel_pool[5], pool[5])  # a slot no sequence uses is untouched
