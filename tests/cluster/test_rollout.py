"""Rollout against a real control plane: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, kwok fake GPU nodes and the real KubeRay operator, driven through the
`minimax-m1 deploy/status/scale` commands and helm.

kwok's nodes run no containers (a stand-in for the GPU machines this host does not have), so Ray
never starts: Ray head pods are Running but not Ready (see harness.RAY_HEAD_UNREADY_STAGE), the
RayService never gets a ready Serve application, and its RayCluster stays the *pending* one.
Everything up to that point is real: the objects, the operator's pods and their GPU requests, the
scheduler's placement onto nodes that advertise nvidia.com/gpu, KubeRay's cluster replacement on
a new plan, and garbage collection on uninstall.

The tests run in file order and share one release.
"""
from __future__ import annotations

import collections
import json
import pathlib

import pytest
import yaml

from minimax_m1.cli.main import main as cli
from tests.cluster.conftest import GPUS_PER_NODE
from tests.cluster.harness import dump_state, wait_until
from tests.helm.chart import CHART, helm

pytestmark = [pytest.mark.slow, pytest.mark.cluster, pytest.mark.timeout(900)]

NAMESPACE = "serving"
RELEASE = "m1"
VALUES = pathlib.Path(__file__).with_name("kwok-gpu-values.yaml")
WAIT_S = 120


@pytest.fixture(scope="module")
def kube(cluster):
    from kubernetes import client

    api = cluster.api_client()
    return collections.namedtuple("Kube", "core apps custom")(
        client.CoreV1Api(api), client.AppsV1Api(api), client.CustomObjectsApi(api))


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def rayservice(kube):
    items = kube.custom.list_namespaced_custom_object("ray.io", "v1", NAMESPACE, "rayservices")["items"]
    return items[0] if items else None


def rayclusters(kube) -> list[dict]:
    return kube.custom.list_namespaced_custom_object("ray.io", "v1", NAMESPACE, "rayclusters")["items"]


def ray_pods(kube, cluster_name: str):
    return kube.core.list_namespaced_pod(NAMESPACE, label_selector=f"ray.io/cluster={cluster_name}").items


def pod_gpus(pod) -> int:
    return sum(int((c.resources.requests or {}).get("nvidia.com/gpu", 0)) for c in pod.spec.containers)


def pod_gpu_limits(pod) -> int:
    return sum(int((c.resources.limits or {}).get("nvidia.com/gpu", 0)) for c in pod.spec.containers)


def groups_of(pods) -> dict[str, list]:
    out = collections.defaultdict(list)
    for p in pods:
        out[p.metadata.labels["ray.io/group"]].append(p)
    return out


def wait_for_cluster_pods(cp, kube, expected: dict[str, int], replacing: str | None = None) -> tuple[dict, dict[str, list]]:
    """The one RayCluster of the release (not `replacing`), once its pods per group are
    `expected`, all running and bound to a node."""
    def settled():
        clusters = rayclusters(kube)
        if len(clusters) != 1 or clusters[0]["metadata"]["name"] == replacing:
            return None
        groups = groups_of(ray_pods(kube, clusters[0]["metadata"]["name"]))
        counts = {g: len(p) for g, p in groups.items()}
        running = all(p.status.phase == "Running" and p.spec.node_name for ps in groups.values() for p in ps)
        return (clusters[0], groups) if counts == expected and running else None

    try:
        return wait_until(settled, WAIT_S, f"one RayCluster with pods {expected}, all running")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n{dump_state(cp, NAMESPACE)}") from None


def assert_gpu_placement(kube, groups: dict[str, list], gpus_per_pod: int) -> None:
    nodes = {n.metadata.name: n for n in kube.core.list_node().items}
    used = collections.Counter()
    for group, pods in groups.items():
        for p in pods:
            node = nodes[p.spec.node_name]
            if group == "headgroup":
                assert pod_gpus(p) == 0
                # The head asks for no GPU and does not tolerate the GPU taint: a CPU node.
                assert "nvidia.com/gpu" not in node.status.allocatable, p.spec.node_name
                continue
            assert (pod_gpus(p), pod_gpu_limits(p)) == (gpus_per_pod, gpus_per_pod), p.metadata.name
            assert int(node.status.allocatable.get("nvidia.com/gpu", 0)) >= gpus_per_pod, p.spec.node_name
            used[p.spec.node_name] += pod_gpus(p)
    for node_name, count in used.items():
        assert count <= GPUS_PER_NODE, f"{node_name} is given {count} GPUs"


def test_install_creates_the_rayservice(cluster, kube, capsys):
    code, out, err = run_cli(capsys, "deploy", "--release", RELEASE, "-n", NAMESPACE, "--create-namespace",
                             "-f", str(VALUES))
    assert code == 0, err
    # helm's NOTES describe the plan.
    assert "worker group experts: 2 pod(s) per model instance, 4 nvidia.com/gpu each" in out
    rs = rayservice(kube)
    assert rs is not None and rs["metadata"]["name"] == "m1-minimax-m1"
    args = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]["args"]
    assert args["plan"]["tp"] == 4 and args["plan"]["ep"] == 8
    # The apiserver kept every field (nothing pruned by the CRD's structural schema).
    groups = {g["groupName"]: g for g in rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    assert groups["experts"]["replicas"] == 2
    assert groups["experts"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert kube.apps.read_namespaced_deployment("m1-minimax-m1-gateway", NAMESPACE)


def test_operator_creates_the_raycluster_and_pods_with_gpu_requests(cluster, kube):
    raycluster, groups = wait_for_cluster_pods(cluster, kube, {"headgroup": 1, "attention": 1, "experts": 2})
    rs = rayservice(kube)
    assert raycluster["metadata"]["ownerReferences"][0]["uid"] == rs["metadata"]["uid"]
    for p in groups["attention"] + groups["experts"]:
        assert (pod_gpus(p), pod_gpu_limits(p)) == (4, 4)
        ray_container = p.spec.containers[0]
        assert ray_container.security_context.read_only_root_filesystem is True
        assert any(v.name == "dshm" and v.empty_dir.medium == "Memory" for v in p.spec.volumes)
        assert [c.name for c in p.spec.init_containers or []][-1:] == ["fetch-model"] or \
            "fetch-model" in [c.name for c in p.spec.init_containers]
    assert pod_gpus(groups["headgroup"][0]) == 0


def test_pods_are_scheduled_onto_gpu_nodes_by_the_plan(cluster, kube):
    _, groups = wait_for_cluster_pods(cluster, kube, {"headgroup": 1, "attention": 1, "experts": 2})
    assert_gpu_placement(kube, groups, gpus_per_pod=4)
    # A 4-GPU pod fills a 4-GPU node: the three GPU pods are on three different nodes.
    gpu_nodes = [p.spec.node_name for g in ("attention", "experts") for p in groups[g]]
    assert len(set(gpu_nodes)) == 3
    gateway = wait_until(lambda: [p for p in kube.core.list_namespaced_pod(
        NAMESPACE, label_selector="app.kubernetes.io/component=gateway").items
        if p.status.phase == "Running"], WAIT_S, "the gateway pod running")
    assert gateway[0].spec.node_name == "cpu-0"


def test_status_reports_what_is_there(cluster, kube, capsys):
    wait_until(lambda: (kube.apps.read_namespaced_deployment("m1-minimax-m1-gateway", NAMESPACE).status.ready_replicas or 0) == 1,
               WAIT_S, "the gateway Deployment ready")
    code, out, err = run_cli(capsys, "status", "--release", RELEASE, "-n", NAMESPACE, "--json")
    assert code == 0, err
    status = json.loads(out)
    [raycluster] = rayclusters(kube)
    assert status["rayservice"] == "m1-minimax-m1"
    assert status["clusters"] == [raycluster["metadata"]["name"]]
    # Ray never starts on kwok nodes, so the cluster is still the pending one.
    assert status["pending_cluster"] == raycluster["metadata"]["name"]
    assert status["active_cluster"] is None
    types = {c["type"] for c in status["conditions"]}
    assert "Ready" in types
    assert next(c for c in status["conditions"] if c["type"] == "Ready")["status"] == "False"
    groups = {g["name"]: g for g in status["groups"]}
    assert (groups["head"]["pods"], groups["head"]["running"], groups["head"]["ready"]) == (1, 1, 0)
    assert groups["head"]["gpus_per_pod"] == [0]
    assert (groups["attention"]["pods"], groups["attention"]["desired"], groups["attention"]["gpus_per_pod"]) == (1, 1, [4])
    assert (groups["experts"]["pods"], groups["experts"]["running"], groups["experts"]["gpus_per_pod"]) == (2, 2, [4, 4])
    assert status["gateway"]["ready"] == 1 and status["gateway"]["replicas"] == 1

    code, text, _ = run_cli(capsys, "status", "--release", RELEASE, "-n", NAMESPACE)
    assert code == 0
    assert f"rayservice m1-minimax-m1" in text
    assert "experts: 2/2 ready, 2 running, 2 pods, 4 nvidia.com/gpu per pod" in text
    assert "gateway m1-minimax-m1-gateway: 1/1 ready" in text

    code, _, err = run_cli(capsys, "status", "--release", "nope", "-n", NAMESPACE)
    assert code == 1 and "release 'nope' has no RayService or gateway" in err


def test_scale_changes_model_instances_and_gateway(cluster, kube, capsys):
    code, out, err = run_cli(capsys, "scale", "--release", RELEASE, "-n", NAMESPACE, "--instances", "2", "--gateway", "3")
    assert code == 0, err
    assert "autoscaling.max_replicas=2" in out and "gateway.replicas=3" in out
    # Two instances: twice the worker pods, and Serve is told the same.
    rs = rayservice(kube)
    assert yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]["args"]["autoscaling_config"]["max_replicas"] == 2
    _, groups = wait_for_cluster_pods(cluster, kube, {"headgroup": 1, "attention": 2, "experts": 4})
    assert_gpu_placement(kube, groups, gpus_per_pod=4)
    wait_until(lambda: (kube.apps.read_namespaced_deployment("m1-minimax-m1-gateway", NAMESPACE).status.ready_replicas or 0) == 3,
               WAIT_S, "three gateway replicas ready")
    # The release records the change, so a later upgrade keeps it.
    values = json.loads(helm("get", "values", RELEASE, "-n", NAMESPACE, "-o", "json", env=cluster.env()))
    assert values["autoscaling"]["min_replicas"] == 2 and values["gateway"]["replicas"] == 3
    # Bad requests are refused before helm runs.
    code, _, err = run_cli(capsys, "scale", "--release", RELEASE, "-n", NAMESPACE, "--instances", "0")
    assert code == 2 and "--instances must be >= 1" in err


def test_upgrade_to_a_new_plan_replaces_the_cluster(cluster, kube, capsys):
    [old] = rayclusters(kube)
    old_name = old["metadata"]["name"]
    # tp 8 on two 4-GPU attention pods per instance (two instances: four pods); ep stays 8.
    code, out, err = run_cli(capsys, "deploy", "--release", RELEASE, "-n", NAMESPACE, "--reuse-values",
                             "--set", "plan.tp=8", "--set", "autoscaling.max_replicas=2")
    assert code == 0, err
    rs = rayservice(kube)
    assert yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]["args"]["plan"]["tp"] == 8
    # The plan is stamped on the worker pod templates, so KubeRay rolls it out as a new
    # RayCluster (two instances x two attention pods) and drops the old one.
    new, groups = wait_for_cluster_pods(cluster, kube, {"headgroup": 1, "attention": 4, "experts": 4},
                                        replacing=old_name)
    assert_gpu_placement(kube, groups, gpus_per_pod=4)
    assert "tp=8 ep=8" in new["spec"]["workerGroupSpecs"][0]["template"]["metadata"]["annotations"]["minimax-m1.io/plan"]
    wait_until(lambda: not ray_pods(kube, old_name), WAIT_S, f"the pods of {old_name} to go")
    code, out, _ = run_cli(capsys, "status", "--release", RELEASE, "-n", NAMESPACE, "--json")
    assert json.loads(out)["clusters"] == [new["metadata"]["name"]]


def test_a_rejected_upgrade_changes_nothing(cluster, kube, capsys):
    before = rayservice(kube)["metadata"]["resourceVersion"]
    code, _, err = run_cli(capsys, "deploy", "--release", RELEASE, "-n", NAMESPACE, "--reuse-values",
                           "--set", "plan.ep=3")
    assert code == 1
    assert "/plan/ep" in err and "must be one of 1, 2, 4, 8, 16, 32" in err
    assert rayservice(kube)["metadata"]["resourceVersion"] == before


def test_uninstall_removes_everything(cluster, kube):
    helm("uninstall", RELEASE, "-n", NAMESPACE, "--wait", env=cluster.env())
    assert rayservice(kube) is None

    def gone():
        pods = kube.core.list_namespaced_pod(NAMESPACE).items
        return not rayclusters(kube) and not pods and not kube.apps.list_namespaced_deployment(NAMESPACE).items

    try:
        wait_until(gone, WAIT_S, "the RayCluster, its pods and the gateway to be deleted")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n{dump_state(cluster, NAMESPACE)}") from None
    leftovers = [s.metadata.name for s in kube.core.list_namespaced_service(NAMESPACE).items]
    assert leftovers == []
