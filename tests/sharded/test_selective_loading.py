"""Each worker reads only its own tensors (SafetensorsCheckpoint.reads), and gets the right values."""
from __future__ import annotations

import os

import pytest
import torch

from minimax_m1.engine.workers import build_attention_shard, build_expert_shard
from minimax_m1.model_shards.checkpoint import SafetensorsCheckpoint
from minimax_m1.model_shards.config import MiniMaxM1Config
from minimax_m1.model_shards.model import MiniMaxM1ForCausalLM
from minimax_m1.model_shards.shard_plan import ShardPlan
from minimax_m1.model_shards.tensor_parallel import TPGroup
from tests.sharded.reads import expert_ranges, outside, total

CPU = torch.device("cpu")


def _reads(ckpt):
    return [(os.path.basename(r.file), r.begin, r.end) for r in ckpt.reads]


@pytest.mark.parametrize("layout", ["release_ckpt", "transformers_ckpt"])
def test_expert_ranks_read_only_their_experts(request, layout):
    path = request.getfixturevalue(layout)
    config = MiniMaxM1Config.from_pretrained(path)
    full = MiniMaxM1ForCausalLM.from_pretrained(path, device="cpu")
    plan = ShardPlan(2, 4)
    for ep_rank in range(plan.ep):
        mine = plan.experts_of(ep_rank, config.num_local_experts)
        with SafetensorsCheckpoint(path) as ckpt:
            experts = build_expert_shard(config, ckpt, plan, ep_rank, torch.float32, CPU)
            reads = _reads(ckpt)
        allowed = expert_ranges(path, mine)
        assert outside(reads, allowed) == []
        assert total(reads) == total(allowed)  # all of its experts, each byte once
        for layer, local in enumerate(experts):
            reference = full.model.layers[layer].block_sparse_moe.experts
            assert local.expert_offset == mine.start
            assert torch.equal(local.w13, reference.w13[mine.start:mine.stop])
            assert torch.equal(local.w2, reference.w2[mine.start:mine.stop])


def test_release_expert_rank_opens_only_the_files_of_its_experts(release_ckpt):
    plan = ShardPlan(1, 4)
    with SafetensorsCheckpoint(release_ckpt) as ckpt:
        build_expert_shard(MiniMaxM1Config.from_pretrained(release_ckpt), ckpt, plan, 3, torch.float32, CPU)
        files = {r.file for r in ckpt.reads}
        everything = {os.path.join(release_ckpt, f) for f in os.listdir(release_ckpt) if f.endswith(".safetensors")}
    assert files == {os.path.join(release_ckpt, f) for f, _, _ in expert_ranges(release_ckpt, range(24, 32))}
    assert len(files) < len(everything)


@pytest.mark.parametrize("tp", [2, 4])
def test_attention_ranks_read_no_experts_and_only_their_rows(release_ckpt, tp):
    path = release_ckpt
    config = MiniMaxM1Config.from_pretrained(path)
    full = MiniMaxM1ForCausalLM.from_pretrained(path, device="cpu")
    plan = ShardPlan(tp, 1)
    every_expert = expert_ranges(path, range(config.num_local_experts))
    d = config.head_dim
    for r in range(tp):
        with SafetensorsCheckpoint(path) as ckpt:
            model = build_attention_shard(config, ckpt, plan, r, TPGroup(r, tp), None, torch.float32, CPU)
            reads = _reads(ckpt)
            qkv = ckpt.entry("model.layers.0.self_attn.qkv_proj.weight")
        assert not [x for x in reads if not outside([x], every_expert)], "an attention rank read expert bytes"
        heads = plan.heads_of(r, config.num_attention_heads)
        row = qkv.nbytes // qkv.shape[0]
        in_qkv = [x for x in reads if x[0] == os.path.basename(qkv.file) and qkv.begin <= x[1] < qkv.end]
        assert in_qkv == [(os.path.basename(qkv.file), qkv.begin + heads.start * 3 * d * row, qkv.begin + heads.stop * 3 * d * row)]
        # values: column-parallel rows, row-parallel columns, KV head (replicated at tp=4), vocab rows, slopes
        ref, mine = full.model.layers[0].self_attn, model.model.layers[0].self_attn
        cols = slice(heads.start * d, heads.stop * d)
        assert torch.equal(mine.qkv_proj.weight, ref.qkv_proj.weight[heads.start * 3 * d:heads.stop * 3 * d])
        assert torch.equal(mine.out_proj.weight, ref.out_proj.weight[:, cols])
        assert torch.equal(mine.norm.weight, ref.norm.weight[cols])
        assert torch.equal(mine.slope, ref.slope[heads.start:heads.stop])
        kv = plan.kv_heads_of(r, config.num_key_value_heads)
        ref7, mine7 = full.model.layers[7].self_attn, model.model.layers[7].self_attn
        assert torch.equal(mine7.k_proj.weight, ref7.k_proj.weight[kv.start * d:kv.stop * d])
        assert torch.equal(mine7.o_proj.weight, ref7.o_proj.weight[:, cols])
        per = -(-config.vocab_size // tp)
        rows = full.lm_head.weight[r * per:(r + 1) * per]
        assert torch.equal(model.lm_head.weight[: rows.shape[0]], rows)
        assert not model.lm_head.weight[rows.shape[0]:].any()  # zero padding of the last vocab shard
        assert model.lm_head.weight.dtype == torch.float32
