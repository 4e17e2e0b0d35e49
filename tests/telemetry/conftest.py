"""Fixtures for the telemetry tests: in-memory exporters, and the platform (engine + gateway) on
real 127.0.0.1 sockets, in this process or as separate processes scraped and collected from."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from minimax_m1._generated import generation_pb2 as pb
from minimax_m1._generated import generation_pb2_grpc as pb_grpc
from minimax_m1.telemetry import Telemetry, TelemetryConfig, setup_telemetry

ENGINE = {"max_num_seqs": 4, "max_batch_tokens": 64, "prefill_chunk_size": 8, "kv_block_size": 4, "num_kv_blocks": 128}
PROMPT = "telemetry-secret-prompt: the quick brown fox"  # must never show up in spans by default


@pytest.fixture(scope="session")
def tiny_path(tmp_path_factory) -> str:
    from minimax_m1.model_shards.tiny import make_checkpoint

    path = str(tmp_path_factory.mktemp("tiny-telemetry"))
    make_checkpoint(path, seed=3)
    return path


@dataclass
class MemoryTelemetry:
    """A process telemetry whose spans and metrics stay in memory for assertions."""

    telemetry: Telemetry
    span_exporter: Any
    reader: Any

    def spans(self) -> list:
        return list(self.span_exporter.get_finished_spans())

    def metrics(self) -> dict[str, list[tuple[dict, Any]]]:
        """name -> [(attributes, data point)] from one collection."""
        out: dict[str, list[tuple[dict, Any]]] = {}
        data = self.reader.get_metrics_data()
        for rm in data.resource_metrics if data else ():
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    out.setdefault(m.name, []).extend((dict(p.attributes), p) for p in m.data.data_points)
        return out


def make_memory_telemetry(**config) -> MemoryTelemetry:
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter, reader = InMemorySpanExporter(), InMemoryMetricReader()
    tel = setup_telemetry(TelemetryConfig(service="platform", **config), span_exporters=[exporter],
                          metric_readers=[reader], simple_spans=True)
    return MemoryTelemetry(tel, exporter, reader)


@pytest.fixture
def memory_telemetry():
    mt = make_memory_telemetry()
    yield mt
    mt.telemetry.shutdown()


@pytest.fixture
def exact_telemetry():
    """Expert routing collected on every step, so the load counter is exact."""
    mt = make_memory_telemetry(expert_load_every=1)
    yield mt
    mt.telemetry.shutdown()


@dataclass
class Stack:
    """The engine (EngineServer on grpc.aio) and a real gateway in front of it, in this process."""

    engine_server: Any
    engine_port: int
    gateway: Any
    keys: dict[str, str]
    _closers: list = field(default_factory=list)

    def client(self, tenant: str | None = "acme") -> "Client":
        c = Client(self.gateway.port, self.keys.get(tenant) if tenant else None)
        self._closers.append(c)
        return c


class Client:
    def __init__(self, port: int, key: str | None):
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.stub = pb_grpc.GenerationStub(self.channel)
        self.metadata = (("authorization", f"Bearer {key}"),) if key else ()

    def generate(self, metadata=(), **fields):
        return self.stub.Generate(pb.GenerateRequest(**fields), metadata=self.metadata + tuple(metadata), timeout=60)

    async def stream(self, metadata=(), **fields) -> list:
        call = self.stub.GenerateStream(pb.GenerateRequest(**fields), metadata=self.metadata + tuple(metadata), timeout=60)
        return [m async for m in call]

    async def close(self):
        await self.channel.close()


@pytest.fixture
async def make_stack(tiny_path, tmp_path):
    """Factory: start engine + gateway under the installed telemetry (install it first)."""
    from minimax_m1.gateway.config import (BillingConfig, GatewayConfig, HookConfig, QuotaConfig, QuotaLimits,
                                           UpstreamConfig)
    from minimax_m1.gateway.server import start_gateway
    from minimax_m1.serving.app import EngineServer
    from minimax_m1.telemetry import current
    from tests.serving.grpc_adapter import serve

    stacks: list[tuple[Stack, Any]] = []

    async def make(engine: dict | None = None, limited_rpm: int = 1) -> Stack:
        engine_server = EngineServer({"model": {"path": tiny_path, "name": "tiny"}, "engine": engine or ENGINE})
        server, port = await serve(engine_server)
        quotas = QuotaConfig(tenants=(("limited", QuotaLimits(requests_per_minute=limited_rpm)),))
        billing = BillingConfig(database=f"sqlite:///{tmp_path / f'gw{len(stacks)}.sqlite3'}", outbox_poll_s=0.05,
                                hooks=(HookConfig(kind="otel_metrics", name="otel_metrics"),))
        config = GatewayConfig(port=0, upstream=UpstreamConfig(target=f"127.0.0.1:{port}"), quotas=quotas,
                               billing=billing, auth_cache_s=0.0)
        gateway = await start_gateway(config, meter_provider=current().meter_provider)
        keys = {t: (await gateway.keys.create(t)).key for t in ("acme", "limited")}
        stack = Stack(engine_server, port, gateway, keys)
        stacks.append((stack, server))
        return stack

    yield make
    for stack, server in stacks:
        for c in stack._closers:
            await c.close()
        await stack.gateway.stop(0)
        await server.stop(0)
        stack.engine_server.engine.shutdown()


def finite(values) -> bool:
    return any(not math.isnan(float(v)) for v in values)
