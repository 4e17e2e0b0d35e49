"""RayModelInstance: a ModelInstance whose workers are Ray actors forming one torch.distributed world.

    plan = ShardPlan(tp=2, ep=4)
    instance = RayModelInstance(path, plan, CacheShape(num_slots=64, num_blocks=4096, block_size=16))
    result = instance.step(request)          # one Ray call to the attention leader
    ...
    instance.rebuild()                        # after InstanceDeadError

Start-up: a placement group with one bundle per worker (ShardPlan.bundles / strategy), the
workers as actors in world-rank order, a rendezvous at a TCP port the leader picks (its node IP),
`join` on every worker (init_process_group with tcp:// and a timeout), `load` of each worker's
shard, then the persistent `serve` loop on every rank but the leader.

Failure detection (see docs/sharding.md for the bounds):
- before each step, the `serve` calls of the non-leaders are polled: a worker whose process died
  ends its call with an actor error, seen at once;
- during a step, a peer that dies closes its sockets, and the collectives of the others fail as
  soon as they touch it; a peer that hangs makes them fail after `collective_timeout_s`; the Ray
  call to the leader is itself bounded by `step_timeout_s`;
- between steps, `check_health()` pings every worker with `health_timeout_s`.
Any of these marks the instance dead: the step raises InstanceDeadError naming the worker, and so
does every later step until `rebuild()`, which kills every worker (survivors may be stuck in a
collective and their cache is partly updated), removes the placement group and starts again.
Sequences in flight lose their state: the engine must prefill them again.
"""
from __future__ import annotations

import logging
import os
import re
import time

from minimax_m1.engine.instance import CacheShape, InstanceDeadError, ModelInstance, StepRequest, StepResult
from minimax_m1.model_shards.config import MiniMaxM1Config
from minimax_m1.model_shards.shard_plan import ShardPlan

log = logging.getLogger(__name__)


class RayModelInstance(ModelInstance):
    def __init__(self, model_path: str | os.PathLike, plan: ShardPlan, cache_shape: CacheShape, *,
                 dtype: str | None = None, use_gpu: bool | None = None, cpus_per_worker: float = 0.1,
                 collective_timeout_s: float = 30.0, step_timeout_s: float = 120.0, health_timeout_s: float = 5.0,
                 start_timeout_s: float = 300.0, placement_group=None, first_bundle: int = 0):
        """`placement_group`: run the workers in bundles first_bundle.. of an existing group (a Ray
        Serve replica's, declared as `placement_group_bundles=[replica] + plan.bundles(...)` with
        `placement_group_strategy=plan.strategy`); the instance then never creates or removes one.
        By default it creates its own from `plan.bundles` / `plan.strategy`."""
        import ray

        if not ray.is_initialized():
            raise RuntimeError("RayModelInstance needs a Ray cluster: call ray.init() (or run inside Ray Serve) first")
        self.model_path = os.fspath(model_path)
        self.config = MiniMaxM1Config.from_pretrained(self.model_path)
        plan.validate(self.config)
        self.plan = plan
        self.cache_shape = cache_shape
        self.use_gpu = bool(ray.cluster_resources().get("GPU", 0)) if use_gpu is None else use_gpu
        self.dtype = dtype or ("bfloat16" if self.use_gpu else "float32")
        self.cpus_per_worker = cpus_per_worker
        self.collective_timeout_s = collective_timeout_s
        self.step_timeout_s = step_timeout_s
        self.health_timeout_s = health_timeout_s
        self.start_timeout_s = start_timeout_s
        self.workers: list = []  # actor handles in world-rank order
        self._serving: dict = {}  # ObjectRef of each non-leader's serve() -> rank
        self._pg = None
        self._external_pg = placement_group
        self._first_bundle = first_bundle if placement_group is not None else 0
        self._dead: str | None = None
        self.generation = 0  # how many times the world was formed
        self._start()

    # ---- lifecycle -------------------------------------------------------------------------------
    def _start(self) -> None:
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from minimax_m1.engine.workers import WorkerSpec, worker_class

        plan = self.plan
        started = time.monotonic()
        self._pg = self._external_pg
        if self._pg is None:
            self._pg = placement_group(plan.bundles(self.use_gpu, self.cpus_per_worker), strategy=plan.strategy)
        try:
            ray.get(self._pg.ready(), timeout=self.start_timeout_s)
        except ray.exceptions.GetTimeoutError:
            self._teardown()
            raise RuntimeError(f"placement group for {plan} ({plan.world_size} bundles of "
                               f"{plan.bundles(self.use_gpu, self.cpus_per_worker)[0]}) was not placed within "
                               f"{self.start_timeout_s:.0f}s: the cluster lacks the resources") from None
        try:
            for rank in range(plan.world_size):
                spec = WorkerSpec(self.model_path, plan, rank, self.cache_shape, self.dtype, self.use_gpu,
                                  self.collective_timeout_s)
                actor = ray.remote(worker_class(plan, rank)).options(
                    num_cpus=self.cpus_per_worker, num_gpus=1 if self.use_gpu else 0, max_concurrency=2,
                    max_restarts=0,
                    scheduling_strategy=PlacementGroupSchedulingStrategy(
                        self._pg, placement_group_bundle_index=self._first_bundle + rank),
                ).remote(spec)
                self.workers.append(actor)
            host, port = ray.get(self.workers[0].address.remote(), timeout=self.start_timeout_s)
            ray.get([w.join.remote(host, port) for w in self.workers], timeout=self.start_timeout_s)
            ray.get([w.load.remote() for w in self.workers], timeout=self.start_timeout_s)
            self._serving = {w.serve.remote(): rank for rank, w in enumerate(self.workers) if rank != 0}
        except ray.exceptions.RayError as exc:  # a worker could not start, join or load its shard
            self._teardown()
            raise RuntimeError(f"could not form model instance {plan}: {_first_line(exc)}") from exc
        except BaseException:
            self._teardown()
            raise
        self._dead = None
        self.generation += 1
        log.info("model instance %s formed (world %d) in %.1fs", plan, plan.world_size, time.monotonic() - started)

    def _teardown(self) -> None:
        import ray
        from ray.util.placement_group import remove_placement_group

        for w in self.workers:
            try:
                ray.kill(w, no_restart=True)
            except Exception:  # already gone
                pass
        self.workers, self._serving = [], {}
        if self._pg is not None and self._pg is not self._external_pg:
            try:
                remove_placement_group(self._pg)
            except Exception:
                pass
            self._pg = None

    def rebuild(self) -> None:
        """Kill every worker, then form a new world and reload the shards (same process)."""
        self._teardown()
        self._start()

    def close(self) -> None:
        import ray

        if self.workers and self._dead is None:
            try:  # let the loops end cleanly; the kill below covers a stuck world
                ray.get(self.workers[0].stop.remote(), timeout=self.health_timeout_s)
                ray.wait(list(self._serving), num_returns=len(self._serving), timeout=self.health_timeout_s)
            except Exception:
                pass
        self._dead = "the model instance was closed"
        self._teardown()

    # ---- steps ----------------------------------------------------------------------------------------
    def step(self, request: StepRequest) -> StepResult:
        import ray

        if self._dead is not None:
            raise InstanceDeadError(self._dead)
        if not self.workers:
            raise InstanceDeadError("the model instance has no workers: call rebuild()")
        self._poll_loops()
        ref = self.workers[0].step.remote(request)
        # Wait for the step or for any non-leader's loop to end (it only ends when its worker died
        # or its world broke), so a lost worker is seen as soon as Ray sees its process exit.
        done, _ = ray.wait([ref, *self._serving], num_returns=1, timeout=self.step_timeout_s)
        if not done:
            raise self._die(f"step did not finish within step_timeout_s={self.step_timeout_s:.0f}s")
        if done[0] != ref:
            self._poll_loops()
        try:
            return ray.get(ref)
        except ray.exceptions.RayError as exc:
            raise self._die(f"step failed: {_first_line(exc)}") from None

    def check_health(self) -> None:
        """Raise InstanceDeadError unless every worker answers within health_timeout_s and the
        leader can still send a message through the world. Call it between steps; it also keeps
        idle non-leaders within their idle timeout (a day)."""
        import ray

        if self._dead is not None:
            raise InstanceDeadError(self._dead)
        self._poll_loops()
        lost = self._unresponsive()
        if lost:
            raise self._die(f"{lost} did not answer a health check")
        try:
            ray.get(self.workers[0].heartbeat.remote(), timeout=self.health_timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise self._die(f"the leader could not send a heartbeat within {self.health_timeout_s:.0f}s") from None
        except ray.exceptions.RayError as exc:
            raise self._die(f"heartbeat failed: {_first_line(exc)}") from None

    def _poll_loops(self) -> None:
        """A non-leader's serve() only returns when its worker died or its world broke."""
        import ray

        if not self._serving:
            return
        done, _ = ray.wait(list(self._serving), num_returns=1, timeout=0)
        if done:
            rank = self._serving[done[0]]
            try:
                ray.get(done[0])
                raise self._die(f"{self._describe(rank)} left the world unexpectedly")
            except ray.exceptions.RayActorError:
                raise self._die(f"{self._describe(rank)} stopped: its process died", name_lost=False) from None
            except ray.exceptions.RayError as exc:  # its collectives failed: a peer died or hung
                raise self._die(f"{self._describe(rank)} stopped: {_first_line(exc)}") from None

    def _unresponsive(self) -> str | None:
        import ray

        pings = [w.ping.remote() for w in self.workers]
        lost = []
        deadline = time.monotonic() + self.health_timeout_s
        for rank, ref in enumerate(pings):
            try:
                ray.get(ref, timeout=max(0.0, deadline - time.monotonic()))
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                lost.append(self._describe(rank))
        return ", ".join(lost) or None

    def _die(self, what: str, name_lost: bool = True) -> InstanceDeadError:
        """Mark the instance dead; unless `what` names the worker, ask a health check which one."""
        lost = self._unresponsive() if name_lost else None
        cause = f" (unresponsive: {lost})" if lost else ""
        self._dead = (f"model instance {self.plan} is dead{cause}: {what}. In-flight steps failed and their "
                      f"sequences' state is gone; call rebuild()")
        log.error(self._dead)
        return InstanceDeadError(self._dead)

    def _describe(self, rank: int) -> str:
        role = self.plan.role(rank)
        if role.kind == "expert":
            return f"expert worker {role.ep_rank} (world rank {rank})"
        return f"{role.kind} worker {role.tp_rank} (world rank {rank})"

    # ---- observability -------------------------------------------------------------------------------
    def traffic(self) -> list[dict]:
        """Per rank, the bytes it put on the world (see workers.Traffic)."""
        import ray

        return ray.get([w.traffic.remote() for w in self.workers], timeout=self.health_timeout_s)

    def reset_traffic(self) -> None:
        import ray

        ray.get([w.reset_traffic.remote() for w in self.workers], timeout=self.health_timeout_s)

    def read_logs(self) -> list[list[tuple[str, int, int]]]:
        """Per rank, the checkpoint byte ranges its worker read while loading."""
        import ray

        return ray.get([w.read_log.remote() for w in self.workers], timeout=self.health_timeout_s)

    def worker_pids(self) -> list[int]:
        import ray

        return [p["pid"] for p in ray.get([w.ping.remote() for w in self.workers], timeout=self.health_timeout_s)]


def _first_line(exc: BaseException) -> str:
    """Ray wraps worker errors in long tracebacks and advice; keep the cause's first sentence."""
    import ray

    if isinstance(exc, ray.exceptions.RayActorError):
        return "its process died"
    cause = getattr(exc, "cause", None)
    text = str(cause) if cause is not None else str(exc)
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    line = lines[-1] if lines else exc.__class__.__name__
    line = re.sub(r"^\[[^\]]*\]\s*", "", line)  # gloo's "[.../pair.cc:545] " source location
    return line.split(". ")[0]


__all__ = ["RayModelInstance"]
