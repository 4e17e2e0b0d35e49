"""The running platform as processes: a real Prometheus scrapes the gateway's and the engine's
endpoints while traffic flows and evaluates every PromQL expression of the shipped dashboards;
a real OTLP receiver gets both services' spans (one trace per request) and metrics."""
from __future__ import annotations

import math
import re
import time

import pytest

from tests.telemetry import prometheus
from tests.telemetry.otlp_receiver import OtlpReceiver
from tests.telemetry.platform_processes import PlatformProcesses, Traffic
from tests.telemetry.test_dashboards import CHART_DASHBOARDS, all_exprs

# What Grafana would put in for its variables (the scrape interval here is 1 s).
GRAFANA_VARIABLES = {"$__rate_interval": "20s", "$__range": "5m", "$layer": "0"}


@pytest.fixture(scope="module")
def receiver():
    r = OtlpReceiver().start()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def platform(tiny_path, receiver, tmp_path_factory):
    p = PlatformProcesses(tiny_path, str(tmp_path_factory.mktemp("platform")), receiver.endpoint).start()
    yield p
    p.stop()


def substitute(expr: str) -> str:
    for var, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


def template_queries() -> list[tuple[str, str]]:
    """The dashboards' variable queries, label_values(metric, label), as PromQL."""
    import json

    out = []
    for path in sorted(CHART_DASHBOARDS.glob("*.json")):
        for var in json.loads(path.read_text())["templating"]["list"]:
            if var["type"] == "query":
                m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", var["query"]["query"])
                assert m, var
                out.append((f"{path.name}: variable {var['name']}", f"group by ({m[2]}) ({m[1]})"))
    return out


def has_data(result: list[dict]) -> bool:
    return any(not math.isnan(float(r["value"][1])) for r in result)


@pytest.mark.skipif(not prometheus.available(), reason="prometheus binary not found (/usr/bin/prometheus)")
def test_prometheus_evaluates_every_dashboard_expression(platform):
    prom = prometheus.PrometheusServer({"minimax-m1-gateway": [f"127.0.0.1:{platform.gateway_metrics_port}"],
                                        "minimax-m1-engine": [f"127.0.0.1:{platform.engine_metrics_port}"]},
                                       scrape_interval="1s").start()
    try:
        prom.wait_targets_up(2)
        exprs = [(where, substitute(e)) for where, e in all_exprs()] + template_queries()
        assert len(exprs) >= 30
        missing: dict[str, str] = {}
        with Traffic(platform) as traffic:
            time.sleep(6)  # several scrapes with traffic in every rate window
            deadline = time.monotonic() + 40
            pending = list(exprs)
            while pending and time.monotonic() < deadline:
                missing = {}
                for where, expr in pending:
                    if not has_data(prom.query(expr)):
                        missing[where] = expr
                pending = [(w, e) for w, e in pending if w in missing]
                if pending:
                    time.sleep(1)
        assert traffic.codes.get("OK", 0) > 0 and traffic.codes.get("RESOURCE_EXHAUSTED", 0) > 0, traffic.codes
        assert traffic.codes.get("UNAUTHENTICATED", 0) > 0, traffic.codes
        assert not missing, f"dashboard expressions without data: {missing}\n{prom.targets_up()}"
        # The labels a cluster relies on: per-pod series and the engine's preemptions under load.
        pods = {r["metric"].get("k8s_pod_name") for r in prom.query("minimax_m1_engine_steps_total")}
        assert pods == {"engine-0"}
        codes = {r["metric"]["rpc_response_status_code"] for r in prom.query("minimax_m1_gateway_requests_total")}
        assert {"OK", "RESOURCE_EXHAUSTED", "UNAUTHENTICATED"} <= codes
    finally:
        prom.stop()


def test_otlp_receiver_gets_one_trace_per_request_and_both_services_metrics(platform, receiver):
    with Traffic(platform, streams=1):
        time.sleep(3)

    def linked(r: OtlpReceiver):
        spans = r.spans()
        gateway = {s.span_id: s for s in spans if s.resource.get("service.name") == "minimax-m1-gateway"
                   and s.name == "minimax.m1.v1.Generation/GenerateStream" and s.attributes.get("rpc.response.status_code") == "OK"
                   and s.attributes.get("minimax_m1.tenant") == "acme"}
        engine = [s for s in spans if s.resource.get("service.name") == "minimax-m1-engine"
                  and s.name == "text_completion tiny" and s.parent_span_id in gateway]
        for e in engine:
            phases = {s.name for s in spans if s.parent_span_id == e.span_id and s.trace_id == e.trace_id}
            if {"engine.queue", "engine.prefill", "engine.decode", "engine.finish"} <= phases:
                return gateway[e.parent_span_id], e
        return None

    gw, eng = receiver.wait_for(linked, 30, "a gateway span with the engine's spans under it")
    assert gw.trace_id == eng.trace_id and gw.parent_span_id == "" and gw.kind == 2 and eng.kind == 2  # SERVER
    assert "gen_ai.first_token" in eng.events
    assert gw.resource["k8s.pod.name"] == "gateway-0" and eng.resource["k8s.pod.name"] == "engine-0"
    assert eng.resource["service.instance.id"].startswith("engine-0-") and eng.resource["service.version"]
    assert gw.attributes["minimax_m1.tenant"] == "acme" and eng.attributes["gen_ai.usage.output_tokens"] == 8

    wanted = {("minimax-m1-engine", "gen_ai.server.time_to_first_token"),
              ("minimax-m1-engine", "gen_ai.server.time_per_output_token"),
              ("minimax-m1-engine", "minimax_m1.engine.expert.load"),
              ("minimax-m1-engine", "minimax_m1.engine.kv_blocks.used"),
              ("minimax-m1-gateway", "minimax_m1.gateway.requests"),
              ("minimax-m1-gateway", "gen_ai.client.token.usage"),
              ("minimax-m1-gateway", "minimax_m1.billing.outbox.lag")}
    receiver.wait_for(lambda r: wanted <= r.metric_names(), 30, f"metrics {wanted}")
    ttft = [m for res, name, m in receiver.metrics() if name == "gen_ai.server.time_to_first_token"]
    assert ttft[-1].histogram.data_points[0].count > 0
