"""The Ray Serve path: the Engine deployment in a replica process of a local Ray cluster sets its
telemetry up from the environment; its spans reach a real OTLP receiver under the gateway's span
(the traceparent crosses Serve's gRPC proxy) and its Prometheus endpoint serves the engine metrics."""
from __future__ import annotations

import urllib.request

import pytest

from tests.services import free_port
from tests.telemetry.conftest import Client, make_memory_telemetry
from tests.telemetry.otlp_receiver import OtlpReceiver

pytestmark = pytest.mark.slow

ENGINE = {"max_num_seqs": 4, "max_batch_tokens": 64, "prefill_chunk_size": 8, "kv_block_size": 4, "num_kv_blocks": 128}


async def test_serve_replica_spans_join_the_gateway_trace(tiny_path, tmp_path, monkeypatch):
    from minimax_m1.gateway.config import BillingConfig, GatewayConfig, UpstreamConfig
    from minimax_m1.gateway.server import start_gateway
    from minimax_m1.serving.local import LocalServe

    receiver = OtlpReceiver().start()
    metrics_port = free_port()
    # Ray starts the replica's worker process from this environment.
    for key, value in {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_EXPORTER_OTLP_INSECURE": "true",
                       "OTEL_BSP_SCHEDULE_DELAY": "200", "OTEL_METRIC_EXPORT_INTERVAL": "1000",
                       "MINIMAX_M1_METRICS_PORT": str(metrics_port), "MINIMAX_M1_METRICS_HOST": "127.0.0.1",
                       "POD_NAME": "ray-head-0"}.items():
        monkeypatch.setenv(key, value)
    cluster = LocalServe.start({"model": {"path": tiny_path, "name": "tiny"}, "engine": ENGINE},
                               grpc_port=free_port(), http_port=free_port(), num_cpus=2)
    mt = make_memory_telemetry()
    gateway = None
    try:
        config = GatewayConfig(port=0, upstream=UpstreamConfig(target=cluster.target,
                                                               metadata=(("application", "minimax-m1"),)),
                               billing=BillingConfig(database=f"sqlite:///{tmp_path / 'g.sqlite3'}"))
        gateway = await start_gateway(config)
        client = Client(gateway.port, (await gateway.keys.create("acme")).key)
        msgs = await client.stream(input="hello through serve", max_output_tokens=5)
        await client.close()
        assert msgs[-1].usage.output_tokens == 5
        (gw,) = [s for s in mt.spans() if s.name == "minimax.m1.v1.Generation/GenerateStream"]
        gw_id, trace_id = format(gw.context.span_id, "016x"), format(gw.context.trace_id, "032x")

        def engine_span(r):
            return [s for s in r.spans() if s.name == "text_completion tiny" and s.parent_span_id == gw_id]
        (eng,) = receiver.wait_for(engine_span, 60, "the replica's span under the gateway span")
        assert eng.trace_id == trace_id and eng.resource["k8s.pod.name"] == "ray-head-0"
        assert eng.resource["service.name"] == "minimax-m1-engine"
        phases = {s.name for s in receiver.spans() if s.parent_span_id == eng.span_id}
        assert {"engine.queue", "engine.prefill", "engine.decode", "engine.finish"} <= phases
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
        assert "gen_ai_server_time_to_first_token_seconds_count" in text and "minimax_m1_engine_kv_blocks_total" in text
    finally:
        if gateway is not None:
            await gateway.stop(0)
        mt.telemetry.shutdown()
        cluster.stop()
        receiver.stop()
