"""The shipped dashboards: generated from minimax_m1.telemetry.dashboards, well-formed, and every
metric they query is one the platform emits (a real Prometheus evaluates them in
test_prometheus.py)."""
from __future__ import annotations

import json
import pathlib
import re

import pytest

from minimax_m1.telemetry import dashboards, names

CHART_DASHBOARDS = pathlib.Path(__file__).resolve().parents[2] / "helm" / "minimax-m1" / "dashboards"
# Emitted by the gateway's otel_metrics billing hook (minimax_m1.gateway.hooks), not by names.ALL.
BILLING_HOOK_METRICS = {i.prometheus for i in (names.TOKEN_USAGE, names.BILLING_REQUESTS, names.BILLING_EXPERT_ACTIVATIONS,
                                                names.BILLING_COMPUTE_TIME)}
FUNCTIONS = {"sum", "rate", "increase", "max", "avg", "by", "histogram_quantile", "label_values", "le"}


def all_exprs() -> list[tuple[str, str]]:
    out = []
    for path in sorted(CHART_DASHBOARDS.glob("*.json")):
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            out += [(f"{path.name}: {panel['title']}", t["expr"]) for t in panel["targets"]]
    return out


def emitted() -> set[str]:
    base = {i.prometheus for i in names.ALL} | BILLING_HOOK_METRICS
    return base | {b + s for b in base for s in ("_bucket", "_sum", "_count")}


def test_committed_dashboards_match_the_generator():
    committed = {p.stem for p in CHART_DASHBOARDS.glob("*.json")}
    assert committed == set(dashboards.DASHBOARDS), "run: python -m minimax_m1.telemetry.dashboards"
    for uid in dashboards.DASHBOARDS:
        assert (CHART_DASHBOARDS / f"{uid}.json").read_text() == dashboards.render(uid), uid


@pytest.mark.parametrize("uid, wanted", [
    ("minimax-m1-overview", ["time_to_first_token", "time_per_output_token", "tokens_total", "rpc_response_status_code"]),
    ("minimax-m1-capacity", ["batch_size", "queue_depth", "state_slots", "kv_blocks"]),
    ("minimax-m1-moe", ["expert_load_total", "expert_imbalance"]),
    ("minimax-m1-tenants", ["gateway_tokens_total", "quota_rejections_total", "outbox_lag"]),
])
def test_each_dashboard_covers_its_signals(uid, wanted):
    board = json.loads((CHART_DASHBOARDS / f"{uid}.json").read_text())
    text = " ".join(t["expr"] for p in board["panels"] for t in p["targets"])
    assert all(w in text for w in wanted), [w for w in wanted if w not in text]
    assert board["uid"] == uid and board["title"] and board["templating"]["list"][0]["type"] == "datasource"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    assert all(p["datasource"]["uid"] == "${datasource}" for p in board["panels"])


def test_heatmap_repeats_per_layer():
    board = json.loads((CHART_DASHBOARDS / "minimax-m1-moe.json").read_text())
    heat = [p for p in board["panels"] if p["type"] == "heatmap"]
    assert heat and heat[0]["repeat"] == "layer" and heat[0]["targets"][0]["format"] == "heatmap"
    assert any(v["name"] == "layer" for v in board["templating"]["list"])


def test_every_queried_metric_is_emitted():
    known = emitted()
    for where, expr in all_exprs():
        bare = re.sub(r"\{[^}]*\}", "", re.sub(r"by \([^)]*\)", "", expr))  # drop groupings and matchers
        idents = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*(?=\s*[\[)])", bare))
        metrics = {i for i in idents if i not in FUNCTIONS and "_" in i and not i.startswith("__")}
        assert metrics, (where, expr)
        assert metrics <= known, (where, metrics - known)
