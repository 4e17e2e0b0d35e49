"""The rollout commands' own logic, without a cluster: argument checks, the scale arithmetic, the
status text, and the one-line errors when helm or a kubeconfig is missing. (Against a control
plane: test_rollout.py.)"""
from __future__ import annotations

import argparse

import pytest

from minimax_m1.cli import scale
from minimax_m1.cli.common import EXIT_UNAVAILABLE, EXIT_USAGE, CliError
from minimax_m1.cli.main import build_parser, main
from minimax_m1.cli.rollout import PodGroup, ReleaseStatus, find_chart
from minimax_m1.cli.status import render

RELEASE_VALUES = {"gateway": {"replicas": 1, "autoscaling": {"enabled": False, "minReplicas": 2, "maxReplicas": 10}},
                  "autoscaling": {"min_replicas": 1, "initial_replicas": 1, "max_replicas": 3}}
HPA_VALUES = {"gateway": {"autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 12}},
              "autoscaling": {"min_replicas": 2, "initial_replicas": 4, "max_replicas": 4}}


def scale_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["scale", *argv])


def test_the_commands_are_registered():
    parser = build_parser()
    for command in ("deploy", "status", "scale"):
        args = parser.parse_args([command, "--release", "r", "-n", "ns"])
        assert args._module == f"minimax_m1.cli.{command}"
        assert (args.release, args.namespace) == ("r", "ns")


@pytest.mark.parametrize("argv, values, expected", [
    (["--instances", "3"], RELEASE_VALUES,
     {"autoscaling.min_replicas": 3, "autoscaling.initial_replicas": 3, "autoscaling.max_replicas": 3}),
    (["--max-instances", "6"], RELEASE_VALUES,
     {"autoscaling.min_replicas": 1, "autoscaling.initial_replicas": 1, "autoscaling.max_replicas": 6}),
    # The initial count is kept inside the new bounds.
    (["--max-instances", "3"], HPA_VALUES,
     {"autoscaling.min_replicas": 2, "autoscaling.initial_replicas": 3, "autoscaling.max_replicas": 3}),
    (["--gateway", "1"], RELEASE_VALUES, {"gateway.replicas": 1}),
    (["--gateway-max", "20"], HPA_VALUES,
     {"gateway.autoscaling.enabled": "true", "gateway.autoscaling.minReplicas": 3, "gateway.autoscaling.maxReplicas": 20}),
    (["--gateway", "0", "--instances", "1"], RELEASE_VALUES,
     {"gateway.replicas": 0, "autoscaling.min_replicas": 1, "autoscaling.initial_replicas": 1, "autoscaling.max_replicas": 1}),
])
def test_scale_computes_the_value_changes(argv, values, expected):
    assert scale.plan_changes(scale_args(*argv), values) == expected


@pytest.mark.parametrize("argv, values, message", [
    ([], RELEASE_VALUES, "nothing to scale"),
    (["--instances", "0"], RELEASE_VALUES, "--instances must be >= 1, got 0"),
    (["--gateway", "-1"], RELEASE_VALUES, "--gateway must be >= 0"),
    (["--instances", "2", "--max-instances", "3"], RELEASE_VALUES, "either --instances or"),
    (["--min-instances", "5"], RELEASE_VALUES, "--min-instances 5 is above the maximum 3"),
    (["--gateway", "4"], HPA_VALUES, "scaled by its autoscaler; use --gateway-min/--gateway-max"),
    (["--gateway-min", "13"], HPA_VALUES, "gateway minimum 13 is above its maximum 12"),
])
def test_scale_refuses_bad_requests(argv, values, message):
    with pytest.raises(CliError) as info:
        scale.plan_changes(scale_args(*argv), values)
    assert message in str(info.value) and info.value.exit_code == EXIT_USAGE


def test_missing_helm_is_a_one_line_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("MINIMAX_M1_TOOLS_DIR", str(tmp_path))
    monkeypatch.delenv("MINIMAX_M1_HELM", raising=False)
    assert main(["deploy", "--release", "r"]) == EXIT_UNAVAILABLE
    assert capsys.readouterr().err.startswith("error: helm not found")
    assert main(["deploy", "--helm", str(tmp_path / "nope")]) == EXIT_USAGE
    assert "not found or not executable" in capsys.readouterr().err


def test_deploy_checks_its_arguments_first(tmp_path, capsys):
    assert main(["deploy", "-f", str(tmp_path / "missing.yaml")]) == EXIT_USAGE
    assert "values file" in capsys.readouterr().err
    assert main(["deploy", "--set", "plan.tp"]) == EXIT_USAGE
    assert "expected KEY=VALUE" in capsys.readouterr().err


def test_status_without_a_kubeconfig_is_a_one_line_error(tmp_path, capsys):
    missing = tmp_path / "kubeconfig"
    assert main(["status", "--kubeconfig", str(missing)]) == EXIT_UNAVAILABLE
    err = capsys.readouterr().err
    assert err.startswith("error: cannot load a kubeconfig") and "Traceback" not in err


def test_the_default_chart_is_the_checkout(monkeypatch):
    monkeypatch.delenv("MINIMAX_M1_CHART", raising=False)
    assert find_chart(None).endswith("helm/minimax-m1")
    monkeypatch.setenv("MINIMAX_M1_CHART", "oci://registry.example.com/charts/minimax-m1")
    assert find_chart(None) == "oci://registry.example.com/charts/minimax-m1"
    assert find_chart("./other") == "./other"


def test_status_text():
    status = ReleaseStatus(
        release="m1", namespace="serving", rayservice="m1-minimax-m1", service_status=None,
        conditions=[{"type": "Ready", "status": "False", "reason": "Initializing", "message": "RayService is initializing"}],
        active_cluster=None, pending_cluster="m1-minimax-m1-abcde", clusters=["m1-minimax-m1-abcde"],
        groups=[PodGroup("head", "m1-minimax-m1-abcde", None, 1, 1, 0, [0], ["cpu-0"]),
                PodGroup("experts", "m1-minimax-m1-abcde", 2, 2, 2, 2, [4, 4], ["gpu-1", "gpu-2"])],
        gateway={"name": "m1-minimax-m1-gateway", "replicas": 2, "ready": 1, "available": 1, "updated": 2},
    )
    assert render(status).splitlines() == [
        "release m1 (namespace serving)",
        "rayservice m1-minimax-m1: no serve status yet",
        "  Ready=False (Initializing: RayService is initializing)",
        "  active cluster: -   pending cluster: m1-minimax-m1-abcde",
        "  m1-minimax-m1-abcde head: 0 ready, 1 running, 1 pods on cpu-0",
        "  m1-minimax-m1-abcde experts: 2/2 ready, 2 running, 2 pods, 4 nvidia.com/gpu per pod on gpu-1, gpu-2",
        "gateway m1-minimax-m1-gateway: 1/2 ready",
    ]
