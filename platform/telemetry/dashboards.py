"""The Grafana dashboards shipped in the chart, as tables of panels; written as JSON by

    python -m minimax_m1.telemetry.dashboards helm/minimax-m1/dashboards

The chart renders every dashboards/*.json into a ConfigMap for Grafana's sidecar. A test checks the
committed files equal what this module writes, and another has a real Prometheus evaluate every
expression in them against the running platform.

Expressions use Prometheus names (names.Instrument.prometheus) and Grafana's $__rate_interval,
$__range and the dashboards' own variables ($datasource, $layer).
"""
from __future__ import annotations

import json
import pathlib
import sys
from dataclasses import dataclass

from minimax_m1.telemetry import names as n

RATE = "$__rate_interval"


@dataclass(frozen=True)
class Panel:
    title: str
    targets: tuple[tuple[str, str], ...]  # (expr, legend)
    unit: str = "short"
    kind: str = "timeseries"  # timeseries | stat | heatmap
    width: int = 12
    description: str = ""
    repeat: str = ""  # a variable to repeat the panel over


def _quantiles(bucket: str, by: str = "") -> tuple[tuple[str, str], ...]:
    group = f"le, {by}" if by else "le"
    suffix = f" {{{{{by}}}}}" if by else ""
    return tuple((f"histogram_quantile({q}, sum by ({group}) (rate({bucket}[{RATE}])))", f"p{int(q * 100)}{suffix}")
                 for q in (0.5, 0.9, 0.99))


REQUESTS = n.GATEWAY_REQUESTS.prometheus
ERRORS = f'{REQUESTS}{{rpc_response_status_code!="OK"}}'
LOAD = n.EXPERT_LOAD.prometheus

OVERVIEW = (
    Panel("Gateway requests/s by method", ((f"sum by (rpc_method) (rate({REQUESTS}[{RATE}]))", "{{rpc_method}}"),),
          "reqps"),
    Panel("Errors/s by status code", ((f"sum by (rpc_response_status_code) (rate({ERRORS}[{RATE}]))",
                                       "{{rpc_response_status_code}}"),), "reqps"),
    Panel("Error ratio", ((f"sum(rate({ERRORS}[{RATE}])) / sum(rate({REQUESTS}[{RATE}]))", "errors"),),
          "percentunit", "stat", 6),
    Panel("Engine requests/s", ((f"sum(rate({n.REQUEST_DURATION.prometheus}_count[{RATE}]))", "requests"),),
          "reqps", "stat", 6),
    Panel("Time to first token", _quantiles(f"{n.TIME_TO_FIRST_TOKEN.prometheus}_bucket"), "s"),
    Panel("Time per output token", _quantiles(f"{n.TIME_PER_OUTPUT_TOKEN.prometheus}_bucket"), "s"),
    Panel("Tokens/s by type", ((f"sum by (gen_ai_token_type) (rate({n.ENGINE_TOKENS.prometheus}[{RATE}]))",
                                "{{gen_ai_token_type}}"),), "short"),
    Panel("Engine request duration", _quantiles(f"{n.REQUEST_DURATION.prometheus}_bucket"), "s"),
    Panel("Gateway RPC duration p99 by method",
          ((f"histogram_quantile(0.99, sum by (le, rpc_method) (rate({n.RPC_DURATION.prometheus}_bucket[{RATE}])))",
            "{{rpc_method}}"),), "s", width=24),
)

CAPACITY = (
    Panel("Running batch size", ((f"sum by (instance) ({n.BATCH_SIZE.prometheus})", "{{instance}}"),)),
    Panel("Queue depth", ((f"sum by (instance) ({n.QUEUE_DEPTH.prometheus})", "{{instance}}"),)),
    Panel("State slots", ((f"sum by (instance) ({n.SLOTS_USED.prometheus})", "used {{instance}}"),
                          (f"sum by (instance) ({n.SLOTS_TOTAL.prometheus})", "total {{instance}}"))),
    Panel("KV blocks", ((f"sum by (instance) ({n.BLOCKS_USED.prometheus})", "used {{instance}}"),
                        (f"sum by (instance) ({n.BLOCKS_TOTAL.prometheus})", "total {{instance}}"))),
    Panel("State slot utilisation", ((f"sum({n.SLOTS_USED.prometheus}) / sum({n.SLOTS_TOTAL.prometheus})", "slots"),),
          "percentunit", "stat", 6),
    Panel("KV block utilisation", ((f"sum({n.BLOCKS_USED.prometheus}) / sum({n.BLOCKS_TOTAL.prometheus})", "blocks"),),
          "percentunit", "stat", 6),
    Panel("Model-instance restarts (1h)",
          ((f"sum by (gen_ai_request_model) (increase({n.INSTANCE_RESTARTS.prometheus}[1h]))",
            "{{gen_ai_request_model}}"),), "short", "stat", 12),
    Panel("Preemptions/s", ((f"sum by (instance) (rate({n.PREEMPTIONS.prometheus}[{RATE}]))", "{{instance}}"),)),
    Panel("Engine steps/s", ((f"sum by (instance) (rate({n.STEPS.prometheus}[{RATE}]))", "{{instance}}"),)),
)

_LOAD_RATE = f"sum by (layer, expert) (rate({LOAD}[{RATE}]))"
MOE = (
    Panel("Expert load, layer $layer", ((f'sum by (expert) (rate({LOAD}{{layer=~"$layer"}}[{RATE}]))', "{{expert}}"),),
          "short", "heatmap", 8, "Activations/s per expert (rows) over time", repeat="layer"),
    Panel("Imbalance (max / mean) per layer", ((f"max by (layer) ({n.EXPERT_IMBALANCE.prometheus})", "layer {{layer}}"),),
          "short", description="From the engine's recent-steps window; 1 means every expert gets equal load"),
    Panel("Imbalance over the rate window",
          ((f"max by (layer) ({_LOAD_RATE}) / avg by (layer) ({_LOAD_RATE})", "layer {{layer}}"),), "short"),
    Panel("Worst layer imbalance", ((f"max({n.EXPERT_IMBALANCE.prometheus})", "max"),), "short", "stat", 6),
    Panel("Expert activations/s", ((f"sum(rate({LOAD}[{RATE}]))", "activations"),), "short", "stat", 6),
)

TENANTS = (
    Panel("Tokens/s by tenant", ((f"sum by (tenant, gen_ai_token_type) (rate({n.GATEWAY_TOKENS.prometheus}[{RATE}]))",
                                  "{{tenant}} {{gen_ai_token_type}}"),)),
    Panel("Billed tokens in range", (("sum by (tenant, gen_ai_token_type) (increase(gen_ai_client_token_usage_sum[$__range]))",
                                      "{{tenant}} {{gen_ai_token_type}}"),), kind="stat",
          description="From the otel_metrics billing hook (gen_ai.client.token.usage)"),
    Panel("Billed requests/s by tenant and status",
          ((f"sum by (tenant, status) (rate(minimax_m1_billing_requests_total[{RATE}]))", "{{tenant}} {{status}}"),),
          "reqps"),
    Panel("Quota rejections/s", ((f"sum by (tenant, limit) (rate({n.QUOTA_REJECTIONS.prometheus}[{RATE}]))",
                                  "{{tenant}} {{limit}}"),), "reqps"),
    Panel("Billing outbox lag", ((f"max by (hook) ({n.OUTBOX_LAG.prometheus})", "{{hook}}"),), "s"),
    Panel("Billing outbox pending", ((f"sum by (hook) ({n.OUTBOX_PENDING.prometheus})", "{{hook}}"),)),
)

DASHBOARDS = {
    "minimax-m1-overview": ("MiniMax-M1 / Overview", OVERVIEW),
    "minimax-m1-capacity": ("MiniMax-M1 / Capacity", CAPACITY),
    "minimax-m1-moe": ("MiniMax-M1 / MoE experts", MOE),
    "minimax-m1-tenants": ("MiniMax-M1 / Tenants", TENANTS),
}

_DATASOURCE_VAR = {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source"}
_LAYER_VAR = {"name": "layer", "type": "query", "label": "Layer", "datasource": {"type": "prometheus", "uid": "${datasource}"},
              "definition": f"label_values({LOAD}, layer)",
              "query": {"query": f"label_values({LOAD}, layer)", "refId": "layers"},
              "refresh": 2, "multi": True, "includeAll": True, "current": {"text": "All", "value": "$__all"},
              "sort": 3}


def _panel(i: int, p: Panel, x: int, y: int) -> dict:
    panel = {
        "id": i, "type": p.kind, "title": p.title, "description": p.description,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": p.width, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": p.unit}, "overrides": []},
        "targets": [{"refId": chr(ord("A") + k), "expr": expr, "legendFormat": legend,
                     **({"format": "heatmap"} if p.kind == "heatmap" else {})}
                    for k, (expr, legend) in enumerate(p.targets)],
    }
    if p.kind == "timeseries":
        panel["options"] = {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}}
    elif p.kind == "heatmap":
        panel["options"] = {"calculate": False, "yAxis": {"axisLabel": "expert"}, "color": {"scheme": "Oranges"},
                            "cellGap": 1}
    if p.repeat:
        panel.update({"repeat": p.repeat, "repeatDirection": "h", "maxPerRow": 3})
    return panel


def dashboard(uid: str) -> dict:
    title, panels = DASHBOARDS[uid]
    out, x, y = [], 0, 0
    for i, p in enumerate(panels, 1):
        if x + p.width > 24:
            x, y = 0, y + 8
        out.append(_panel(i, p, x, y))
        x += p.width
    variables = [_DATASOURCE_VAR] + ([_LAYER_VAR] if any(p.repeat == "layer" for p in panels) else [])
    return {"title": title, "uid": uid, "schemaVersion": 39, "version": 1, "editable": True, "tags": ["minimax-m1"],
            "time": {"from": "now-1h", "to": "now"}, "refresh": "30s", "templating": {"list": variables},
            "panels": out}


def render(uid: str) -> str:
    return json.dumps(dashboard(uid), indent=2) + "\n"


def write(folder: str | pathlib.Path) -> list[pathlib.Path]:
    folder = pathlib.Path(folder)
    paths = []
    for uid in DASHBOARDS:
        path = folder / f"{uid}.json"
        path.write_text(render(uid))
        paths.append(path)
    return paths


if __name__ == "__main__":
    for written in write(sys.argv[1] if len(sys.argv) > 1 else "helm/minimax-m1/dashboards"):
        print(written)
