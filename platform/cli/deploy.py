"""`minimax-m1 deploy`: install or upgrade the chart (helm upgrade --install).

A new plan (tp, ep, placement, GPUs per worker or pod) changes the worker pod templates, so KubeRay
brings up a new RayCluster and switches traffic once its Serve application is healthy. A new number
of model instances alone is applied to the running RayClusters here, as `scale` does.
"""
from __future__ import annotations

import argparse
import pathlib

from minimax_m1.cli.common import EXIT_USAGE, CliError, progress
from minimax_m1.cli.rollout import add_cluster_arguments, find_chart, find_helm, run_helm, sync_worker_groups


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_cluster_arguments(parser)
    parser.add_argument("-f", "--values", action="append", default=[], metavar="FILE",
                        help="values file (repeatable; later files win)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="one value, as helm --set (repeatable; wins over files)")
    parser.add_argument("--chart", default=None,
                        help="chart directory, package or reference (default $MINIMAX_M1_CHART, else the checkout's helm/minimax-m1)")
    parser.add_argument("--reuse-values", action="store_true",
                        help="keep the release's current values and apply only the changes given here")
    parser.add_argument("--create-namespace", action="store_true", help="create the namespace if it is missing")
    parser.add_argument("--wait", action="store_true", help="wait until the gateway and the Ray pods are ready")
    parser.add_argument("--timeout", default="10m", help="how long --wait may take, as helm durations (default 10m)")
    parser.add_argument("--dry-run", action="store_true", help="render and validate against the cluster, change nothing")


def run(args: argparse.Namespace) -> int:
    for f in args.values:
        if not pathlib.Path(f).is_file():
            raise CliError(f"values file {f!r} not found", EXIT_USAGE)
    for s in args.set:
        if "=" not in s:
            raise CliError(f"--set {s!r}: expected KEY=VALUE", EXIT_USAGE)
    find_helm(args.helm)  # before any output
    helm_args = ["upgrade", args.release, find_chart(args.chart), "--install"]
    for f in args.values:
        helm_args += ["--values", f]
    for s in args.set:
        helm_args += ["--set", s]
    if args.reuse_values:
        helm_args.append("--reuse-values")
    if args.create_namespace:
        helm_args.append("--create-namespace")
    if args.wait:
        helm_args += ["--wait", "--timeout", args.timeout]
    if args.dry_run:
        helm_args.append("--dry-run")
    progress(f"deploying release {args.release!r}" + (" (dry run)" if args.dry_run else ""))
    print(run_helm(args, *helm_args), end="")
    if not args.dry_run:
        # A changed number of model instances is not applied by KubeRay to running clusters.
        for line in sync_worker_groups(args):
            print(f"resized {line}")
    return 0
