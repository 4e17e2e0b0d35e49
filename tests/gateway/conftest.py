"""Fixtures for the gateway tests: a fake model upstream and real gateways on 127.0.0.1 sockets."""
from __future__ import annotations

import dataclasses

import grpc
import pytest

from minimax_m1._generated import generation_pb2 as pb
from minimax_m1._generated import generation_pb2_grpc as pb_grpc
from minimax_m1.gateway.config import BillingConfig, GatewayConfig, QuotaConfig, QuotaLimits, UpstreamConfig
from minimax_m1.gateway.server import start_gateway
from tests.gateway.fake_model import FakeModel, FakeModelServer
from tests.services import postgres_server, redis_server  # noqa: F401  (fixtures)


@pytest.fixture
async def fake():
    server = await FakeModelServer(FakeModel()).start()
    yield server
    await server.stop()


def gateway_config(target: str, database: str, limits: QuotaLimits | None = None, **changes) -> GatewayConfig:
    quotas = changes.pop("quotas", QuotaConfig(default=limits or QuotaLimits()))
    billing = changes.pop("billing", BillingConfig(database=database, outbox_poll_s=0.05))
    upstream_cfg = changes.pop("upstream", UpstreamConfig(target=target, metadata=(("application", "minimax-m1"),)))
    return GatewayConfig(port=0, upstream=upstream_cfg, quotas=quotas, billing=billing, auth_cache_s=0.0, **changes)


@pytest.fixture
async def make_gateway(fake, tmp_path):
    """Factory: start a gateway in front of `fake` (SQLite ledger in tmp_path unless given)."""
    handles = []

    async def make(limits: QuotaLimits | None = None, hooks=(), telemetry=None, **changes):
        database = changes.pop("database", f"sqlite:///{tmp_path / 'gateway.sqlite3'}")
        config = gateway_config(fake.target, database, limits, **changes)
        handle = await start_gateway(config, hooks=hooks, telemetry=telemetry)
        handles.append(handle)
        return handle

    yield make
    for handle in handles:
        await handle.stop(0)


class Client:
    """A plain gRPC client of the gateway (the SDK is tested elsewhere)."""

    def __init__(self, port: int, key: str | None):
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.stub = pb_grpc.GenerationStub(self.channel)
        self.metadata = (("authorization", f"Bearer {key}"),) if key else ()

    def generate(self, timeout: float | None = 10.0, **fields):
        return self.stub.Generate(pb.GenerateRequest(**fields), metadata=self.metadata, timeout=timeout)

    def stream(self, timeout: float | None = 10.0, **fields):
        return self.stub.GenerateStream(pb.GenerateRequest(**fields), metadata=self.metadata, timeout=timeout)

    async def close(self):
        await self.channel.close()


@pytest.fixture
async def gateway(make_gateway):
    return await make_gateway()


@pytest.fixture
async def api_key(gateway):
    return (await gateway.keys.create("acme")).key


@pytest.fixture
async def client(gateway, api_key):
    c = Client(gateway.port, api_key)
    yield c
    await c.close()


def replace(obj, **changes):
    return dataclasses.replace(obj, **changes)


@pytest.fixture
def fake_process_upstream():
    """The fake model in its own process (for tests that run the gateway as a blocking subprocess)."""
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT
    from tests.services import free_port, wait_for_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tests.gateway.fake_model", "--port", str(port)], cwd=REPO_ROOT,
                            stdout=subprocess.DEVNULL)
    wait_for_port("127.0.0.1", port, proc=proc)
    yield f"127.0.0.1:{port}"
    proc.terminate()
    proc.wait(30)
