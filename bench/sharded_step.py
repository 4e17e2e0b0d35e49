"""Decode-step latency of each ShardPlan on a local Ray cluster against the single-process model,
and the bytes that cross the torch.distributed world per decode step.

    python bench/sharded_step.py [--plans 1x1,1x4,2x2,2x4,4x8,c2,c4] [--seqs 8] [--steps 20]
                                 [--results bench/RESULTS.md | --no-record]

Every run builds a tiny 32-expert checkpoint, measures the in-process baseline and each plan in
the same run, prints the latency ratio baseline / plan (as bench/RESULTS.md does: higher is
better for the plan) and adds its rows to this script's section of the results file. Expert-parallel payload bytes are compared
with the expected 2 x top-k x hidden x tokens x MoE layers x dtype size (each (token, expert)
pair's hidden state goes out once and comes back once). A colocated rank keeps the pairs routed to
its own experts off the wire, so it moves less than that. On CPU every worker is a process with
one torch thread, so the ratio mostly measures the per-layer collective latency of gloo.
"""
from __future__ import annotations

import argparse
import datetime
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SECTION = "## sharded_step.py"
END_MARKER = "<!-- end of sharded_step.py rows -->"
TABLE_HEADER = ("| date (UTC) | card | plan | workers | decode ms | baseline ms | ratio | EP bytes/step | expected | "
                "kept local | same tokens |\n|---|---|---|---|---|---|---|---|---|---|---|")


def parse_plans(text: str):
    from minimax_m1.model_shards.shard_plan import ShardPlan

    plans = []
    for item in text.split(","):
        item = item.strip()
        if item.startswith("c"):
            plans.append(ShardPlan.colocated(int(item[1:])))
        else:
            tp, ep = item.split("x")
            plans.append(ShardPlan(int(tp), int(ep)))
    return plans


def requests(seqs: int, prompt_len: int, steps: int, block_size: int):
    """A prefill of `seqs` prompts, then a decode request maker (token ids come from the caller)."""
    from minimax_m1.engine.instance import StepRequest

    per_seq = math.ceil((prompt_len + steps + 2) / block_size)
    tables = [[i * per_seq + j for j in range(per_seq)] for i in range(seqs)]
    prompts = [[(7 * i + 3 * j) % 250 + 3 for j in range(prompt_len)] for i in range(seqs)]
    prefill = StepRequest([t for p in prompts for t in p], [prompt_len] * seqs, [0] * seqs, list(range(seqs)), tables)

    def decode(tokens: list[int], step: int) -> StepRequest:
        return StepRequest(tokens, [1] * seqs, [prompt_len + step] * seqs, list(range(seqs)), tables)

    return prefill, decode, per_seq * seqs


def time_decode(step, prefill, decode, steps: int, warmup: int = 3):
    """Median seconds per decode step, and the logits of every step (greedy)."""
    logits = step(prefill).logits
    times, all_logits = [], [logits]
    for i in range(warmup + steps):
        tokens = logits.argmax(-1).tolist()
        start = time.perf_counter()
        logits = step(decode(tokens, i)).logits
        if i >= warmup:
            times.append(time.perf_counter() - start)
        all_logits.append(logits)
    return statistics.median(times), all_logits


def record(path: Path, rows: list[str]) -> None:
    """Add table lines to this script's section of the results file, creating the section if missing."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    if END_MARKER not in text:
        text = text.rstrip("\n") + f"\n\n{SECTION}\n\n{TABLE_HEADER}\n{END_MARKER}\n"
    text = text.replace(END_MARKER, "".join(r + "\n" for r in rows) + END_MARKER)
    path.write_text(text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--plans", default="1x1,1x4,2x2,2x4,4x8,c2,c4", help="TPxEP for disaggregated, cW for colocated")
    p.add_argument("--seqs", type=int, default=8, help="sequences decoded together")
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--steps", type=int, default=20, help="timed decode steps per plan")
    p.add_argument("--hidden", type=int, default=64, help="hidden size of the tiny model (expert size follows)")
    p.add_argument("--num-cpus", type=float, default=4, help="logical CPUs of the local Ray cluster")
    p.add_argument("--results", type=Path, default=RESULTS, help="the results file (default bench/RESULTS.md)")
    p.add_argument("--no-record", action="store_true", help="print only; do not add rows to the results file")
    args = p.parse_args(argv)

    import ray
    import torch

    from minimax_m1.engine.instance import CacheShape, InProcessModelInstance
    from minimax_m1.engine.sharded import RayModelInstance
    from minimax_m1.model_shards.tiny import make_checkpoint

    torch.set_num_threads(1)  # like each worker
    path = tempfile.mkdtemp(prefix="sharded_step_")
    config = make_checkpoint(path, seed=0, hidden_size=args.hidden, intermediate_size=args.hidden)
    block_size = 16
    prefill, decode, blocks = requests(args.seqs, args.prompt_len, args.steps + 3, block_size)
    shape = CacheShape(num_slots=args.seqs, num_blocks=blocks, block_size=block_size)

    base_s, base_logits = time_decode(InProcessModelInstance.from_pretrained(path, shape, device="cpu").step,
                                      prefill, decode, args.steps)
    layers, k, h, dtype_bytes = config.num_hidden_layers, config.num_experts_per_tok, config.hidden_size, 4
    expected = 2 * k * h * args.seqs * layers * dtype_bytes
    print(f"model: {layers} layers (all MoE), hidden {h}, {config.num_local_experts} experts top-{k}, fp32; "
          f"{args.seqs} sequences per decode step; median of {args.steps} steps")
    print(f"expected EP bytes per decode step = 2 x {k} x {h} x {args.seqs} x {layers} x {dtype_bytes} = {expected}")
    card = f"CPU x{os.cpu_count()}, gloo, torch {torch.__version__.split('+')[0]}"
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
    rows = []
    print(f"{'plan':<28}{'workers':>8}{'decode ms':>11}{'ratio':>8}{'EP bytes':>10}{'/expected':>10}"
          f"{'kept local':>11}{'counts':>8}{'TP bytes':>10}  same tokens")
    print(f"{'single process (baseline)':<28}{1:>8}{base_s * 1e3:>11.2f}{1.0:>8.2f}{0:>10}{'-':>10}{'-':>11}{'-':>8}{0:>10}  -")

    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        for plan in parse_plans(args.plans):
            instance = RayModelInstance(path, plan, shape)
            try:
                seconds, logits = time_decode(instance.step, prefill, decode, args.steps)
                same = all(torch.equal(a.argmax(-1), b.argmax(-1)) for a, b in zip(logits, base_logits))
                instance.reset_traffic()
                instance.step(decode(logits[-1].argmax(-1).tolist(), args.steps + 3))
                traffic = instance.traffic()
            finally:
                instance.close()
            ep_bytes = sum(t["dispatch_bytes"] + t["combine_bytes"] for t in traffic)
            kept = sum(t["self_bytes"] for t in traffic)
            counts = sum(t["count_bytes"] for t in traffic)
            tp_bytes = sum(t["tp_bytes"] for t in traffic)
            print(f"{str(plan):<28}{plan.world_size:>8}{seconds * 1e3:>11.2f}{base_s / seconds:>8.3f}{ep_bytes:>10}"
                  f"{ep_bytes / expected:>10.3f}{kept:>11}{counts:>8}{tp_bytes:>10}  {'yes' if same else 'NO'}",
                  flush=True)
            rows.append(f"| {stamp} | {card} | {plan} | {plan.world_size} | {seconds * 1e3:.2f} | {base_s * 1e3:.2f} | "
                        f"{base_s / seconds:.3f} | {ep_bytes} | {expected} | {kept} | {'yes' if same else 'NO'} |")
    finally:
        ray.shutdown()
    print("ratio = baseline decode ms / plan decode ms (higher is better for the plan)")
    if not args.no_record:
        record(args.results, rows)
        print(f"rows added to {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
