"""`minimax-m1 plan`: the capacity planner on the command line (released config and a tiny checkpoint)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from minimax_m1.cli.main import main
from tests.sharded.test_shard_plan import REFERENCE, needs_reference

RELEASE_CONFIG = str(REFERENCE / "minimax-m1-config.json")


@needs_reference
def test_release_on_h100_disaggregated_fits(capsys):
    code = main(["plan", "--model", RELEASE_CONFIG, "--tp", "2", "--ep", "16", "--gpu-memory", "80GiB"])
    out = capsys.readouterr().out
    assert code == 0
    assert "plan disaggregated(tp=2, ep=16): 18 GPUs of 80.0 GiB" in out
    lines = {line.split()[0]: line.split() for line in out.splitlines()[2:4]}
    assert lines["attention"][1] == "2" and lines["attention"][-1] == "yes"
    assert lines["expert"][1] == "16" and " ".join(lines["expert"][2:4]) == "50.6 GiB"
    assert out.rstrip().endswith("fits: yes")


@needs_reference
def test_release_colocated_on_eight_h100s_does_not_fit(capsys):
    code = main(["plan", "--model", RELEASE_CONFIG, "--tp", "8", "--ep", "8", "--placement", "colocated",
                 "--gpu-memory", "80GiB"])
    out = capsys.readouterr().out
    assert code == 1
    assert "colocated       8     108.5 GiB" in out and "fits: no" in out


@needs_reference
def test_bad_plan_is_a_one_line_usage_error(capsys):
    code = main(["plan", "--model", RELEASE_CONFIG, "--tp", "3", "--ep", "16", "--gpu-memory", "80GiB"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == "error: tp=3 does not divide the 64 attention heads: choose tp from [1, 2, 4, 8, 16, 32, 64]"


def test_tiny_checkpoint_folder_and_bad_memory(tmp_path, capsys):
    from minimax_m1.model_shards.tiny import tiny_config

    (tmp_path / "config.json").write_text(json.dumps(tiny_config(vocab_size=259).to_release_dict()))
    assert main(["plan", "--model", str(tmp_path), "--tp", "2", "--ep", "4", "--gpu-memory", "1GiB", "--dtype", "float32"]) == 0
    assert "plan disaggregated(tp=2, ep=4): 6 GPUs of 1.0 GiB" in capsys.readouterr().out
    assert main(["plan", "--model", str(tmp_path), "--gpu-memory", "lots"]) == 2
    assert "cannot read 'lots' as a memory size" in capsys.readouterr().err
    assert main(["plan", "--model", str(tmp_path / "missing"), "--gpu-memory", "1GiB"]) == 1
    assert "no config.json" in capsys.readouterr().err


def test_the_installed_command_runs(tmp_path):
    from minimax_m1.model_shards.tiny import tiny_config

    (tmp_path / "config.json").write_text(json.dumps(tiny_config(vocab_size=259).to_release_dict()))
    proc = subprocess.run([sys.executable, "-m", "minimax_m1.cli.main", "plan", "--model", str(tmp_path),
                           "--tp", "1", "--ep", "2", "--gpu-memory", "64KiB"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "fits: no" in proc.stdout
