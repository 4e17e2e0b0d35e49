"""`minimax-m1 make-checkpoint DIR`: a tiny random checkpoint with a tokenizer.json."""
from __future__ import annotations

import argparse

from minimax_m1.cli.common import CliError, progress


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", help="output folder (created)")
    p.add_argument("--layout", choices=["release", "transformers"], default="release",
                   help="weight/config layout: the original release (per-expert w1/w2/w3) or transformers (fused experts)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="stored dtype (default float32)")
    p.add_argument("--layers", type=int, default=8, help="number of layers; every 8th is softmax (default 8)")
    p.add_argument("--shard-bytes", type=int, default=None, help="split into shards of at most this many bytes, with an index json")


def run(args: argparse.Namespace) -> int:
    from minimax_m1.model_shards.tiny import make_checkpoint

    if args.layers <= 0:
        raise CliError("--layers must be >= 1", exit_code=2)
    types = tuple(1 if (i + 1) % 8 == 0 else 0 for i in range(args.layers))
    progress(f"writing a tiny {args.layout}-layout checkpoint to {args.dir} ...")
    config = make_checkpoint(args.dir, layout=args.layout, seed=args.seed, dtype=args.dtype,
                             max_shard_bytes=args.shard_bytes, num_hidden_layers=args.layers, attn_types=types)
    print(f"wrote {args.dir}: {config.num_hidden_layers} layers, {config.num_local_experts} experts, "
          f"vocab {config.vocab_size}, {args.dtype}, layout {args.layout}")
    return 0
