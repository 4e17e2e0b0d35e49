"""ServingConfig (the args the Helm chart renders) and the Serve deployment options."""
from __future__ import annotations

import pytest

from minimax_m1.serving.app import deployment_options
from minimax_m1.serving.config import ServingConfig

CHART_ARGS = {
    "model": {"uri": "file:///models/m1", "name": "minimax-m1"},
    "plan": {"tp": 2, "ep": 4, "placement": "disaggregated", "gpus_per_attention_worker": 1, "gpus_per_expert_worker": 1},
    "engine": {"max_num_seqs": 16, "max_batch_tokens": 2048, "prefill_chunk_size": 512, "kv_block_size": 16,
               "num_kv_blocks": 4096, "num_state_slots": 16},
    "autoscaling_config": {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 8},
}


def test_chart_args_parse():
    cfg = ServingConfig.from_args(CHART_ARGS)
    assert cfg.model.path == "/models/m1" and cfg.model.name == "minimax-m1"
    assert (cfg.plan.tp, cfg.plan.ep, cfg.plan.in_process) == (2, 4, False)
    assert cfg.engine.cache_shape().num_slots == 16 and cfg.engine.max_batch_tokens == 2048


def test_placement_group_bundles_come_from_the_shard_plan_and_autoscaling_passes_through():
    opts = deployment_options(ServingConfig.from_args(CHART_ARGS))
    assert opts["autoscaling_config"] == CHART_ARGS["autoscaling_config"] and "num_replicas" not in opts
    bundles = opts["placement_group_bundles"]
    assert bundles[0] == {"CPU": 1.0}, "bundle 0 holds the replica itself"
    assert bundles[1:] == [{"CPU": 1.0, "GPU": 1.0}] * 6, "2 attention + 4 expert workers"
    assert opts["placement_group_strategy"] == "PACK"
    colocated = deployment_options(ServingConfig.from_args({"plan": {"tp": 8, "ep": 8, "placement": "colocated",
                                                                     "gpus_per_attention_worker": 1}}))
    assert len(colocated["placement_group_bundles"]) == 9


def test_in_process_plan_has_no_placement_group():
    opts = deployment_options(ServingConfig.from_args({}))
    assert "placement_group_bundles" not in opts and opts["num_replicas"] == 1
    assert opts["max_ongoing_requests"] >= 4 * 32


@pytest.mark.parametrize("args, field", [
    ({"engine": {"max_num_seqs": 0}}, "max_num_seqs"),
    ({"engine": {"bogus": 1}}, "bogus"),
    ({"plan": {"tp": 0}}, "plan.tp"),
    ({"plan": {"placement": "sideways"}}, "plan.placement"),
    ({"plan": {"gpus": 1}}, "plan.gpus"),
    ({"model": {"uri": "s3://bucket/m1"}}, "model.uri"),
    ({"model": {"uri": "file:///a", "path": "/b"}}, "model.uri"),
    ({"modle": {}}, "modle"),
    ({"engine": {"max_num_seqs": 64, "max_batch_tokens": 32}}, "max_batch_tokens"),
])
def test_bad_args_name_the_field(args, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        ServingConfig.from_args(args)
