"""A real Kubernetes control plane on 127.0.0.1 for the cluster tests.

    etcd -> kube-apiserver -> kube-controller-manager (Deployments, garbage collection)
                           -> kube-scheduler (binds pods to nodes)
                           -> kwok (fake nodes with nvidia.com/gpu; runs their pods' lifecycle)
                           -> KubeRay operator (RayService -> RayCluster -> pods), CRDs installed

The binaries come from scripts/build_cluster_tools.sh (~/.cache/minimax-m1/bin). Every port is
free and on 127.0.0.1; pod and service IPs are loopback too, so nothing a controller dials (the
operator probes the Ray head pod's IP) leaves this machine.
"""
from __future__ import annotations

import contextlib
import json
import os
import pathlib
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from typing import Any, Callable

import yaml

from tests.helm.chart import crd_dir, find_tool, tools_dir

BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "ray-operator", "helm")
# kwok hands out pod IPs from here and the apiserver service IPs from there: both loopback.
POD_CIDR = "127.101.0.1/24"
NODE_IP = "127.101.1.1"
SERVICE_CIDR = "127.102.0.0/24"
FAKE_NODE_ANNOTATION = "kwok.x-k8s.io/node"


RAY_HEAD_UNREADY_STAGE = """
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: ray-head-running-unready
spec:
  resourceRef: {apiGroup: v1, kind: Pod}
  selector:
    matchExpressions:
    - {key: '.metadata.deletionTimestamp', operator: DoesNotExist}
    - {key: '.status.phase', operator: In, values: [Pending]}
    - {key: '.metadata.labels["ray.io/node-type"]', operator: In, values: [head]}
  next:
    statusTemplate: |
      {{ $now := Now }}
      conditions:
      - {lastTransitionTime: {{ $now | Quote }}, status: "True", type: Initialized}
      - {lastTransitionTime: {{ $now | Quote }}, status: "False", type: Ready, reason: ContainersNotReady}
      - {lastTransitionTime: {{ $now | Quote }}, status: "False", type: ContainersReady, reason: ContainersNotReady}
      containerStatuses:
      {{ range .spec.containers }}
      - image: {{ .image | Quote }}
        name: {{ .name | Quote }}
        ready: false
        restartCount: 0
        state:
          running:
            startedAt: {{ $now | Quote }}
      {{ end }}
      {{ with NodeIPsWith .spec.nodeName }}
      hostIP: {{ index . 0 | Quote }}
      {{ end }}
      {{ with PodIPsWith .spec.nodeName ( or .spec.hostNetwork false ) ( or .metadata.uid "" ) ( or .metadata.name "" ) ( or .metadata.namespace "" ) }}
      podIP: {{ index . 0 | Quote }}
      podIPs:
      {{ range . }}
      - ip: {{ . | Quote }}
      {{ end }}
      {{ end }}
      phase: Running
      startTime: {{ $now | Quote }}
"""


def kwok_stages() -> pathlib.Path:
    return tools_dir() / "kwok" / "stages.yaml"


def missing_binaries() -> list[str]:
    missing = [b for b in BINARIES if find_tool(b) is None]
    if crd_dir() is None:
        missing.append("KubeRay CRDs (ray.io_*.yaml)")
    if not kwok_stages().is_file():
        missing.append("kwok stages (kwok/stages.yaml)")
    return missing


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.5) -> Any:
    """Poll `predicate` until it returns something truthy; its last exception or value goes into
    the TimeoutError so a failure says what was last seen."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while True:
        try:
            value = predicate()
            if value:
                return value
            last = value
        except ComponentDied:
            raise
        except Exception as exc:  # noqa: BLE001 - reported below
            last = exc
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}; last: {last!r}")
        time.sleep(interval_s)


class ComponentDied(RuntimeError):
    """A control-plane process exited while the harness was waiting on it."""


class ControlPlane:
    """Start with `start()`, stop with `stop()` (or use as a context manager)."""

    def __init__(self, workdir: str | os.PathLike[str] | None = None):
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="minimax-m1-cluster-")
        self.dir = pathlib.Path(workdir or self._tmp.name)
        self.logs = self.dir / "logs"
        self._procs: list[tuple[str, subprocess.Popen]] = []
        self.token = "minimax-m1-test-admin-token"
        self.apiserver_port = 0
        self.kubeconfig = self.dir / "kubeconfig"

    # -- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> "ControlPlane":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        try:
            self._start_etcd()
            self._start_apiserver()
            self._write_kubeconfig()
            self._install_crds()
            self._start("kube-controller-manager", [
                f"--kubeconfig={self.kubeconfig}", "--leader-elect=false", "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}", f"--service-account-private-key-file={self.dir / 'sa.key'}",
                f"--root-ca-file={self.dir / 'certs' / 'apiserver.crt'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                # Only what the chart's objects need; nothing that dials nodes or clouds.
                "--controllers=deployment-controller,replicaset-controller,garbage-collector-controller,"
                "serviceaccount-controller,namespace-controller,endpointslice-controller,"
                "horizontal-pod-autoscaler-controller,disruption-controller,root-ca-certificate-publisher-controller,"
                # Lifts the not-ready taint the apiserver puts on new nodes once kwok reports them Ready.
                "node-lifecycle-controller",
            ])
            self._start("kube-scheduler", [
                f"--kubeconfig={self.kubeconfig}", f"--authentication-kubeconfig={self.kubeconfig}",
                f"--authorization-kubeconfig={self.kubeconfig}", "--leader-elect=false",
                "--bind-address=127.0.0.1", f"--secure-port={free_port()}",
            ])
            self._start("kwok", [
                f"--kubeconfig={self.kubeconfig}", f"--config={self._write_kwok_stages()}",
                f"--manage-nodes-with-annotation-selector={FAKE_NODE_ANNOTATION}=fake",
                f"--cidr={POD_CIDR}", f"--node-ip={NODE_IP}",
                f"--server-address=127.0.0.1:{free_port()}",
            ])
            self._start("ray-operator", [
                "--enable-leader-election=false", "--metrics-addr=0",
                f"--health-probe-bind-address=127.0.0.1:{free_port()}", "--log-stdout-encoder=console",
            ], env={"KUBECONFIG": str(self.kubeconfig)})
            self._wait_for_default_service_account()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        # In reverse start order, each one gone before the next, so etcd outlives the apiserver.
        for name, proc in reversed(self._procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        self._procs.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def check_running(self) -> None:
        """Raise if a component died (with the tail of its log)."""
        for name, proc in self._procs:
            if proc.poll() is not None:
                raise ComponentDied(f"{name} exited with {proc.returncode}:\n{self.log_tail(name)}")

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.logs / f"{name}.log"
        if not path.exists():
            return ""
        # The scheduler repeats this one harmlessly: no front-proxy CA is configured here.
        kept = [line for line in path.read_text(errors="replace").splitlines()
                if "extension-apiserver-authentication" not in line]
        return "\n".join(kept[-lines:])

    # -- components ------------------------------------------------------------------------------

    def _start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        binary = find_tool(name)
        if binary is None:
            raise FileNotFoundError(name)
        log = open(self.logs / f"{name}.log", "wb")
        proc = subprocess.Popen([binary, *args], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=self.dir, env={**os.environ, **(env or {})})
        log.close()
        self._procs.append((name, proc))
        return proc

    def _start_etcd(self) -> None:
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        self._start("etcd", [
            "--name=default", f"--data-dir={self.dir / 'etcd'}",
            f"--listen-client-urls={self.etcd_url}", f"--advertise-client-urls={self.etcd_url}",
            f"--listen-peer-urls=http://127.0.0.1:{peer}", f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster=default=http://127.0.0.1:{peer}",
            "--unsafe-no-fsync", "--log-level=warn",
        ])
        wait_until(lambda: self._http_ok(f"{self.etcd_url}/health"), 30, "etcd /health", interval_s=0.2)

    def _start_apiserver(self) -> None:
        _write_rsa_key(self.dir / "sa.key", self.dir / "sa.pub")
        (self.dir / "tokens.csv").write_text(f'{self.token},admin,admin,"system:masters"\n')
        self.apiserver_port = free_port()
        self._start("kube-apiserver", [
            f"--etcd-servers={self.etcd_url}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={self.apiserver_port}",
            # A self-signed serving certificate, generated into --cert-dir.
            f"--cert-dir={self.dir / 'certs'}",
            f"--token-auth-file={self.dir / 'tokens.csv'}", "--authorization-mode=RBAC",
            f"--service-account-key-file={self.dir / 'sa.pub'}",
            f"--service-account-signing-key-file={self.dir / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            # The "kubernetes" Service's endpoints would be 127.0.0.1, which Endpoints reject.
            "--endpoint-reconciler-type=none",
            "--enable-priority-and-fairness=false", "--profiling=false",
        ])
        wait_until(lambda: self.check_running() or self._http_ok(f"{self.server}/readyz", token=True), 120,
                   "kube-apiserver /readyz")

    def _write_kwok_stages(self) -> pathlib.Path:
        """kwok's standard stages, except that a Ray head pod becomes Running but never Ready.

        That is what a kubelet reports for a head whose readiness probe fails, and a head here
        never runs Ray: kwok's nodes run no containers. KubeRay treats a ready head as one whose
        dashboard answers, and a dashboard that does not answer stops its RayService reconcile
        before upgrades; an unready head lets the reconcile go on, as on a real cluster while Ray
        starts.
        """
        stages = [s for s in yaml.safe_load_all(kwok_stages().read_text()) if s]
        not_head = {"key": '.metadata.labels["ray.io/node-type"]', "operator": "NotIn", "values": ["head"]}
        for stage in stages:
            if stage["metadata"]["name"] == "pod-ready":
                stage["spec"]["selector"]["matchExpressions"].append(not_head)
        stages.append(yaml.safe_load(RAY_HEAD_UNREADY_STAGE))
        path = self.dir / "kwok-stages.yaml"
        path.write_text(yaml.safe_dump_all(stages))
        return path

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    def _write_kubeconfig(self) -> None:
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": {
                "server": self.server, "certificate-authority": str(self.dir / "certs" / "apiserver.crt")}}],
            "users": [{"name": "admin", "user": {"token": self.token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "admin"}}],
        }
        self.kubeconfig.write_text(yaml.safe_dump(config))
        self.kubeconfig.chmod(0o600)

    def _install_crds(self) -> None:
        from kubernetes import client

        api = client.ApiextensionsV1Api(self.api_client())
        names = []
        for path in sorted(crd_dir().glob("ray.io_*.yaml")):
            crd = yaml.safe_load(path.read_text())
            api.create_custom_resource_definition(crd)
            names.append(crd["metadata"]["name"])

        def established():
            for name in names:
                conditions = api.read_custom_resource_definition(name).status.conditions or []
                if not any(c.type == "Established" and c.status == "True" for c in conditions):
                    return False
            return True

        wait_until(established, 60, "the KubeRay CRDs to be established")

    def _wait_for_default_service_account(self) -> None:
        from kubernetes import client

        core = client.CoreV1Api(self.api_client())
        wait_until(lambda: self.check_running() or core.read_namespaced_service_account("default", "default"),
                   60, "the default ServiceAccount (kube-controller-manager)")

    # -- clients and helpers ---------------------------------------------------------------------

    def api_client(self):
        from kubernetes import client, config

        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def env(self) -> dict[str, str]:
        """Environment for helm, kubectl-like tools and the CLI: this cluster only."""
        return {"KUBECONFIG": str(self.kubeconfig), "HELM_CACHE_HOME": str(self.dir / "helm" / "cache"),
                "HELM_CONFIG_HOME": str(self.dir / "helm" / "config"), "HELM_DATA_HOME": str(self.dir / "helm" / "data")}

    def add_fake_nodes(self, count: int, prefix: str, gpus: int = 0, cpu: str = "64", memory: str = "1Ti",
                       labels: dict[str, str] | None = None) -> list[str]:
        """kwok nodes; GPU nodes advertise nvidia.com/gpu and carry the usual nvidia.com/gpu taint."""
        from kubernetes import client

        core = client.CoreV1Api(self.api_client())
        capacity = {"cpu": cpu, "memory": memory, "pods": "110"}
        if gpus:
            capacity["nvidia.com/gpu"] = str(gpus)
        names = []
        for i in range(count):
            name = f"{prefix}-{i}"
            body = {
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "annotations": {FAKE_NODE_ANNOTATION: "fake"},
                             "labels": {"type": "kwok", "kubernetes.io/hostname": name, **(labels or {})}},
                "spec": {"taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}] if gpus else []},
                "status": {"capacity": capacity, "allocatable": capacity},
            }
            core.create_node(body)
            names.append(name)

        def ready():
            for n in names:
                node = core.read_node(n)
                conds = {c.type: c.status for c in node.status.conditions or []}
                if conds.get("Ready") != "True" or (gpus and node.status.allocatable.get("nvidia.com/gpu") != str(gpus)):
                    return False
                if any(t.key == "node.kubernetes.io/not-ready" for t in node.spec.taints or []):
                    return False
            return True

        wait_until(ready, 60, f"kwok to report nodes {names} Ready")
        return names

    def _http_ok(self, url: str, token: bool = False) -> bool:
        request = urllib.request.Request(url)
        if token:
            request.add_header("Authorization", f"Bearer {self.token}")
        context = ssl._create_unverified_context() if url.startswith("https") else None  # self-signed
        try:
            with urllib.request.urlopen(request, timeout=2, context=context) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False


def _write_rsa_key(private_path: pathlib.Path, public_path: pathlib.Path) -> None:
    """The service-account signing key pair."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    private_path.chmod(0o600)
    public_path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo))


@contextlib.contextmanager
def control_plane():
    with ControlPlane() as cp:
        yield cp


def dump_state(cp: ControlPlane, namespace: str) -> str:
    """Objects and component logs, for a failing test's message."""
    from kubernetes import client

    api = cp.api_client()
    core = client.CoreV1Api(api)
    custom = client.CustomObjectsApi(api)
    lines = []
    with contextlib.suppress(Exception):
        for p in core.list_namespaced_pod(namespace).items:
            lines.append(f"pod {p.metadata.name} node={p.spec.node_name} phase={p.status.phase}")
    with contextlib.suppress(Exception):
        for kind in ("rayservices", "rayclusters"):
            for o in custom.list_namespaced_custom_object("ray.io", "v1", namespace, kind)["items"]:
                lines.append(f"{kind} {o['metadata']['name']} status={json.dumps(o.get('status'))[:400]}")
    for name in ("ray-operator", "kube-scheduler", "kwok"):
        lines.append(f"--- {name} log tail\n{cp.log_tail(name, 15)}")
    return "\n".join(lines)
