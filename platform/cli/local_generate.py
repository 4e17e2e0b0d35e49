"""`minimax-m1 local-generate`: the seed's script as a command; generation in this process."""
from __future__ import annotations

import argparse
import sys

from minimax_m1.cli.common import CliError, progress


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", help="input text")
    p.add_argument("--model", default=None, help="checkpoint folder (default: the built-in demo model)")
    p.add_argument("--max-new-tokens", type=int, default=100)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=None)


def run(args: argparse.Namespace) -> int:
    from minimax_m1.model_shards.checkpoint import CheckpointError
    from minimax_m1.model_shards.config import ConfigError
    from minimax_m1.model_shards.demo import default_model_path
    from minimax_m1 import MiniMaxM1ForCausalLM, MiniMaxM1Tokenizer

    path = args.model or default_model_path()
    progress(f"loading {path} ...")
    try:
        tokenizer = MiniMaxM1Tokenizer.from_pretrained(path)
        model = MiniMaxM1ForCausalLM.from_pretrained(path)
    except (CheckpointError, ConfigError) as exc:
        raise CliError(str(exc)) from None
    inputs = tokenizer(args.prompt, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=args.temperature > 0,
                         temperature=args.temperature or 1.0, top_p=args.top_p, top_k=args.top_k, seed=args.seed)
    sys.stdout.write(tokenizer.decode(out[0]) + "\n")
    return 0
