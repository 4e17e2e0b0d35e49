"""`minimax-m1 scale`: the gateway's replicas and the number of model instances.

Both go through `helm upgrade --reuse-values`, so the release stays the one record of what is
deployed. A model instance is one Ray Serve replica; the worker groups follow from the chart, and
the running RayClusters are resized to match (KubeRay applies worker-group sizes only to the
clusters it creates).
"""
from __future__ import annotations

import argparse

from minimax_m1.cli.common import EXIT_USAGE, CliError, progress
from minimax_m1.cli.rollout import add_cluster_arguments, find_chart, release_values, run_helm, sync_worker_groups


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_cluster_arguments(parser)
    gateway = parser.add_argument_group("gateway")
    gateway.add_argument("--gateway", type=int, metavar="N", help="gateway replicas (without its autoscaler)")
    gateway.add_argument("--gateway-min", type=int, metavar="N", help="autoscaler minimum (turns the autoscaler on)")
    gateway.add_argument("--gateway-max", type=int, metavar="N", help="autoscaler maximum (turns the autoscaler on)")
    model = parser.add_argument_group("model instances (Ray Serve replicas)")
    model.add_argument("--instances", type=int, metavar="N", help="exactly N instances (min = max = N)")
    model.add_argument("--min-instances", type=int, metavar="N", help="autoscaling lower bound")
    model.add_argument("--max-instances", type=int, metavar="N", help="autoscaling upper bound")
    parser.add_argument("--chart", default=None, help="the release's chart (default as for deploy)")
    parser.add_argument("--wait", action="store_true", help="wait until the pods are ready")
    parser.add_argument("--timeout", default="10m", help="how long --wait may take (default 10m)")


def run(args: argparse.Namespace) -> int:
    changes = plan_changes(args, release_values(args))
    helm_args = ["upgrade", args.release, find_chart(args.chart), "--reuse-values"]
    for key, value in changes.items():
        helm_args += ["--set", f"{key}={value}"]
    if args.wait:
        helm_args += ["--wait", "--timeout", args.timeout]
    progress(f"scaling release {args.release!r}: " + ", ".join(f"{k}={v}" for k, v in changes.items()))
    run_helm(args, *helm_args)
    for key, value in changes.items():
        print(f"{key}={value}")
    if any(key.startswith("autoscaling.") for key in changes):
        for line in sync_worker_groups(args):
            print(f"resized {line}")
    return 0


def plan_changes(args: argparse.Namespace, values: dict) -> dict[str, object]:
    """The --set changes for the requested scale, checked against the release's values."""
    _check_counts(args)
    changes: dict[str, object] = {}
    gateway = values.get("gateway", {})
    autoscaled = bool(gateway.get("autoscaling", {}).get("enabled"))
    if args.gateway is not None:
        if args.gateway_min is not None or args.gateway_max is not None:
            raise CliError("give either --gateway or --gateway-min/--gateway-max", EXIT_USAGE)
        if autoscaled:
            raise CliError("the gateway is scaled by its autoscaler; use --gateway-min/--gateway-max", EXIT_USAGE)
        changes["gateway.replicas"] = args.gateway
    if args.gateway_min is not None or args.gateway_max is not None:
        hpa = gateway.get("autoscaling", {})
        lo = args.gateway_min if args.gateway_min is not None else hpa.get("minReplicas", 1)
        hi = args.gateway_max if args.gateway_max is not None else hpa.get("maxReplicas", lo)
        if lo > hi:
            raise CliError(f"gateway minimum {lo} is above its maximum {hi}", EXIT_USAGE)
        changes.update({"gateway.autoscaling.enabled": "true", "gateway.autoscaling.minReplicas": lo,
                        "gateway.autoscaling.maxReplicas": hi})
    model = values.get("autoscaling", {})
    if args.instances is not None:
        if args.min_instances is not None or args.max_instances is not None:
            raise CliError("give either --instances or --min-instances/--max-instances", EXIT_USAGE)
        lo = hi = initial = args.instances
    elif args.min_instances is not None or args.max_instances is not None:
        lo = args.min_instances if args.min_instances is not None else model.get("min_replicas", 1)
        hi = args.max_instances if args.max_instances is not None else model.get("max_replicas", lo)
        if lo > hi:
            raise CliError(f"--min-instances {lo} is above the maximum {hi}", EXIT_USAGE)
        initial = min(max(model.get("initial_replicas", lo), lo), hi)
    else:
        lo = None
    if lo is not None:
        changes.update({"autoscaling.min_replicas": lo, "autoscaling.initial_replicas": initial,
                        "autoscaling.max_replicas": hi})
    if not changes:
        raise CliError("nothing to scale: give --gateway, --gateway-min/--gateway-max, --instances "
                       "or --min-instances/--max-instances", EXIT_USAGE)
    return changes


def _check_counts(args: argparse.Namespace) -> None:
    floors = {"gateway": 0, "gateway_min": 1, "gateway_max": 1, "instances": 1, "min_instances": 0, "max_instances": 1}
    for name, floor in floors.items():
        value = getattr(args, name)
        if value is not None and value < floor:
            raise CliError(f"--{name.replace('_', '-')} must be >= {floor}, got {value}", EXIT_USAGE)
