"""Render the chart with the real helm binary and validate what it renders, offline.

- Kubernetes objects: the schemas shipped in the `kubernetes-validate` package (strict: unknown
  fields are errors).
- KubeRay objects: the openAPIV3Schema of the CRDs from the operator module, copied next to the
  tools by scripts/build_cluster_tools.sh, made strict the same way.
- Pod templates embedded in RayServices are validated as Kubernetes PodTemplates too.
"""
from __future__ import annotations

import copy
import functools
import os
import pathlib
import shutil
import subprocess
from typing import Any, Iterable

import yaml

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "helm" / "minimax-m1"
VALUES_MATRIX = sorted((CHART / "ci").glob("*-values.yaml"))
# The Kubernetes minor version the schemas are taken from; helm renders for the same version.
KUBE_VERSION = "1.37.0"


def tools_dir() -> pathlib.Path:
    """Where scripts/build_cluster_tools.sh caches its output."""
    explicit = os.environ.get("MINIMAX_M1_TOOLS_DIR")
    return pathlib.Path(explicit) if explicit else pathlib.Path.home() / ".cache" / "minimax-m1"


def find_tool(name: str) -> str | None:
    """A tool from the cache, else from PATH."""
    cached = tools_dir() / "bin" / name
    if cached.is_file() and os.access(cached, os.X_OK):
        return str(cached)
    return shutil.which(name)


def crd_dir() -> pathlib.Path | None:
    d = tools_dir() / "crds"
    return d if (d / "ray.io_rayservices.yaml").is_file() else None


class HelmError(Exception):
    """helm exited non-zero; the message is its stderr."""


def helm(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> str:
    binary = find_tool("helm")
    if binary is None:
        raise FileNotFoundError("helm")
    proc = subprocess.run([binary, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise HelmError(proc.stderr.strip() or proc.stdout.strip())
    return proc.stdout


def values_args(values_files: Iterable[os.PathLike | str] = (), set_values: Iterable[str] = ()) -> list[str]:
    args: list[str] = []
    for f in values_files:
        args += ["-f", str(f)]
    for s in set_values:
        args += ["--set", s]
    return args


def render(values_files: Iterable[os.PathLike | str] = (), set_values: Iterable[str] = (),
           api_versions: Iterable[str] = (), show_tests: bool = True) -> list[dict[str, Any]]:
    """`helm template` -> the rendered objects (empty documents dropped)."""
    args = ["template", "r", str(CHART), "--namespace", "serving", "--kube-version", KUBE_VERSION]
    args += values_args(values_files, set_values)
    for v in api_versions:
        args += ["--api-versions", v]
    out = helm(*args)
    docs = [d for d in yaml.safe_load_all(out) if d]
    if not show_tests:
        docs = [d for d in docs if "helm.sh/hook" not in (d["metadata"].get("annotations") or {})]
    return docs


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


# --- validation -----------------------------------------------------------------------------

def validate_kubernetes(obj: dict[str, Any]) -> None:
    """Raises kubernetes_validate.ValidationError on a schema violation (strict)."""
    import kubernetes_validate

    kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


def _strict(schema: Any) -> Any:
    """An apiextensions structural schema as plain JSON Schema, with unknown fields rejected the
    way the apiserver prunes them (x-kubernetes-preserve-unknown-fields keeps them)."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if out.pop("x-kubernetes-int-or-string", False):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@functools.lru_cache(maxsize=None)
def crd_validators() -> dict[tuple[str, str], Any]:
    """(apiVersion, kind) -> a jsonschema validator for every version served by the KubeRay CRDs."""
    import jsonschema

    directory = crd_dir()
    if directory is None:
        raise FileNotFoundError("ray-operator CRDs")
    validators = {}
    for path in sorted(directory.glob("ray.io_*.yaml")):
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = _strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
            # metadata is validated by the apiserver, not by the CRD schema.
            schema.setdefault("properties", {})["metadata"] = {"type": "object"}
            validators[(f"{group}/{version['name']}", kind)] = jsonschema.Draft7Validator(schema)
    return validators


def validate_crd_object(obj: dict[str, Any]) -> list[str]:
    """Errors of a ray.io object against its CRD schema (empty when valid)."""
    validator = crd_validators().get((obj["apiVersion"], obj["kind"]))
    if validator is None:
        return [f"no CRD serves {obj['apiVersion']} {obj['kind']}"]
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]


def ray_pod_templates(rayservice: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """group name -> pod template of a RayService ('head' for the head group)."""
    cluster = rayservice["spec"]["rayClusterConfig"]
    templates = {"head": cluster["headGroupSpec"]["template"]}
    for group in cluster.get("workerGroupSpecs", []):
        templates[group["groupName"]] = group["template"]
    return templates


def worker_groups(rayservice: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {g["groupName"]: g for g in rayservice["spec"]["rayClusterConfig"].get("workerGroupSpecs", [])}


def gpus(container: dict[str, Any]) -> tuple[int, int]:
    """(request, limit) of nvidia.com/gpu of a container, 0 where absent."""
    res = container.get("resources") or {}
    return (int((res.get("requests") or {}).get("nvidia.com/gpu", 0)),
            int((res.get("limits") or {}).get("nvidia.com/gpu", 0)))


def pod_specs(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every pod spec the chart renders: Deployments, test Pods and RayService groups."""
    specs: dict[str, dict[str, Any]] = {}
    for d in docs:
        name = f"{d['kind']}/{d['metadata']['name']}"
        if d["kind"] == "Deployment":
            specs[name] = d["spec"]["template"]["spec"]
        elif d["kind"] == "Pod":
            specs[name] = d["spec"]
        elif d["kind"] == "RayService":
            for group, template in ray_pod_templates(d).items():
                specs[f"{name}/{group}"] = template["spec"]
    return specs
