"""Tiny random checkpoints with a byte-level tokenizer, for tests and demos (no model hub here)."""
from __future__ import annotations

import json
import os

from minimax_m1.model_shards.config import MiniMaxM1Config
from minimax_m1.model_shards.tokenizer import EOS_TOKEN

THINK_START, THINK_END = "<think>", "</think>"
SPECIAL_TOKENS = (EOS_TOKEN, THINK_START, THINK_END)


def write_byte_tokenizer(path: str, merges_corpus: list[str] | None = None, vocab_size: int = 256 + len(SPECIAL_TOKENS)) -> str:
    """A byte-level BPE tokenizer.json: the 256 byte symbols, optional trained merges, specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(merges_corpus or [""], trainer=trainer)
    file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
    tok.save(file)
    return file


def tiny_config(vocab_size: int, **overrides) -> MiniMaxM1Config:
    """The M1 layer pattern at toy size: 7 lightning layers then 1 softmax, 32 experts, top-2."""
    base = dict(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=64, num_hidden_layers=8,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, attn_types=(0, 0, 0, 0, 0, 0, 0, 1),
        num_local_experts=32, num_experts_per_tok=2, rotary_dim=8, rope_theta=10000.0, block_size=16,
        postnorm=True, linear_attn_alpha=(2 * 8) ** 0.25, full_attn_alpha=(2 * 8) ** 0.25, mlp_alpha=(2 * 8) ** 0.25,
        max_position_embeddings=1 << 20, eos_token_id=(0,), pad_token_id=0,
        think_start_token_id=1, think_end_token_id=2,
    )
    base.update(overrides)
    return MiniMaxM1Config(**base)


def make_checkpoint(out_dir: str, layout: str = "release", seed: int = 0, dtype: str = "float32",
                    max_shard_bytes: int | None = None, **config_overrides) -> MiniMaxM1Config:
    """Write config.json, tokenizer.json and random weights to out_dir. Returns the config."""
    import torch

    from minimax_m1.model_shards.model import build_random_model

    os.makedirs(out_dir, exist_ok=True)
    tok_file = write_byte_tokenizer(out_dir)
    with open(tok_file) as f:
        vocab = json.load(f)["model"]["vocab"]
    ids = {t: vocab[t] for t in SPECIAL_TOKENS}
    config_overrides.setdefault("vocab_size", len(vocab))
    config_overrides.setdefault("eos_token_id", (ids[EOS_TOKEN],))
    config_overrides.setdefault("pad_token_id", ids[EOS_TOKEN])
    config_overrides.setdefault("think_start_token_id", ids[THINK_START])
    config_overrides.setdefault("think_end_token_id", ids[THINK_END])
    if layout == "transformers":
        config_overrides.setdefault("rotary_dim", None)  # transformers' layout has no partial rotary
    config = tiny_config(**config_overrides)
    model = build_random_model(config, seed=seed)
    model.save_pretrained(out_dir, layout=layout, dtype=getattr(torch, dtype), max_shard_bytes=max_shard_bytes)
    return config
