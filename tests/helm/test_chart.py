"""The chart: lint, render over the values matrix, offline schema validation, the serving contract,
the plan arithmetic, and the rules that reject bad values. Needs only the helm binary."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest
import yaml

from tests.helm.chart import (
    CHART,
    VALUES_MATRIX,
    HelmError,
    by_kind,
    crd_dir,
    find_tool,
    gpus,
    helm,
    one,
    pod_specs,
    ray_pod_templates,
    render,
    validate_crd_object,
    validate_kubernetes,
    worker_groups,
)

pytestmark = pytest.mark.skipif(find_tool("helm") is None,
                                reason="helm binary not found (scripts/build_cluster_tools.sh helm)")

MATRIX = [None, *VALUES_MATRIX]  # None: the chart's defaults
MATRIX_IDS = ["defaults", *(p.name.removesuffix("-values.yaml") for p in VALUES_MATRIX)]
MONITORING_API = "monitoring.coreos.com/v1"


def files(values: pathlib.Path | None) -> list[pathlib.Path]:
    return [values] if values else []


def values_file(name: str) -> pathlib.Path:
    return CHART / "ci" / f"{name}-values.yaml"


def test_matrix_covers_the_plans():
    names = {p.name for p in VALUES_MATRIX}
    assert {"cpu-demo-values.yaml", "release-gpu-values.yaml", "colocated-8gpu-values.yaml"} <= names


@pytest.mark.parametrize("values", MATRIX, ids=MATRIX_IDS)
def test_lint_strict(values):
    out = helm("lint", "--strict", str(CHART), *sum((["-f", str(v)] for v in files(values)), []))
    assert "0 chart(s) failed" in out


@pytest.mark.parametrize("values", MATRIX, ids=MATRIX_IDS)
def test_every_object_validates_offline(values):
    docs = render(files(values), api_versions=[MONITORING_API])
    assert docs, "nothing rendered"
    checked_crd = 0
    for obj in docs:
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["apiVersion"].startswith("ray.io/"):
            if crd_dir() is None:
                pytest.skip("ray-operator CRDs not found (scripts/build_cluster_tools.sh kuberay)")
            errors = validate_crd_object(obj)
            assert not errors, f"{name} violates the KubeRay CRD schema: {errors[:5]}"
            # KubeRay's CRD embeds the pod template; validate it against Kubernetes' own schema too.
            for group, template in ray_pod_templates(obj).items():
                validate_kubernetes({"apiVersion": "v1", "kind": "PodTemplate",
                                     "metadata": {"name": f"{obj['metadata']['name']}-{group}"},
                                     "template": template})
            checked_crd += 1
        elif obj["apiVersion"].startswith("monitoring.coreos.com/"):
            # No schema ships for the Prometheus Operator's CRDs; check the fields it needs.
            spec = obj["spec"]
            assert spec["selector"]["matchLabels"], name
            endpoints = spec.get("podMetricsEndpoints") or spec.get("endpoints")
            assert endpoints and all(e["port"] in ("metrics", "engine-metrics") for e in endpoints), name
        else:
            validate_kubernetes(obj)
    assert checked_crd == 1


def test_the_validator_rejects_what_kubernetes_rejects():
    # Guard against a validator that passes everything.
    import kubernetes_validate

    docs = render([values_file("cpu-demo")])
    deployment = one(docs, "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["resourcez"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_kubernetes(deployment)
    if crd_dir() is None:
        pytest.skip("ray-operator CRDs not found (scripts/build_cluster_tools.sh kuberay)")
    rs = one(docs, "RayService")
    rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replicaz"] = 3
    rs["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"]["num-gpus"] = 0
    errors = validate_crd_object(rs)
    assert any("replicaz" in e for e in errors) and any("num-gpus" in e for e in errors), errors


# --- the serving contract ---------------------------------------------------------------------

def serve_config(docs) -> dict:
    return yaml.safe_load(one(docs, "RayService")["spec"]["serveConfigV2"])


def test_serve_config_carries_the_plan_model_and_engine():
    docs = render([values_file("release-gpu")])
    config = serve_config(docs)
    assert config["grpc_options"] == {
        "port": 9000,
        "grpc_servicer_functions": ["minimax_m1._generated.generation_pb2_grpc.add_GenerationServicer_to_server"],
    }
    [app] = config["applications"]
    assert app["name"] == "minimax-m1"
    assert app["import_path"] == "minimax_m1.serving.app:build_app"
    args = app["args"]
    # hf:// ids are downloaded by the init container; the engine gets the local path.
    assert args["model"] == {"uri": "pvc:///models/MiniMaxAI/MiniMax-M1-80k", "name": "MiniMax-M1-80k"}
    assert args["plan"] == {"tp": 8, "ep": 32, "placement": "disaggregated",
                            "gpus_per_attention_worker": 1, "gpus_per_expert_worker": 1}
    assert args["engine"] == {"max_num_seqs": 128, "max_batch_tokens": 32768, "prefill_chunk_size": 8192,
                              "kv_block_size": 256, "num_kv_blocks": 16384, "num_state_slots": 256}
    assert args["autoscaling_config"] == {"min_replicas": 1, "initial_replicas": 1, "max_replicas": 3,
                                          "target_ongoing_requests": 64}
    for v in [*args["plan"].values(), *args["engine"].values()]:
        assert not isinstance(v, float), "numbers must render as integers"


def test_hf_model_is_fetched_by_an_init_container_onto_the_models_volume():
    docs = render([values_file("release-gpu")])
    for group, template in ray_pod_templates(one(docs, "RayService")).items():
        [init] = template["spec"]["initContainers"]
        assert init["args"][1:] == ["MiniMaxAI/MiniMax-M1-80k", "/models/MiniMaxAI/MiniMax-M1-80k"]
        assert "snapshot_download" in init["args"][0]
        assert {"name": "models", "mountPath": "/models"} in init["volumeMounts"]
        token = next(e for e in init["env"] if e["name"] == "HF_TOKEN")
        assert token["valueFrom"]["secretKeyRef"] == {"name": "hf-token", "key": "token"}
        mounts = {m["mountPath"]: m for m in template["spec"]["containers"][0]["volumeMounts"]}
        assert mounts["/models"]["readOnly"] is True


def test_hf_init_script_downloads_with_huggingface_hub(tmp_path, monkeypatch):
    # Run the init container's script here with huggingface_hub replaced by a recorder (the hub
    # cannot be reached from this machine): it must ask for the repo, revision and target.
    docs = render([values_file("release-gpu")], set_values=["model.revision=v1"])
    init = ray_pod_templates(one(docs, "RayService"))["attention"]["spec"]["initContainers"][0]
    fake = tmp_path / "huggingface_hub.py"
    fake.write_text("import json, os\n"
                    "def snapshot_download(**kw):\n"
                    "    open(os.environ['RECORD'], 'w').write(json.dumps(kw))\n")
    record = tmp_path / "record.json"
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "RECORD": str(record),
           **{e["name"]: e["value"] for e in init["env"] if "value" in e}}
    subprocess.run([sys.executable, "-c", init["args"][0], *init["args"][1:]], env=env, check=True)
    assert json.loads(record.read_text()) == {"repo_id": "MiniMaxAI/MiniMax-M1-80k", "revision": "v1",
                                              "local_dir": "/models/MiniMaxAI/MiniMax-M1-80k"}


def test_cpu_demo_writes_a_tiny_checkpoint_and_requests_no_gpu():
    docs = render([values_file("cpu-demo")])
    rs = one(docs, "RayService")
    for group, template in ray_pod_templates(rs).items():
        for c in template["spec"]["containers"]:
            assert gpus(c) == (0, 0), group
        # Every pod writes the same checkpoint (make-checkpoint's default seed is fixed), so the
        # ranks of one instance load identical weights.
        init = template["spec"]["initContainers"][0]
        assert init["command"] == ["minimax-m1", "make-checkpoint"]
        assert init["args"][0] == "/models/tiny"
    assert serve_config(docs)["applications"][0]["args"]["model"]["uri"] == "pvc:///models/tiny"
    assert "nvidia.com/gpu" not in json.dumps(docs)


# --- the plan -> worker groups ----------------------------------------------------------------

PLANS = {
    # values file -> {group: (pods per instance x initial, min, max, gpus per pod)}
    "defaults": {"attention": (1, 1, 2, 8), "experts": (4, 4, 8, 8)},
    "release-gpu": {"attention": (1, 1, 3, 8), "experts": (4, 4, 12, 8)},
    "colocated-8gpu": {"workers": (1, 1, 1, 8)},
    "two-gpus-per-expert": {"attention": (2, 2, 4, 4), "experts": (8, 8, 16, 8)},
    "cpu-demo": {"attention": (2, 2, 2, 0), "experts": (2, 2, 2, 0)},
}


@pytest.mark.parametrize("name", sorted(PLANS))
def test_worker_groups_follow_the_plan(name):
    docs = render([] if name == "defaults" else [values_file(name)])
    groups = worker_groups(one(docs, "RayService"))
    assert set(groups) == set(PLANS[name])
    for group_name, (replicas, lo, hi, gpu) in PLANS[name].items():
        g = groups[group_name]
        assert (g["replicas"], g["minReplicas"], g["maxReplicas"]) == (replicas, lo, hi), group_name
        [container] = g["template"]["spec"]["containers"]
        assert gpus(container) == (gpu, gpu), group_name
        if gpu:
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in \
                g["template"]["spec"]["tolerations"]
        role = g["template"]["metadata"]["labels"]["minimax-m1.io/role"]
        workers_per_pod = max(1, gpu // 1) if gpu else 1
        if name == "two-gpus-per-expert" and group_name == "experts":
            workers_per_pod = 4
        assert g["rayStartParams"]["resources"] == f'"{{\\"minimax_m1_{role}\\": {workers_per_pod}}}"'


def test_scheduling_constraints_reach_the_pods():
    docs = render([values_file("release-gpu")])
    experts = worker_groups(one(docs, "RayService"))["experts"]["template"]["spec"]
    assert experts["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert experts["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]


def test_shm_probes_and_security_on_every_pod():
    docs = render([values_file("release-gpu")])
    specs = pod_specs(docs)
    assert len(specs) == 5  # gateway, smoke test, ray head, attention, experts
    for name, spec in specs.items():
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, (name, c["name"])
            assert sc["allowPrivilegeEscalation"] is False, (name, c["name"])
            assert sc["capabilities"]["drop"] == ["ALL"], (name, c["name"])
        if "RayService" in name:
            shm = next(v for v in spec["volumes"] if v["name"] == "dshm")
            assert shm["emptyDir"]["medium"] == "Memory"
            c = spec["containers"][0]
            assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
            assert c["readinessProbe"] and c["livenessProbe"]
    gateway = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert gateway["readinessProbe"]["grpc"]["port"] == 50051


# --- the gateway ------------------------------------------------------------------------------

def test_gateway_runs_the_gateway_module_against_the_serve_service():
    docs = render([values_file("release-gpu")])
    dep = one(docs, "Deployment")
    [c] = dep["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["python", "-m", "minimax_m1.gateway"]
    assert {p["containerPort"] for p in c["ports"]} == {50051, 9464}
    env = {e["name"]: e for e in c["env"]}
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"] == "http://otel-collector.observability.svc:4317"
    init_env = {e["name"]: e for e in dep["spec"]["template"]["spec"]["initContainers"][0]["env"]}
    assert init_env["REDIS_URL"]["valueFrom"]["secretKeyRef"] == {"name": "minimax-m1-redis", "key": "dsn"}
    assert init_env["DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "minimax-m1-postgres", "key": "dsn"}
    config = json.loads(one(docs, "ConfigMap")["data"]["gateway.json"]) if len(by_kind(docs, "ConfigMap")) == 1 \
        else json.loads(next(d for d in by_kind(docs, "ConfigMap") if "gateway.json" in d["data"])["data"]["gateway.json"])
    serve_svc = one(docs, "RayService")["spec"]["serveService"]["metadata"]["name"]
    assert config["upstream"]["target"] == f"{serve_svc}.serving.svc:9000"
    assert config["upstream"]["metadata"] == {"application": "minimax-m1"}
    assert config["port"] == 50051 and config["host"] == "0.0.0.0"
    assert config["quotas"]["store"] == "redis"
    assert config["quotas"]["tenants"]["trial"]["max_concurrent"] == 2
    assert {h["kind"] for h in config["billing"]["hooks"]} == {"webhook", "otel_metrics"}
    assert "dsn" not in json.dumps(config) and "redis://" not in json.dumps(config)


def _run_render_config(docs, tmp_path, env):
    dep = one(docs, "Deployment")
    init = dep["spec"]["template"]["spec"]["initContainers"][0]
    cm = next(d for d in by_kind(docs, "ConfigMap") if "gateway.json" in d["data"])
    (tmp_path / "etc").mkdir()
    (tmp_path / "run").mkdir()
    (tmp_path / "etc" / "gateway.json").write_text(cm["data"]["gateway.json"])
    script = init["args"][0].replace("/etc/minimax-m1", str(tmp_path / "etc")).replace(
        "/run/minimax-m1", str(tmp_path / "run"))
    subprocess.run([*init["command"][:1], "-c", script], check=True,
                   env={**os.environ, **env}, executable=sys.executable)
    out = tmp_path / "run" / "gateway.json"
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    return json.loads(out.read_text())


def test_gateway_config_with_secrets_loads_in_the_gateway(tmp_path):
    # The render-config init container, run here, must produce a file the gateway's own config
    # loader accepts, with the DSNs from the Secrets filled in.
    gateway_config = pytest.importorskip("minimax_m1.gateway.config")
    docs = render([values_file("release-gpu")])
    config = _run_render_config(docs, tmp_path, {
        "POD_NAME": "gw-0", "REDIS_URL": "redis://redis:6379/0",
        "DATABASE_URL": "postgresql://u:p@pg/billing", "WEBHOOK_TOKEN": "t0k"})
    loaded = gateway_config.GatewayConfig.from_mapping(config)
    assert loaded.quotas.store == "redis" and loaded.quotas.redis_url == "redis://redis:6379/0"
    assert loaded.billing.database == "postgresql://u:p@pg/billing"
    assert loaded.billing.instance_id == "gw-0"
    assert loaded.upstream.metadata == (("application", "minimax-m1"),)
    assert loaded.quotas.limits_for("trial").requests_per_minute == 20
    webhook = next(h for h in loaded.billing.hooks if h.kind == "webhook")
    assert webhook.url == "https://billing.example.com/usage"
    assert dict(webhook.headers) == {"authorization": "Bearer t0k"}
    # And the gateway process accepts the container's command line with that file.
    gateway_main = pytest.importorskip("minimax_m1.gateway.__main__")
    [container] = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    argv = [str(tmp_path / "run" / "gateway.json") if a == "/run/minimax-m1/gateway.json" else a
            for a in container["args"]]
    args = gateway_main.build_parser().parse_args(argv)
    assert args.metrics_port == 9464
    assert gateway_main.config_from_args(args) == loaded


def test_demo_gateway_config_loads_with_the_embedded_defaults(tmp_path):
    gateway_config = pytest.importorskip("minimax_m1.gateway.config")
    docs = render([values_file("cpu-demo")])
    loaded = gateway_config.GatewayConfig.from_mapping(_run_render_config(docs, tmp_path, {"POD_NAME": "gw"}))
    assert loaded.quotas.store == "memory"
    assert loaded.billing.database is None and loaded.billing.hooks == ()


def test_gateway_objects_follow_replicas_and_autoscaling():
    demo = render([values_file("cpu-demo")])
    assert one(demo, "Deployment")["spec"]["replicas"] == 1
    assert not by_kind(demo, "HorizontalPodAutoscaler") and not by_kind(demo, "PodDisruptionBudget")
    release = render([values_file("release-gpu")])
    assert "replicas" not in one(release, "Deployment")["spec"]  # the HPA owns it
    hpa = one(release, "HorizontalPodAutoscaler")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 12)
    assert one(release, "PodDisruptionBudget")["spec"]["minAvailable"] == 1
    assert one(release, "ServiceAccount")
    assert len(by_kind(release, "NetworkPolicy")) == 2
    assert not by_kind(render([values_file("colocated-8gpu")]), "NetworkPolicy")


def test_monitors_render_only_when_the_prometheus_operator_api_exists():
    assert not [d for d in render() if d["apiVersion"].startswith("monitoring.coreos.com")]
    docs = render(api_versions=[MONITORING_API])
    pm, sm = one(docs, "PodMonitor"), one(docs, "ServiceMonitor")
    assert [e["port"] for e in pm["spec"]["podMetricsEndpoints"]] == ["metrics", "engine-metrics"]
    # the engine's endpoint is a named container port of every Ray pod, with its env var set
    rs = one(docs, "RayService")["spec"]["rayClusterConfig"]
    pods = [rs["headGroupSpec"]["template"]] + [g["template"] for g in rs["workerGroupSpecs"]]
    for pod in pods:
        container = pod["spec"]["containers"][0]
        assert {"name": "engine-metrics", "containerPort": 9465} in container["ports"]
        assert {"name": "MINIMAX_M1_METRICS_PORT", "value": "9465"} in container["env"]
    config_map = [d for d in by_kind(docs, "ConfigMap") if "gateway.json" in d.get("data", {})][0]
    gateway = json.loads(config_map["data"]["gateway.json"])
    assert any(h["kind"] == "otel_metrics" for h in gateway["billing"]["hooks"]), "billed-usage metrics feed the tenants dashboard"
    assert sm["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "gateway"


def test_dashboards_become_labelled_configmaps():
    dashboards = sorted((CHART / "dashboards").glob("*.json"))
    assert dashboards
    cms = [d for d in render() if d["kind"] == "ConfigMap" and d["metadata"]["labels"].get("grafana_dashboard") == "1"]
    assert len(cms) == len(dashboards)
    for cm in cms:
        [(key, text)] = cm["data"].items()
        dashboard = json.loads(text)
        assert dashboard == json.loads((CHART / "dashboards" / key).read_text())
        assert dashboard["title"] and dashboard["panels"]
    assert not [d for d in render(set_values=["monitoring.dashboards.enabled=false"])
                if (d["metadata"].get("labels") or {}).get("grafana_dashboard")]


def test_helm_test_pod_runs_an_sdk_generate_call():
    docs = render([values_file("cpu-demo")])
    pod = one(docs, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    [c] = pod["spec"]["containers"]
    assert c["command"] == ["minimax-m1", "generate"]
    assert c["args"][-1] == "Hello" and "--max-output-tokens" in c["args"]
    env = {e["name"]: e for e in c["env"]}
    gateway = one(docs, "Service")
    assert env["MINIMAX_M1_ENDPOINT"]["value"] == f"grpc://{gateway['metadata']['name']}.serving.svc:50051"
    assert env["MINIMAX_M1_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "minimax-m1-demo-key", "key": "api-key"}
    # And the CLI accepts exactly those arguments.
    from minimax_m1.cli.main import build_parser

    args = build_parser().parse_args([*c["command"][1:], *c["args"]])
    assert (args.model, args.max_output_tokens, args.input) == ("minimax-m1-tiny", 4, "Hello")


# --- rejected values --------------------------------------------------------------------------

REJECTED = {
    "ep-not-dividing-32": (["plan.ep=3"], ["/plan/ep", "must be one of 1, 2, 4, 8, 16, 32"]),
    "tp-not-dividing-64": (["plan.tp=24"], ["/plan/tp", "must be one of 1, 2, 4, 8, 16, 32, 64"]),
    "ep-not-dividing-other-experts": (["model.numExperts=6", "plan.ep=4"],
                                      ["plan.ep=4 must divide model.numExperts=6"]),
    "tp-not-dividing-other-heads": (["model.numAttentionHeads=12", "plan.tp=8"],
                                    ["plan.tp=8 must divide model.numAttentionHeads=12"]),
    "colocated-tp-ne-ep": (["plan.placement=colocated", "plan.ep=16"], ["plan.tp (8) must equal plan.ep (16)"]),
    "unknown-placement": (["plan.placement=spread"], ["/plan/placement", "disaggregated", "colocated"]),
    "pods-not-filled": (["ray.workerGroups.experts.gpusPerPod=6"],
                        ["experts group has 32 workers per model instance, which do not fill whole pods"]),
    "gpu-pod-cpu-plan": (["plan.gpusPerExpertWorker=0"], ["experts group has gpusPerPod=8 but the plan gives its workers 0 GPUs"]),
    "bad-model-uri": (["model.uri=s3://bucket/m"], ["/model/uri"]),
    "pvc-without-claim": (["model.uri=pvc:///models/m"], ["set model.storage.claimName"]),
    "replicas-without-redis": (["gateway.replicas=3"], ["gateway.replicas > 1 needs gateway.redis.secretName"]),
    "autoscaling-order": (["autoscaling.min_replicas=3"], ["min_replicas (3) <= initial_replicas (1)"]),
    "chunk-over-batch": (["engine.prefillChunkSize=65536"], ["engine.prefillChunkSize (65536) cannot exceed"]),
    "typo-key": (["plan.tpp=8"], ["/plan", "tpp"]),
    "negative-gpus": (["ray.workerGroups.attention.gpusPerPod=-1"], ["gpusPerPod", "minimum"]),
}


@pytest.mark.parametrize("case", sorted(REJECTED))
def test_bad_values_are_rejected_with_a_clear_message(case):
    set_values, expected = REJECTED[case]
    with pytest.raises(HelmError) as info:
        render(set_values=set_values)
    message = str(info.value)
    for fragment in expected:
        assert fragment in message, f"{case}: {fragment!r} not in {message!r}"


def test_names_fit_kubernetes_limits():
    long_release = "a-53-character-release-name-which-is-helms-own-limits"
    assert len(long_release) == 53
    out = helm("template", long_release, str(CHART), "--kube-version", "1.37.0")
    for doc in yaml.safe_load_all(out):
        if doc:
            assert len(doc["metadata"]["name"]) <= 63, doc["metadata"]["name"]
