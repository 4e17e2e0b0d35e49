"""CLI: make-checkpoint and local-generate, run as a user would."""
import os
import subprocess
import sys

MINIMAX = [sys.executable, "-m", "minimax_m1.cli.main"]


def test_make_checkpoint_then_generate(tmp_path):
    out = subprocess.run(MINIMAX + ["make-checkpoint", str(tmp_path / "ck"), "--layout", "transformers", "--seed", "3"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "layout transformers" in out.stdout
    assert {"config.json", "tokenizer.json", "model.safetensors"} <= set(os.listdir(tmp_path / "ck"))
    gen = subprocess.run(MINIMAX + ["local-generate", "Hello", "--model", str(tmp_path / "ck"), "--max-new-tokens", "5"],
                         capture_output=True, text=True)
    assert gen.returncode == 0 and gen.stdout.startswith("Hello")


def test_bad_model_path_is_one_line_error(tmp_path):
    out = subprocess.run(MINIMAX + ["local-generate", "x", "--model", str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == f"error: no tokenizer.json at {tmp_path}/tokenizer.json"
    assert "Traceback" not in out.stderr


def test_help_lists_commands():
    out = subprocess.run(MINIMAX + ["--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "make-checkpoint" in out.stdout
    assert subprocess.run(MINIMAX, capture_output=True, text=True).returncode == 2
