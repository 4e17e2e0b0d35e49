"""MiniMaxM1Config reads both layouts and names the field in every error."""
import json
import os

import pytest

from minimax_m1.model_shards.config import LIGHTNING, SOFTMAX, ConfigError, MiniMaxM1Config
from tests.conftest import SHARED_REFERENCE


def test_released_config_parses():
    path = os.path.join(SHARED_REFERENCE, "minimax-m1-config.json")
    if not os.path.exists(path):
        pytest.skip(f"reference data absent: {path} (only in the project's shared/ folder)")
    c = MiniMaxM1Config.from_pretrained(path)
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.head_dim) == (80, 6144, 64, 128)
    assert c.softmax_layers == list(range(7, 80, 8)) and len(c.lightning_layers) == 70
    assert (c.num_local_experts, c.num_experts_per_tok, c.intermediate_size) == (32, 2, 9216)
    assert c.rotary_dim_effective == 64 and c.rope_theta == 1e7 and c.postnorm
    assert c.mlp_alpha == pytest.approx((2 * 80) ** 0.25) and c.full_attn_beta == 1.0
    assert c.vocab_size == 200064 and not c.tie_word_embeddings


def test_transformers_layout_parses():
    raw = {"model_type": "minimax", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 4,
           "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 4,
           "layer_types": ["linear_attention", "full_attention"], "num_local_experts": 4,
           "rope_parameters": {"rope_theta": 5000.0, "rope_type": "default"}, "mlp_alpha_factor": 2.5,
           "block_size": 64, "eos_token_id": 2}
    c = MiniMaxM1Config.from_dict(raw)
    assert c.attn_types == (LIGHTNING, SOFTMAX) and c.rotary_dim_effective == 4 and c.rope_theta == 5000.0
    assert c.mlp_alpha == 2.5 and c.block_size == 64 and c.eos_token_id == (2,) and c.postnorm


BASE = {"model_type": "minimax_m1", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 4,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 4,
        "attn_type_list": [0, 1], "num_local_experts": 4, "rotary_dim": 2}


@pytest.mark.parametrize("change,field", [
    ({"num_key_value_heads": 3}, "'num_attention_heads' (4) must be divisible by 'num_key_value_heads' (3)"),
    ({"attn_type_list": [0, 1, 0]}, "'attn_types' (attn_type_list/layer_types) has 3 entries"),
    ({"attn_type_list": [0, 2]}, "'attn_types'[1] = 2 is not a known layer type"),
    ({"rotary_dim": 6}, "'rotary_dim' must be even and in (0, head_dim=4]"),
    ({"num_experts_per_tok": 5}, "'num_experts_per_tok' (5) exceeds 'num_local_experts' (4)"),
    ({"hidden_size": 0}, "'hidden_size' must be a positive integer"),
    ({"vocab_size": None}, "'vocab_size' is missing"),
    ({"model_type": "llama", "attn_type_list": None}, "'model_type' = 'llama'"),
    ({"hidden_act": "gelu"}, "'hidden_act' = 'gelu' is not supported"),
])
def test_errors_name_the_field(change, field):
    raw = dict(BASE, **change)
    raw = {k: v for k, v in raw.items() if v is not None or k == "vocab_size"}
    with pytest.raises(ConfigError) as err:
        MiniMaxM1Config.from_dict(raw)
    assert field in str(err.value)


def test_bad_json_file(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="is not valid JSON"):
        MiniMaxM1Config.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(BASE))
    assert MiniMaxM1Config.from_pretrained(tmp_path).num_hidden_layers == 2
