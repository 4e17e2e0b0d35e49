"""`minimax-m1 plan`: will a ShardPlan fit a model on GPUs of a given memory size?

    minimax-m1 plan --model /models/MiniMax-M1 --tp 2 --ep 16 --gpu-memory 80GiB

Prints, per worker kind, the weight bytes per GPU, the memory left for state/KV, how many
sequences of --context tokens that holds, and whether the plan fits. Exit status 0 when it fits,
1 when it does not, 2 for a plan the model cannot take (the message says what to change).
"""
from __future__ import annotations

import argparse
import sys

from minimax_m1.cli.common import EXIT_ERROR, EXIT_USAGE, CliError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="checkpoint folder or config.json path")
    p.add_argument("--tp", type=int, default=1, help="attention tensor-parallel ranks (default 1)")
    p.add_argument("--ep", type=int, default=1, help="expert-parallel ranks (default 1)")
    p.add_argument("--placement", choices=("disaggregated", "colocated"), default="disaggregated",
                   help="colocated puts attention rank r and expert rank r on one GPU (needs tp == ep)")
    p.add_argument("--gpu-memory", required=True, help="memory per GPU, e.g. 80GiB or 141GB")
    p.add_argument("--dtype", default="bfloat16", help="weight dtype (default bfloat16)")
    p.add_argument("--expert-dtype", default=None, help="expert weight dtype, e.g. int8 (default: --dtype)")
    p.add_argument("--context", type=int, default=131_072, help="tokens per sequence for the state budget (default 131072)")
    p.add_argument("--reserve", type=float, default=0.1,
                   help="fraction of each GPU kept for CUDA context, activations and slack (default 0.1)")


def run(args: argparse.Namespace) -> int:
    from minimax_m1.model_shards.config import ConfigError, MiniMaxM1Config
    from minimax_m1.model_shards.shard_plan import PlanError, ShardPlan, parse_bytes

    try:
        config = MiniMaxM1Config.from_pretrained(args.model)
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    try:
        plan = ShardPlan(args.tp, args.ep, args.placement)
        report = plan.capacity(config, parse_bytes(args.gpu_memory), dtype=args.dtype, expert_dtype=args.expert_dtype,
                               context_tokens=args.context, reserve_fraction=args.reserve)
    except PlanError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    sys.stdout.write(report.format() + "\n")
    return 0 if report.fits else EXIT_ERROR
