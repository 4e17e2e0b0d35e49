"""Checkpoint loading: both layouts, shards with an index, selective reads, one-line errors."""
import json
import os
import struct

import pytest
import torch

from minimax_m1 import MiniMaxM1ForCausalLM
from minimax_m1.model_shards.checkpoint import CheckpointError, SafetensorsCheckpoint
from minimax_m1.model_shards.config import ConfigError
from minimax_m1.model_shards.layers import LocalExperts
from minimax_m1.model_shards.tiny import make_checkpoint
from minimax_m1.model_shards.weights import load_into


@pytest.fixture(scope="module")
def release_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("release")
    make_checkpoint(str(d), layout="release", seed=1)
    return d


def _copy(src, dst):
    os.makedirs(dst, exist_ok=True)
    for f in os.listdir(src):
        with open(os.path.join(src, f), "rb") as a, open(os.path.join(dst, f), "wb") as b:
            b.write(a.read())
    return dst


@pytest.mark.parametrize("layout", ["release", "transformers"])
@pytest.mark.parametrize("sharded", [False, True])
def test_layouts_and_shards_load_to_the_same_model(tmp_path, release_dir, layout, sharded):
    reference = MiniMaxM1ForCausalLM.from_pretrained(release_dir, device="cpu")
    out = tmp_path / "ckpt"
    reference.save_pretrained(out, layout=layout, max_shard_bytes=200_000 if sharded else None)
    assert os.path.exists(out / "model.safetensors.index.json") == sharded
    loaded = MiniMaxM1ForCausalLM.from_pretrained(out, device="cpu")
    ids = torch.randint(0, 200, (1, 10))
    assert torch.equal(loaded(ids).logits, reference(ids).logits)


def test_bf16_checkpoint_loads_as_stored_and_computes_in_fp32(tmp_path):
    make_checkpoint(str(tmp_path), dtype="bfloat16", seed=2)
    with SafetensorsCheckpoint(tmp_path) as ckpt:
        assert ckpt.entry("model.embed_tokens.weight").dtype == torch.bfloat16
    model = MiniMaxM1ForCausalLM.from_pretrained(tmp_path, device="cpu")
    assert model.dtype == torch.float32 and model.lm_head.weight.dtype == torch.float32
    bf16 = MiniMaxM1ForCausalLM.from_pretrained(tmp_path, device="cpu", dtype="bfloat16")
    assert bf16.dtype == torch.bfloat16 and bf16.lm_head.weight.dtype == torch.float32
    ids = torch.randint(0, 200, (1, 6))
    assert bf16(ids).logits.dtype == torch.float32


@pytest.mark.parametrize("layout", ["release", "transformers"])
def test_loading_a_subset_of_experts_reads_only_those_bytes(tmp_path, layout):
    d = tmp_path / layout
    config = make_checkpoint(str(d), layout=layout, seed=4, max_shard_bytes=300_000)
    first, count = 8, 8  # experts 8..15 of every layer, as an EP rank of ep=4 holds them
    shard = torch.nn.ModuleDict({f"l{i}": LocalExperts(count, config.hidden_size, config.intermediate_size, first)
                                 for i in range(config.num_hidden_layers)})
    # give the parameters the model's names: model.layers.N.block_sparse_moe.experts.{w13,w2}
    root = torch.nn.Module()
    root.model = torch.nn.Module()
    root.model.layers = torch.nn.ModuleList()
    for i in range(config.num_hidden_layers):
        layer = torch.nn.Module()
        layer.block_sparse_moe = torch.nn.Module()
        layer.block_sparse_moe.experts = shard[f"l{i}"]
        root.model.layers.append(layer)
    with SafetensorsCheckpoint(d) as ckpt:
        load_into(root, ckpt, config, strict_names=False)
        expected = []
        for i in range(config.num_hidden_layers):
            for e in range(first, first + count):
                if layout == "release":
                    names = [f"model.layers.{i}.block_sparse_moe.experts.{e}.{w}.weight" for w in ("w1", "w3", "w2")]
                    expected += [(ckpt.entry(n).file, ckpt.entry(n).begin, ckpt.entry(n).end) for n in names]
            if layout == "transformers":
                for n in (f"model.layers.{i}.mlp.experts.gate_up_proj", f"model.layers.{i}.mlp.experts.down_proj"):
                    ent = ckpt.entry(n)
                    row = ent.nbytes // config.num_local_experts
                    expected.append((ent.file, ent.begin + first * row, ent.begin + (first + count) * row))
        got = sorted((r.file, r.begin, r.end) for r in ckpt.reads)
        assert got == sorted(expected)
        total = sum(os.path.getsize(d / f) for f in os.listdir(d) if f.endswith(".safetensors"))
        assert ckpt.bytes_read == sum(e - b for _, b, e in expected) < total / 3
        # only the files holding those experts were mapped
        assert set(ckpt._maps) == {f for f, _, _ in expected}
    # values are the right experts: compare with a full load
    full = MiniMaxM1ForCausalLM.from_pretrained(d, device="cpu")
    assert torch.equal(shard["l3"].w13, full.model.layers[3].block_sparse_moe.experts.w13[first:first + count])
    assert torch.equal(shard["l3"].w2, full.model.layers[3].block_sparse_moe.experts.w2[first:first + count])


def _rewrite_header(path, mutate):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        rest = f.read()
    mutate(header)
    raw = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + rest)


def _rename(header, old, new):
    header[new] = header.pop(old)


BAD = {
    "missing tensor": (lambda h: h.pop("model.layers.2.self_attn.out_proj.weight"), "missing tensor 'model.layers.2.self_attn.out_proj.weight'"),
    "unexpected tensor": (lambda h: _rename(h, "model.norm.weight", "model.extra_norm.weight"), "missing tensor 'model.norm.weight'"),
    "wrong shape": (lambda h: h["model.norm.weight"].update(shape=[8, 8], data_offsets=[h["model.norm.weight"]["data_offsets"][0], h["model.norm.weight"]["data_offsets"][0] + 256]),
                    "tensor 'model.norm.weight' has shape [8, 8], expected [64]"),
    "bad dtype size": (lambda h: h["lm_head.weight"].update(shape=[3]), "is corrupt: tensor 'lm_head.weight' has"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_checkpoint_gives_one_clear_line(tmp_path, release_dir, case):
    mutate, message = BAD[case]
    d = _copy(release_dir, tmp_path / "bad")
    _rewrite_header(os.path.join(d, "model.safetensors"), mutate)
    with pytest.raises(CheckpointError) as err:
        MiniMaxM1ForCausalLM.from_pretrained(d, device="cpu")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_unexpected_extra_tensor_is_named(tmp_path, release_dir):
    d = _copy(release_dir, tmp_path / "extra")
    _rewrite_header(os.path.join(d, "model.safetensors"), lambda h: h.__setitem__("model.surprise", dict(h["model.norm.weight"])))
    with pytest.raises(CheckpointError, match=r"^unexpected tensor 'model.surprise' in checkpoint"):
        MiniMaxM1ForCausalLM.from_pretrained(d, device="cpu")


def test_corrupt_and_truncated_files(tmp_path, release_dir):
    d = _copy(release_dir, tmp_path / "trunc")
    path = os.path.join(d, "model.safetensors")
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size - 100)
    with pytest.raises(CheckpointError, match=r"model.safetensors is truncated: tensor '.*' needs bytes up to \d+, the file has \d+$"):
        MiniMaxM1ForCausalLM.from_pretrained(d, device="cpu")
    with open(path, "wb") as f:
        f.write(b"garbage!" * 3)
    with pytest.raises(CheckpointError, match="model.safetensors is corrupt"):
        MiniMaxM1ForCausalLM.from_pretrained(d, device="cpu")


def test_missing_shard_file_and_config_errors(tmp_path, release_dir):
    model = MiniMaxM1ForCausalLM.from_pretrained(release_dir, device="cpu")
    d = tmp_path / "sharded"
    model.save_pretrained(d, max_shard_bytes=200_000)
    victim = sorted(f for f in os.listdir(d) if f.endswith(".safetensors"))[1]
    os.remove(d / victim)
    with pytest.raises(CheckpointError, match=f"checkpoint file {victim} listed in model.safetensors.index.json is missing"):
        MiniMaxM1ForCausalLM.from_pretrained(d, device="cpu")
    cfg = json.loads((d / "config.json").read_text())
    cfg["attn_type_list"] = cfg["attn_type_list"][:-1]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="'attn_types' .* has 7 entries, expected num_hidden_layers=8"):
        MiniMaxM1ForCausalLM.from_pretrained(d, device="cpu")
    with pytest.raises(ConfigError, match="no config.json"):
        MiniMaxM1ForCausalLM.from_pretrained(tmp_path / "nowhere", device="cpu")
