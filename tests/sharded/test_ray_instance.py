"""RayModelInstance on a local Ray cluster (CPU, gloo): every plan of the issue against the
single-process model, selective loading per worker, and failure detection with rebuild.

Slow: every instance starts one Ray actor per worker (a fresh Python process importing torch).
"""
from __future__ import annotations

import os
import signal
import time

import pytest
import torch

from minimax_m1.engine.instance import InProcessModelInstance, InstanceDeadError, StepRequest
from minimax_m1.model_shards.config import MiniMaxM1Config
from minimax_m1.model_shards.shard_plan import ShardPlan
from tests.sharded.conftest import NEW_TOKENS, reference_generation
from tests.sharded.drive import assert_same_generation, greedy, prefill_request
from tests.sharded.reads import expert_ranges, outside, total

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow

PLANS = [ShardPlan(1, 1), ShardPlan(1, 4), ShardPlan(2, 2), ShardPlan(2, 4), ShardPlan(4, 8),
         ShardPlan.colocated(2), ShardPlan.colocated(4)]


@pytest.fixture(scope="module")
def ray_cluster():
    # Logical CPUs: workers ask for 0.1 each, so the largest plan (12 workers) fits on 2 cores.
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def make_instance(ray_cluster, cache_shape):
    from minimax_m1.engine.sharded import RayModelInstance

    made = []

    def make(path, plan, **kwargs):
        made.append(RayModelInstance(path, plan, cache_shape, **kwargs))
        return made[-1]

    yield make
    for instance in made:
        instance.close()


def assert_expert_reads(path: str, plan: ShardPlan, logs) -> None:
    """Each expert rank read exactly its experts' bytes; no rank read another rank's experts."""
    config = MiniMaxM1Config.from_pretrained(path)
    every_expert = expert_ranges(path, range(config.num_local_experts))
    for rank, log in enumerate(logs):
        role = plan.role(rank)
        expert_reads = [r for r in log if not outside([r], every_expert)]
        if not role.has_experts:
            assert expert_reads == [], f"world rank {rank} ({role.kind}) read expert bytes"
            continue
        allowed = expert_ranges(path, plan.experts_of(role.ep_rank, config.num_local_experts))
        assert outside(expert_reads, allowed) == [], f"world rank {rank} read experts it does not own"
        assert total(expert_reads) == total(allowed)
        if role.kind == "expert":
            assert expert_reads == log  # nothing but its experts


@pytest.mark.parametrize("plan", PLANS, ids=str)
def test_plan_generates_like_the_single_process_model(plan, make_instance, release_ckpt, release_reference):
    instance = make_instance(release_ckpt, plan)
    assert_same_generation(greedy(instance.step, new_tokens=NEW_TOKENS), release_reference)
    assert_expert_reads(release_ckpt, plan, instance.read_logs())


def test_transformers_layout_with_routing_counts_and_thresholds(make_instance, transformers_ckpt, cache_shape):
    plan = ShardPlan(2, 4)
    instance = make_instance(transformers_ckpt, plan)
    assert_same_generation(greedy(instance.step, new_tokens=NEW_TOKENS), reference_generation(transformers_ckpt, cache_shape))
    assert_expert_reads(transformers_ckpt, plan, instance.read_logs())
    # A second prefill in other slots with dynamic routing and a routing log.
    local = InProcessModelInstance.from_pretrained(transformers_ckpt, cache_shape, device="cpu")
    prompts = [[7, 8, 9, 10], [11, 12]]
    request = prefill_request(prompts, NEW_TOKENS, collect_routing=True)
    request = StepRequest(**{**vars(request), "expert_thresholds": [0.0, float("nan")]})
    got, want = instance.step(request), local.step(request)
    torch.testing.assert_close(got.logits, want.logits, rtol=1e-4, atol=1e-6)
    assert got.expert_counts is not None and got.expert_counts.equal(want.expert_counts)
    # threshold 0 keeps one expert per token (4 tokens x 8 layers); NaN keeps the exact top-2
    assert got.expert_counts[0].sum() == 4 * 8 and got.expert_counts[1].sum() == 2 * 2 * 8


def test_killed_expert_worker_fails_the_step_then_rebuild_generates(make_instance, release_ckpt, release_reference):
    plan = ShardPlan(2, 2)
    instance = make_instance(release_ckpt, plan)
    victim = plan.expert_ranks[1]
    pids = instance.worker_pids()

    def kill_midway(step: int) -> None:
        if step == 1:
            os.kill(pids[victim], signal.SIGKILL)

    with pytest.raises(InstanceDeadError) as failed:
        greedy(instance.step, new_tokens=NEW_TOKENS, on_step=kill_midway)
    message = str(failed.value)
    assert "expert worker 1 (world rank 3)" in message and "call rebuild()" in message
    with pytest.raises(InstanceDeadError, match="expert worker 1"):  # stays dead until rebuilt
        instance.step(prefill_request([[1, 2]], NEW_TOKENS))
    with pytest.raises(InstanceDeadError):
        instance.check_health()

    instance.rebuild()  # same owner process, new world
    assert instance.generation == 2
    assert set(instance.worker_pids()).isdisjoint(pids)
    instance.check_health()
    assert_same_generation(greedy(instance.step, new_tokens=NEW_TOKENS), release_reference)


def test_hung_expert_worker_fails_by_the_collective_timeout(make_instance, release_ckpt, release_reference):
    plan = ShardPlan(1, 2)
    instance = make_instance(release_ckpt, plan, collective_timeout_s=5.0, step_timeout_s=600.0, health_timeout_s=3.0)
    victim = plan.expert_ranks[0]
    pid = instance.worker_pids()[victim]

    def stop_midway(step: int) -> None:
        # Serving, then alive but silent: no socket closes, only the timeout can tell. The victim
        # is stopped while it waits for the next step (given time to get back to its receive), so
        # the leader's step message lands and the MoE exchange is what times out. A worker stopped
        # before it posts that receive holds up the leader's control message instead, whose group
        # waits as long as the idle timeout: step_timeout_s is the backstop for that case.
        if step == 1:
            time.sleep(0.5)
            os.kill(pid, signal.SIGSTOP)

    try:
        with pytest.raises(InstanceDeadError) as failed:
            greedy(instance.step, new_tokens=NEW_TOKENS, on_step=stop_midway)
        message = str(failed.value)
        assert "unresponsive: expert worker 0 (world rank 1)" in message
        assert "step_timeout_s" not in message  # the collective timeout fired, not the step's
    finally:
        os.kill(pid, signal.SIGCONT)
    instance.rebuild()
    assert_same_generation(greedy(instance.step, new_tokens=NEW_TOKENS), release_reference)


def test_workers_in_a_given_placement_group(make_instance, release_ckpt, release_reference):
    """As inside a Ray Serve replica: bundle 0 is the replica's, the workers take the rest."""
    from ray.util import placement_group_table
    from ray.util.placement_group import placement_group, remove_placement_group

    plan = ShardPlan(1, 2)
    group = placement_group([{"CPU": 0.1}] + plan.bundles(use_gpu=False, cpus_per_worker=0.1), strategy=plan.strategy)
    ray.get(group.ready(), timeout=120)
    try:
        instance = make_instance(release_ckpt, plan, placement_group=group, first_bundle=1)
        assert_same_generation(greedy(instance.step, new_tokens=NEW_TOKENS), release_reference)
        instance.close()
        assert placement_group_table(group)["state"] == "CREATED"  # the instance left it in place
    finally:
        remove_placement_group(group)


def test_bad_plan_and_bad_shard_fail_with_one_line(make_instance, release_ckpt, tmp_path):
    import shutil

    from minimax_m1.model_shards.shard_plan import PlanError

    with pytest.raises(PlanError, match=r"tp=3 does not divide the 4 attention heads"):
        make_instance(release_ckpt, ShardPlan(3, 1))
    broken = tmp_path / "broken"
    shutil.copytree(release_ckpt, broken)
    victim = sorted(broken.glob("*.safetensors"))[-1]  # holds experts of the last layers
    victim.write_bytes(victim.read_bytes()[:-64])
    with pytest.raises(RuntimeError, match=rf"could not form model instance .*{victim.name} is truncated"):
        make_instance(str(broken), ShardPlan(1, 2))
    for _ in range(100):  # resources come back asynchronously once the group is removed
        if ray.available_resources().get("CPU", 0) >= 3.9:
            break
        time.sleep(0.1)
    assert ray.available_resources().get("CPU", 0) >= 3.9  # no worker or bundle left behind
