"""The files around the chart: the image's Dockerfile, the kind e2e script and cluster config, and
the tool build script. No Docker or kind here, so these check what can be checked offline."""
from __future__ import annotations

import re
import subprocess

import yaml

from tests.helm.chart import CHART, REPO_ROOT

K8S = REPO_ROOT / "k8s"


def test_scripts_parse():
    for script in (K8S / "kind" / "e2e.sh", REPO_ROOT / "scripts" / "build_cluster_tools.sh"):
        assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0, script
        assert script.stat().st_mode & 0o111, f"{script} is not executable"


def test_dockerfile_copies_what_the_package_needs():
    text = (K8S / "Dockerfile").read_text()
    sources = re.findall(r"^COPY --chown=\S+ (\S+) ", text, re.M)
    # Every package-dir root of pyproject.toml is copied, and each copied path exists.
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    roots = {v.split("/")[0] for v in re.findall(r'^"minimax_m1[.\w]*" = "([^"]+)"', pyproject, re.M)}
    assert roots <= set(sources), roots - set(sources)
    for src in sources:
        if "*" not in src:
            assert (REPO_ROOT / src).exists(), src
    # The user matches the chart's pod security context.
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    uid, gid = values["podSecurityContext"]["runAsUser"], values["podSecurityContext"]["runAsGroup"]
    assert f"USER {uid}:{gid}" in text
    # The base image's Ray matches the chart's.
    assert f"ARG RAY_VERSION={values['ray']['version']}" in text


def test_e2e_uses_the_demo_values_and_the_kind_config():
    script = (K8S / "kind" / "e2e.sh").read_text()
    cluster = yaml.safe_load((K8S / "kind" / "cluster.yaml").read_text())
    assert cluster["kind"] == "Cluster" and cluster["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    assert [n["role"] for n in cluster["nodes"]].count("worker") >= 1
    for path in re.findall(r"(helm/minimax-m1/ci/[\w.-]+|k8s/kind/[\w.-]+|k8s/Dockerfile)", script):
        assert (REPO_ROOT / path).exists(), path
    demo = yaml.safe_load((CHART / "ci" / "cpu-demo-values.yaml").read_text())
    # The secret the script creates is the one the demo values read.
    assert demo["gateway"]["apiKeySecret"]["name"] in script
    assert "helm test" in script and "kind load docker-image" in script
