"""What `deploy`, `status` and `scale` share: the helm binary, the chart, the cluster connection and
a read of one release's objects.

helm is the source of truth for what is deployed: `deploy` and `scale` change a release only
through `helm upgrade`, so a later `helm upgrade` never undoes them. `status` reads the objects
with the kubernetes client.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from typing import Any

from minimax_m1.cli.common import EXIT_UNAVAILABLE, EXIT_USAGE, CliError

HELM_ENV = "MINIMAX_M1_HELM"
CHART_ENV = "MINIMAX_M1_CHART"
TOOLS_DIR_ENV = "MINIMAX_M1_TOOLS_DIR"
DEFAULT_RELEASE = "minimax-m1"
RAY_GROUP = "v1"
RAY_API = "ray.io"
HEAD_GROUP = "headgroup"  # KubeRay's ray.io/group label of the head pod
PLAN_ANNOTATION = "minimax-m1.io/plan"  # on worker pod templates (helm/minimax-m1 rayservice.yaml)


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("cluster")
    group.add_argument("--release", default=DEFAULT_RELEASE, help=f"helm release name (default {DEFAULT_RELEASE})")
    group.add_argument("-n", "--namespace", default=None, help="namespace (default: the kubeconfig context's)")
    group.add_argument("--kubeconfig", default=None, help="kubeconfig file (default $KUBECONFIG, else ~/.kube/config)")
    group.add_argument("--context", default=None, help="kubeconfig context (default: the current one)")
    group.add_argument("--helm", default=None,
                       help=f"helm binary (default ${HELM_ENV}, else helm on PATH, else the cached build)")


# --- helm ---------------------------------------------------------------------------------------

def find_helm(explicit: str | None = None) -> str:
    candidates = [explicit, os.environ.get(HELM_ENV), shutil.which("helm"), str(_tools_dir() / "bin" / "helm")]
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    if explicit:
        raise CliError(f"helm binary {explicit!r} not found or not executable", EXIT_USAGE)
    raise CliError("helm not found: install helm v3, put it on PATH or set $" + HELM_ENV
                   + " (scripts/build_cluster_tools.sh builds one)", EXIT_UNAVAILABLE)


def find_chart(explicit: str | None = None) -> str:
    """--chart, else $MINIMAX_M1_CHART, else the chart of the checkout this package runs from."""
    chosen = explicit or os.environ.get(CHART_ENV)
    if chosen:
        return chosen  # a directory, a package, repo/name or oci://...: helm reports what it cannot find
    checkout = pathlib.Path(__file__).resolve().parents[2] / "helm" / "minimax-m1"
    if (checkout / "Chart.yaml").is_file():
        return str(checkout)
    raise CliError(f"no chart given: pass --chart (a chart directory or package) or set ${CHART_ENV}", EXIT_USAGE)


def helm_base_args(args: argparse.Namespace) -> list[str]:
    out = []
    if args.kubeconfig:
        out += ["--kubeconfig", args.kubeconfig]
    if args.context:
        out += ["--kube-context", args.context]
    if args.namespace:
        out += ["--namespace", args.namespace]
    return out


def run_helm(args: argparse.Namespace, *helm_args: str, timeout_s: float | None = None) -> str:
    """Run helm; a failure becomes a CliError carrying helm's own message."""
    command = [find_helm(args.helm), *helm_args, *helm_base_args(args)]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise CliError(f"helm {helm_args[0]} did not finish in {timeout_s:.0f} s") from exc
    if proc.returncode != 0:
        message = (proc.stderr or proc.stdout).strip()
        message = message.removeprefix("Error: ")
        raise CliError(f"helm {helm_args[0]} failed: {message}")
    return proc.stdout


def release_values(args: argparse.Namespace) -> dict[str, Any]:
    """The release's computed values (chart defaults merged with the user's)."""
    out = run_helm(args, "get", "values", args.release, "--all", "--output", "json")
    return json.loads(out or "{}")


# --- kubernetes ---------------------------------------------------------------------------------

def kube_clients(args: argparse.Namespace):
    """(ApiClient, namespace) from the kubeconfig; the namespace defaults to the context's."""
    try:
        from kubernetes import client, config
    except ImportError as exc:  # the SDK-only install
        raise CliError("the kubernetes package is needed: pip install 'minimax-m1[serve]'", EXIT_UNAVAILABLE) from exc
    # Read $KUBECONFIG now: the client's own default was fixed when it was imported.
    path = args.kubeconfig or os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    try:
        api = config.new_client_from_config(config_file=path, context=args.context)
        _, active = config.list_kube_config_contexts(config_file=path)
    except (config.ConfigException, OSError, TypeError) as exc:
        raise CliError(f"cannot load a kubeconfig from {path}: {exc}", EXIT_UNAVAILABLE) from exc
    namespace = args.namespace
    if namespace is None:
        if args.context:
            contexts, _ = config.list_kube_config_contexts(config_file=path)
            active = next((c for c in contexts if c["name"] == args.context), active)
        namespace = (active or {}).get("context", {}).get("namespace") or "default"
    return api, namespace


@dataclass
class PodGroup:
    name: str  # "head" or the worker group name
    cluster: str
    desired: int | None  # the worker group's replicas (None for the head)
    pods: int = 0
    running: int = 0
    ready: int = 0
    gpus_per_pod: list[int] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)


@dataclass
class ReleaseStatus:
    release: str
    namespace: str
    rayservice: str | None
    service_status: str | None
    conditions: list[dict[str, str]]
    active_cluster: str | None
    pending_cluster: str | None
    clusters: list[str]
    groups: list[PodGroup]
    gateway: dict[str, Any] | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def read_status(args: argparse.Namespace) -> ReleaseStatus:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    api, namespace = kube_clients(args)
    custom, core, apps = client.CustomObjectsApi(api), client.CoreV1Api(api), client.AppsV1Api(api)
    selector = f"app.kubernetes.io/instance={args.release}"
    try:
        services = custom.list_namespaced_custom_object(RAY_API, RAY_GROUP, namespace, "rayservices",
                                                        label_selector=selector)["items"]
        deployments = apps.list_namespaced_deployment(namespace, label_selector=f"{selector},app.kubernetes.io/component=gateway").items
        if not services and not deployments:
            raise CliError(f"release {args.release!r} has no RayService or gateway in namespace {namespace!r}")
        rs = services[0] if services else None
        status = (rs or {}).get("status") or {}
        active = (status.get("activeServiceStatus") or {}).get("rayClusterName") or None
        pending = (status.get("pendingServiceStatus") or {}).get("rayClusterName") or None
        clusters = []
        if rs is not None:
            owned = custom.list_namespaced_custom_object(RAY_API, RAY_GROUP, namespace, "rayclusters")["items"]
            clusters = [c for c in owned if any(o.get("uid") == rs["metadata"]["uid"]
                                                for o in c["metadata"].get("ownerReferences") or [])]
        groups = []
        for cluster in sorted(clusters, key=lambda c: c["metadata"]["name"]):
            groups += _pod_groups(core, namespace, cluster)
        gateway = _gateway_status(deployments[0]) if deployments else None
    except ApiException as exc:
        raise CliError(f"the Kubernetes API refused the request: {exc.status} {exc.reason}") from exc
    except HTTPError as exc:
        raise CliError(f"cannot reach the Kubernetes API: {exc}", EXIT_UNAVAILABLE) from exc
    return ReleaseStatus(
        release=args.release, namespace=namespace,
        rayservice=rs["metadata"]["name"] if rs else None,
        service_status=status.get("serviceStatus") or None,
        conditions=[{k: c.get(k, "") for k in ("type", "status", "reason", "message")}
                    for c in status.get("conditions") or []],
        active_cluster=active, pending_cluster=pending,
        clusters=[c["metadata"]["name"] for c in clusters], groups=groups, gateway=gateway,
    )


def _pod_groups(core, namespace: str, cluster: dict[str, Any]) -> list[PodGroup]:
    name = cluster["metadata"]["name"]
    spec = cluster["spec"]
    groups = {"head": PodGroup("head", name, None)}
    for g in spec.get("workerGroupSpecs") or []:
        groups[g["groupName"]] = PodGroup(g["groupName"], name, g.get("replicas"))
    pods = core.list_namespaced_pod(namespace, label_selector=f"ray.io/cluster={name}").items
    for pod in sorted(pods, key=lambda p: p.metadata.name):
        label = (pod.metadata.labels or {}).get("ray.io/group", "")
        key = "head" if label == HEAD_GROUP else label
        group = groups.setdefault(key, PodGroup(key, name, None))
        group.pods += 1
        group.running += pod.status.phase == "Running"
        group.ready += any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
        group.gpus_per_pod.append(_pod_gpus(pod))
        if pod.spec.node_name:
            group.nodes.append(pod.spec.node_name)
    return list(groups.values())


def _pod_gpus(pod) -> int:
    total = 0
    for c in pod.spec.containers:
        requests = (c.resources.requests if c.resources else None) or {}
        total += int(requests.get("nvidia.com/gpu", 0))
    return total


def _gateway_status(deployment) -> dict[str, Any]:
    st = deployment.status
    return {"name": deployment.metadata.name, "replicas": deployment.spec.replicas or 0,
            "ready": st.ready_replicas or 0, "available": st.available_replicas or 0,
            "updated": st.updated_replicas or 0}


def _tools_dir() -> pathlib.Path:
    explicit = os.environ.get(TOOLS_DIR_ENV)
    return pathlib.Path(explicit) if explicit else pathlib.Path.home() / ".cache" / "minimax-m1"


def sync_worker_groups(args: argparse.Namespace) -> list[str]:
    """Carry the RayService's worker-group sizes into its existing RayClusters.

    KubeRay reads a RayService's replicas, minReplicas and maxReplicas only when it creates a
    RayCluster (they are left out of the spec hash, so changing them neither updates nor replaces
    a cluster). Scaling a running release therefore patches the clusters too. With the in-tree
    autoscaler on, it owns `replicas`: only the bounds change and replicas is clamped into them.
    Returns one line per patched group.
    """
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    api, namespace = kube_clients(args)
    custom = client.CustomObjectsApi(api)
    selector = f"app.kubernetes.io/instance={args.release}"
    try:
        services = custom.list_namespaced_custom_object(RAY_API, RAY_GROUP, namespace, "rayservices",
                                                        label_selector=selector)["items"]
        if not services:
            return []
        rs = services[0]
        goal = {g["groupName"]: g for g in rs["spec"]["rayClusterConfig"].get("workerGroupSpecs") or []}
        autoscaled = bool(rs["spec"]["rayClusterConfig"].get("enableInTreeAutoscaling"))
        changed = []
        for cluster in custom.list_namespaced_custom_object(RAY_API, RAY_GROUP, namespace, "rayclusters")["items"]:
            if not any(o.get("uid") == rs["metadata"]["uid"] for o in cluster["metadata"].get("ownerReferences") or []):
                continue
            groups = cluster["spec"].get("workerGroupSpecs") or []
            before = len(changed)
            for g in groups:
                want = goal.get(g["groupName"])
                if want is None or _plan(want) != _plan(g):
                    continue  # a cluster of another plan: KubeRay replaces it with a new one
                lo, hi = want.get("minReplicas", 0), want.get("maxReplicas", 0)
                replicas = min(max(g.get("replicas", lo), lo), hi) if autoscaled else want.get("replicas", lo)
                if (g.get("minReplicas"), g.get("maxReplicas"), g.get("replicas")) != (lo, hi, replicas):
                    g.update(minReplicas=lo, maxReplicas=hi, replicas=replicas)
                    changed.append(f"{cluster['metadata']['name']}/{g['groupName']}: "
                                   f"replicas={replicas} min={lo} max={hi}")
            if len(changed) > before:
                # resourceVersion in the body makes this a compare-and-swap against the operator.
                custom.replace_namespaced_custom_object(RAY_API, RAY_GROUP, namespace, "rayclusters",
                                                        cluster["metadata"]["name"], cluster)
    except ApiException as exc:
        raise CliError(f"could not resize the RayClusters: {exc.status} {exc.reason}") from exc
    return changed


def _plan(group: dict[str, Any]) -> str | None:
    """The plan stamp the chart puts on each worker pod template."""
    return ((group.get("template") or {}).get("metadata") or {}).get("annotations", {}).get(PLAN_ANNOTATION)

