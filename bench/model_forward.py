"""Prefill and decode tokens/s of our single-process model against transformers' MiniMaxForCausalLM,
on the same checkpoint, in one run. Prints the ratios (ours / transformers).

    .venv/bin/python bench/model_forward.py [--hidden 256] [--prompt 512] [--new 64] [--threads 2]

The checkpoint is a random one in transformers' layout with full rotary (where the two agree).
Target (issue 2): decode at least 1.0x transformers.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--intermediate", type=int, default=256)
    ap.add_argument("--prompt", type=int, default=512, help="prompt tokens for the prefill measurement")
    ap.add_argument("--new", type=int, default=64, help="tokens to decode")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for both (default 1: the machines are shared)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import MiniMaxForCausalLM

    from minimax_m1 import MiniMaxM1ForCausalLM
    from minimax_m1.model_shards.tiny import make_checkpoint

    with tempfile.TemporaryDirectory() as path:
        config = make_checkpoint(path, layout="transformers", seed=0, hidden_size=args.hidden,
                                 intermediate_size=args.intermediate, num_attention_heads=8, num_key_value_heads=2,
                                 head_dim=args.hidden // 8, block_size=64, eos_token_id=())
        ours = MiniMaxM1ForCausalLM.from_pretrained(path, dtype=torch.float32, device="cpu")
        theirs = MiniMaxForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    print(f"model: {config.num_hidden_layers} layers (7 lightning : 1 softmax), hidden {config.hidden_size}, "
          f"{config.num_local_experts} experts top-{config.num_experts_per_tok}, vocab {config.vocab_size}; "
          f"{args.threads} threads, fp32 CPU")

    g = torch.Generator().manual_seed(0)
    long_prompt = torch.randint(0, config.vocab_size, (1, args.prompt), generator=g)
    short_prompt = torch.randint(0, config.vocab_size, (1, 32), generator=g)

    with torch.inference_mode():
        ours_out = ours.generate(input_ids=short_prompt, max_new_tokens=args.new)
        theirs_out = theirs.generate(short_prompt, max_new_tokens=args.new, do_sample=False, eos_token_id=None, pad_token_id=0)
        same = ours_out.tolist() == theirs_out.tolist()

        t_ours = best_of(lambda: ours(long_prompt), args.repeats)
        t_theirs = best_of(lambda: theirs(long_prompt), args.repeats)
        d_ours = best_of(lambda: ours.generate(input_ids=short_prompt, max_new_tokens=args.new), args.repeats)
        d_theirs = best_of(lambda: theirs.generate(short_prompt, max_new_tokens=args.new, do_sample=False,
                                                   eos_token_id=None, pad_token_id=0), args.repeats)
    # decode time = generate time minus one short prefill, measured separately
    p_ours = best_of(lambda: ours(short_prompt), args.repeats)
    p_theirs = best_of(lambda: theirs(short_prompt), args.repeats)
    dec_ours = args.new / max(d_ours - p_ours, 1e-9)
    dec_theirs = args.new / max(d_theirs - p_theirs, 1e-9)

    rows = [
        ("prefill tok/s", args.prompt / t_ours, args.prompt / t_theirs),
        ("decode tok/s", dec_ours, dec_theirs),
    ]
    print(f"greedy continuations identical: {same}")
    print(f"{'metric':<16}{'ours':>12}{'transformers':>14}{'ratio':>8}")
    for name, a, b in rows:
        print(f"{name:<16}{a:>12.1f}{b:>14.1f}{a / b:>7.2f}x")


if __name__ == "__main__":
    main()
