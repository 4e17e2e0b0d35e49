"""`minimax-m1 status`: the RayService's conditions, the pods of each Ray group, the gateway."""
from __future__ import annotations

import argparse
import json

from minimax_m1.cli.rollout import ReleaseStatus, add_cluster_arguments, read_status


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_cluster_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    status = read_status(args)
    if args.json:
        print(json.dumps(status.to_json(), indent=2))
    else:
        print(render(status))
    return 0


def render(s: ReleaseStatus) -> str:
    lines = [f"release {s.release} (namespace {s.namespace})"]
    if s.rayservice is None:
        lines.append("rayservice: none")
    else:
        lines.append(f"rayservice {s.rayservice}: {s.service_status or 'no serve status yet'}")
        for c in s.conditions:
            detail = ": ".join(x for x in (c["reason"], c["message"]) if x)
            lines.append(f"  {c['type']}={c['status']}" + (f" ({detail})" if detail else ""))
        lines.append(f"  active cluster: {s.active_cluster or '-'}   pending cluster: {s.pending_cluster or '-'}")
    for g in s.groups:
        desired = "" if g.desired is None else f"/{g.desired}"
        gpus = sorted(set(g.gpus_per_pod))
        gpu_text = f", {'/'.join(map(str, gpus))} nvidia.com/gpu per pod" if any(gpus) else ""
        nodes = f" on {', '.join(sorted(set(g.nodes)))}" if g.nodes else ""
        lines.append(f"  {g.cluster} {g.name}: {g.ready}{desired} ready, {g.running} running, "
                     f"{g.pods} pods{gpu_text}{nodes}")
    if s.gateway is None:
        lines.append("gateway: none")
    else:
        gw = s.gateway
        lines.append(f"gateway {gw['name']}: {gw['ready']}/{gw['replicas']} ready")
    return "\n".join(lines)
