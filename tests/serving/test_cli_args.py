"""`minimax-m1 serve` arguments (no Ray started: these fail or are checked before it)."""
from __future__ import annotations

import argparse

from minimax_m1.cli.main import build_parser, main
from minimax_m1.cli.serve import DEFAULT_PORT, serving_args


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", *argv])


def test_embedded_default_is_the_demo_model_on_a_small_cpu_plan():
    args = parse()
    assert args.port == DEFAULT_PORT == 50051 and args.host == "127.0.0.1"
    cfg = serving_args(args)
    assert cfg["model"]["path"] == "" and (cfg["plan"]["tp"], cfg["plan"]["ep"]) == (1, 2)


def test_a_given_model_runs_in_process_unless_tp_or_ep_say_otherwise(tmp_path):
    assert (serving_args(parse("--model", str(tmp_path)))["plan"]["ep"]) == 1
    plan = serving_args(parse("--model", str(tmp_path), "--tp", "2", "--ep", "4"))["plan"]
    assert (plan["tp"], plan["ep"]) == (2, 4)


def test_bad_model_or_plan_is_a_usage_error_before_ray_starts(tmp_path, capsys):
    assert main(["serve", "--model", str(tmp_path / "missing")]) == 2
    assert "holds no config.json" in capsys.readouterr().err
    assert main(["serve", "--tp", "0"]) == 2
