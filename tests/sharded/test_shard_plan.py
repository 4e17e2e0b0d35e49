"""ShardPlan: validation messages, head/expert maps, placement bundles, capacity planning."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from minimax_m1.model_shards.config import MiniMaxM1Config
from minimax_m1.model_shards.shard_plan import (
    COLOCATED,
    PlanError,
    ShardPlan,
    checkpoint_bytes,
    format_bytes,
    parse_bytes,
)
from minimax_m1.model_shards.tiny import tiny_config

REFERENCE = Path(__file__).resolve().parents[2].parent / "shared" / "reference"
needs_reference = pytest.mark.skipif(not (REFERENCE / "minimax-m1-config.json").is_file(),
                                     reason=f"the released config is not at {REFERENCE} (a user's clone has no ../shared)")


@pytest.fixture(scope="module")
def tiny():
    return tiny_config(vocab_size=259)  # H=4, Hkv=2, E=32


@pytest.fixture(scope="module")
def release():
    return MiniMaxM1Config.from_pretrained(REFERENCE / "minimax-m1-config.json")


def test_world_layout_disaggregated_and_colocated():
    plan = ShardPlan(2, 4)
    assert plan.world_size == 6 and plan.attention_ranks == [0, 1] and plan.expert_ranks == [2, 3, 4, 5]
    assert [plan.role(r).kind for r in range(6)] == ["attention"] * 2 + ["expert"] * 4
    assert plan.role(3).ep_rank == 1 and plan.role(3).tp_rank is None
    co = ShardPlan.colocated(4)
    assert co.world_size == 4 and co.expert_ranks == [0, 1, 2, 3]
    assert all(co.role(r).has_attention and co.role(r).has_experts for r in range(4))
    with pytest.raises(PlanError, match="outside the world"):
        plan.role(6)


@pytest.mark.parametrize("kwargs, message", [
    (dict(tp=0), "'tp' must be a positive integer"),
    (dict(ep=1.5), "'ep' must be a positive integer"),
    (dict(placement="packed"), "'placement' must be one of disaggregated, colocated"),
    (dict(tp=2, ep=4, placement=COLOCATED), r"colocated plan needs tp == ep .* ShardPlan.colocated\(W\)"),
    (dict(tp=1, ep=1, pods=3), "'pods' \\(3\\) exceeds the number of workers \\(2\\)"),
])
def test_invalid_plans_say_what_to_change(kwargs, message):
    with pytest.raises(PlanError, match=message):
        ShardPlan(**kwargs)


@pytest.mark.parametrize("tp, ep, message", [
    (3, 1, r"tp=3 does not divide the 4 attention heads: choose tp from \[1, 2, 4\]"),
    (1, 3, r"ep=3 does not divide the 32 experts: choose ep from \[1, 2, 4, 8, 16, 32\]"),
])
def test_validation_against_the_model(tiny, tp, ep, message):
    with pytest.raises(PlanError, match=message):
        ShardPlan(tp, ep).validate(tiny)


def test_tp_beyond_kv_heads_must_be_a_multiple(tiny):
    config = tiny.replace(num_attention_heads=12, num_key_value_heads=4)
    with pytest.raises(PlanError, match="not a multiple of it.*multiple of 4"):
        ShardPlan(6, 1).validate(config)
    with pytest.raises(PlanError, match=r"tp=2 does not divide the 3 key/value heads"):
        ShardPlan(2, 1).validate(tiny.replace(num_attention_heads=6, num_key_value_heads=3))
    ShardPlan(12, 1).validate(config)  # one replicated KV head per rank


def test_expert_and_head_maps(tiny):
    plan = ShardPlan(2, 4)
    owners = plan.expert_map(32)
    assert owners == [2] * 8 + [3] * 8 + [4] * 8 + [5] * 8
    assert list(plan.experts_of(1, 32)) == list(range(8, 16))
    assert plan.head_map(4) == [0, 0, 1, 1]
    assert list(plan.heads_of(1, 4)) == [2, 3]
    assert [list(plan.kv_heads_of(r, 2)) for r in range(2)] == [[0], [1]]


def test_kv_heads_are_replicated_when_tp_exceeds_them():
    plan = ShardPlan(8, 1)  # 8 query-head groups over 2 KV heads
    assert [plan.kv_heads_of(r, 2).start for r in range(8)] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert plan.kv_replication(2) == 4
    # every rank's query heads read the KV head it holds (GQA group = H / Hkv)
    heads, kv = 16, 2
    for r in range(8):
        assert {h // (heads // kv) for h in plan.heads_of(r, heads)} == set(plan.kv_heads_of(r, kv))


def test_bundles_cpu_only_without_gpu_and_one_gpu_each_with():
    plan = ShardPlan(2, 4)
    assert plan.bundles(use_gpu=False, cpus_per_worker=0.1) == [{"CPU": 0.1}] * 6
    assert plan.bundles(use_gpu=True) == [{"CPU": 1.0, "GPU": 1.0}] * 6
    assert ShardPlan.colocated(8).bundles(True, 2) == [{"CPU": 2.0, "GPU": 1.0}] * 8
    assert plan.strategy == "PACK"
    assert ShardPlan(4, 16, pods=3).strategy == "SPREAD"


def test_memory_sizes():
    assert parse_bytes("80GiB") == 80 * 2**30
    assert parse_bytes("141GB") == 141 * 10**9
    assert parse_bytes("1.5 gib") == int(1.5 * 2**30)
    assert format_bytes(80 * 2**30) == "80.0 GiB"
    with pytest.raises(PlanError, match="use a number with a unit such as 80GiB"):
        parse_bytes("eighty")


def test_capacity_counts_the_tiny_model_exactly(tiny):
    plan = ShardPlan(2, 4)
    report = plan.capacity(tiny, gpu_memory=10**7, dtype="float32", context_tokens=100, reserve_fraction=0.0)
    attention, experts = report.workers
    h, d, v = 64, 16, 259
    # per layer: 2 norms; lightning: qkv 3*2*16*64, gate 2*16*64, norm 32, out 64*32; softmax: q, k, v, o
    lightning = 2 * h + 3 * 2 * d * h + 2 * d * h + 2 * d + h * 2 * d
    softmax = 2 * h + 2 * d * h + 2 * 1 * d * h + h * 2 * d
    params = v * h + h + 7 * lightning + softmax
    gates = 8 * 32 * h * 4
    lm_head = 130 * h * 4  # ceil(259 / 2) rows, fp32
    assert attention.weight_bytes == params * 4 + gates + lm_head
    assert experts.weight_bytes == 8 * 8 * 3 * 64 * 64 * 4
    # state: 7 lightning layers x 2 heads x 16 x 16 fp32, plus 100 tokens x 1 softmax layer x k,v x 1 head x 16
    assert attention.state_bytes_per_sequence == 7 * 2 * 16 * 16 * 4 + 100 * 2 * 1 * 16 * 4
    assert attention.budget_bytes == 10**7 - attention.weight_bytes
    assert attention.max_sequences == attention.budget_bytes // attention.state_bytes_per_sequence
    assert report.fits and experts.max_sequences is None


def test_capacity_says_when_it_does_not_fit(tiny):
    report = ShardPlan(1, 1).capacity(tiny, gpu_memory=2 * 10**5, dtype="float32")
    assert not report.fits
    assert "fits: no" in report.format()


@needs_reference
def test_release_bytes_match_the_published_index(release):
    index = json.loads((REFERENCE / "minimax-m1-model.safetensors.index.json").read_text())
    assert checkpoint_bytes(release, dtype_bytes=2) == index["metadata"]["total_size"]


@needs_reference
def test_release_on_h100_and_h200(release):
    h100, h200 = parse_bytes("80GiB"), parse_bytes("141GB")
    # bf16 experts are 869.8 GB: 8 H100s cannot hold them, 8 H200s can (colocated)
    assert not ShardPlan.colocated(8).capacity(release, h100).fits
    assert ShardPlan.colocated(8).capacity(release, h200).fits
    assert ShardPlan.colocated(8).capacity(release, h100, expert_dtype="int8").fits
    # disaggregated on H100: ep=8 does not fit (108 GiB of experts per GPU), ep=16 does
    assert not ShardPlan(2, 8).capacity(release, h100).fits
    assert ShardPlan(2, 16).capacity(release, h100).fits
    with pytest.raises(PlanError, match="choose tp from"):
        ShardPlan(3, 16).capacity(release, h100)
