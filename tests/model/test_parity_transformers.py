"""Logits and greedy continuations match transformers' MiniMaxForCausalLM on random tiny configs."""
import pytest
import torch

from minimax_m1 import MiniMaxM1ForCausalLM
from minimax_m1.model_shards.config import MiniMaxM1Config

from tests.model.hf_oracle import hf_model, rel_err

BASE = dict(vocab_size=131, hidden_size=48, intermediate_size=24, num_local_experts=32, num_experts_per_tok=2,
            rope_theta=10000.0, rms_norm_eps=1e-5, eos_token_id=(), max_position_embeddings=4096)
CASES = {
    # name: (layer pattern, heads, kv heads, head_dim, block size, prompt length, DeepNorm factors)
    "m1_pattern_gqa2": ((0, 0, 0, 1), 4, 2, 16, 5, 23, (1.7, 0.9, 1.3)),
    "alternating_mqa": ((1, 0, 1, 0), 8, 1, 8, 7, 19, (1.0, 1.0, 1.0)),
    "lightning_first_mha": ((0, 1, 0, 0, 1), 2, 2, 24, 4, 17, (2.1, 1.0, 0.8)),
    "softmax_only_gqa4": ((1, 1), 8, 2, 8, 3, 11, (1.2, 1.1, 1.0)),
}


def _config(pattern, heads, kv, head_dim, block, factors) -> MiniMaxM1Config:
    a, b, m = factors
    return MiniMaxM1Config(num_hidden_layers=len(pattern), attn_types=pattern, num_attention_heads=heads,
                           num_key_value_heads=kv, head_dim=head_dim, block_size=block, linear_attn_alpha=a,
                           full_attn_alpha=a, linear_attn_beta=b, mlp_alpha=m, **BASE)


@pytest.mark.parametrize("name", sorted(CASES))
def test_logits_and_greedy_match_transformers(name, tmp_path):
    pattern, heads, kv, head_dim, block, length, factors = CASES[name]
    assert length % block != 0, "the prompt must not be a multiple of the block size"
    config = _config(pattern, heads, kv, head_dim, block, factors)
    hf = hf_model(config, seed=len(name))
    hf.save_pretrained(tmp_path / "hf")
    ours = MiniMaxM1ForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32, device="cpu")
    ids = torch.randint(0, config.vocab_size, (2, length), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(ids).logits
    got = ours(ids).logits
    assert rel_err(got, expected) < 1e-4

    with torch.no_grad():
        hf_tokens = hf.generate(ids[:1], max_new_tokens=24, do_sample=False, eos_token_id=None, pad_token_id=0)
    our_tokens = ours.generate(input_ids=ids[:1], max_new_tokens=24)
    assert our_tokens.tolist() == hf_tokens.tolist()

    # The same weights saved in the release layout, and in transformers' fused layout, load to the same logits.
    for layout in ("release", "transformers"):
        ours.save_pretrained(tmp_path / layout, layout=layout)
        again = MiniMaxM1ForCausalLM.from_pretrained(tmp_path / layout, dtype=torch.float32, device="cpu")
        assert torch.equal(again(ids).logits, got), layout


def test_release_and_transformers_configs_describe_the_same_model(tmp_path):
    config = _config((0, 0, 0, 1), 4, 2, 16, 5, (1.5, 1.0, 1.5))
    assert MiniMaxM1Config.from_dict(config.to_transformers_dict()).replace(source_layout="release", extra={}) == config.replace(rotary_dim=None)
    assert MiniMaxM1Config.from_dict(config.to_release_dict()).replace(extra={}) == config.replace(rotary_dim=16)
