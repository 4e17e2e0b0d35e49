"""Run a ShardPlan's workers as plain spawned processes (no Ray) over a real gloo world.

The leader (rank 0) drives a greedy generation and sends back its result; every rank sends back
the checkpoint byte ranges it read. Used by the fast tests; the Ray instance has its own tests.
"""
from __future__ import annotations

import socket
import traceback

import torch.multiprocessing as mp

from minimax_m1.model_shards.shard_plan import ShardPlan


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, plan, path, cache_shape, port, new_tokens, results):
    try:
        from minimax_m1.engine.workers import WorkerSpec, worker_class
        from tests.sharded.drive import greedy

        spec = WorkerSpec(path, plan, rank, cache_shape, collective_timeout_s=60.0)
        worker = worker_class(plan, rank)(spec)
        worker.join("127.0.0.1", port)
        worker.load()
        if rank == 0:
            generation = greedy(worker.step, new_tokens=new_tokens)
            worker.stop()
            results.put((rank, "ok", generation, worker.read_log(), worker.traffic()))
        else:
            worker.serve()
            results.put((rank, "ok", None, worker.read_log(), worker.traffic()))
        worker.leave()
    except Exception:  # report instead of hanging the parent
        results.put((rank, "error", traceback.format_exc(), None, None))


def run_world(plan: ShardPlan, path: str, cache_shape, new_tokens: int = 4, timeout_s: float = 240.0):
    """-> (leader's Generation, {rank: read log}, {rank: traffic})"""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, plan, path, cache_shape, port, new_tokens, results), daemon=True)
             for r in range(plan.world_size)]
    for p in procs:
        p.start()
    generation, reads, traffic = None, {}, {}
    try:
        for _ in procs:
            rank, status, payload, log, moved = results.get(timeout=timeout_s)
            if status == "error":
                raise AssertionError(f"rank {rank} failed:\n{payload}")
            if rank == 0:
                generation = payload
            reads[rank], traffic[rank] = log, moved
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    return generation, reads, traffic
