"""The rest of the server surface: health, reflection, CountTokens/ListModels, TLS and mTLS, config,
the local key for `minimax-m1 serve`, and billing details that span calls."""
from __future__ import annotations

import pathlib
import shutil
import subprocess

import grpc
import pytest

from minimax_m1._generated import generation_pb2 as pb
from minimax_m1._generated import generation_pb2_grpc as pb_grpc
from minimax_m1.gateway.__main__ import build_parser, config_from_args
from minimax_m1.gateway.config import GatewayConfig, QuotaLimits, TlsConfig, UpstreamConfig, load_config
from minimax_m1.gateway.keys import KeyStore, ensure_local_key
from minimax_m1.gateway.storage import open_database
from tests.gateway.conftest import Client


async def test_health_and_reflection(gateway):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as ch:
        health = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="minimax.m1.v1.Generation"))
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        stream = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo()
        await stream.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        resp = await stream.read()
        await stream.done_writing()
        names = {s.name for s in resp.list_services_response.service}
        assert {"minimax.m1.v1.Generation", "grpc.health.v1.Health"} <= names


async def test_count_tokens_and_list_models_need_a_key(gateway, client):
    counted = await client.stub.CountTokens(pb.CountTokensRequest(input="12345678"), metadata=client.metadata)
    assert counted.input_tokens == 2
    models = await client.stub.ListModels(pb.ListModelsRequest(), metadata=client.metadata)
    assert [m.id for m in models.models] == ["fake-m1", "fake-m1-small"] and models.models[0].max_context == 4096
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.stub.ListModels(pb.ListModelsRequest())
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_retried_request_id_is_billed_per_attempt(gateway, client):
    first = await client.generate(input="x", max_output_tokens=2, request_id="same")
    second = await client.generate(input="x", max_output_tokens=2, request_id="same")
    assert first.request_id == second.request_id == "same"
    ids = sorted(r.record_id for r in await gateway.ledger.records())
    assert ids == ["same", "same#2"]


async def test_count_tokens_estimate_reserves_exactly(make_gateway, fake):
    # 40 input bytes are 10 fake tokens: the byte bound (44) would not fit a 30-token TPM; the count does.
    gw = await make_gateway(QuotaLimits(tokens_per_minute=30),
                            upstream=UpstreamConfig(target=fake.target, token_estimate="count_tokens"))
    c = Client(gw.port, (await gw.keys.create("acme")).key)
    resp = await c.generate(input="x" * 40, max_output_tokens=20)
    assert resp.usage.input_tokens == 10
    await c.close()


async def test_budget_survives_a_restart_of_the_memory_store(make_gateway):
    limits = QuotaLimits(budget_tokens=60, budget_period="day")
    gw = await make_gateway(limits)
    key = (await gw.keys.create("acme")).key
    c = Client(gw.port, key)
    await c.generate(input="x", max_output_tokens=20)  # uses 21, reserved 25 next time
    await c.generate(input="x", max_output_tokens=20)
    await c.close()
    await gw.stop(0)
    gw2 = await make_gateway(limits)  # same database, fresh memory store: seeded with 42 used
    c = Client(gw2.port, key)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await c.generate(input="x", max_output_tokens=20)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "budget_tokens" in err.value.details()
    await c.close()


def make_certs(tmp: pathlib.Path) -> dict[str, str]:
    """A CA, a server cert for 127.0.0.1 and a client cert, made with the openssl binary."""
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=tmp, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
        "-keyout", "ca.key", "-out", "ca.pem")
    (tmp / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.csr")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "1",
            "-extfile", "san.cnf", "-out", f"{name}.pem")
    return {n: str(tmp / n) for n in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}


@pytest.fixture
def certs(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl binary not found (needed to make test certificates)")
    d = tmp_path / "certs"
    d.mkdir()
    return make_certs(d)


async def tls_generate(port: int, key: str, certs: dict[str, str], client_cert: bool) -> pb.GenerateResponse:
    read = lambda n: pathlib.Path(certs[n]).read_bytes()  # noqa: E731
    creds = grpc.ssl_channel_credentials(read("ca.pem"), *((read("client.key"), read("client.pem")) if client_cert else ()))
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds) as ch:
        return await pb_grpc.GenerationStub(ch).Generate(pb.GenerateRequest(input="x", max_output_tokens=1),
                                                        metadata=(("authorization", f"Bearer {key}"),), timeout=10)


async def test_tls_and_mtls(make_gateway, certs):
    gw = await make_gateway(tls=TlsConfig(cert_file=certs["server.pem"], key_file=certs["server.key"]))
    key = (await gw.keys.create("acme")).key
    assert (await tls_generate(gw.port, key, certs, client_cert=False)).usage.output_tokens == 1
    with pytest.raises(grpc.aio.AioRpcError) as err:  # plaintext is refused on a TLS port
        await Client(gw.port, key).generate(input="x", max_output_tokens=1, timeout=3)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE

    mtls = await make_gateway(tls=TlsConfig(cert_file=certs["server.pem"], key_file=certs["server.key"],
                                            client_ca_file=certs["ca.pem"]))
    assert (await tls_generate(mtls.port, key, certs, client_cert=True)).usage.output_tokens == 1
    with pytest.raises(grpc.aio.AioRpcError) as err:  # no client certificate
        await tls_generate(mtls.port, key, certs, client_cert=False)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_ensure_local_key(tmp_path):
    db = await open_database(f"sqlite:///{tmp_path / 'g.sqlite3'}")
    store = KeyStore(db)
    printed = await ensure_local_key(store, None)
    assert printed and (await store.lookup(printed)).tenant == "local"
    assert await ensure_local_key(store, None) is None  # shown once only
    assert await ensure_local_key(store, "my-own-local-key-123") is None
    assert (await store.lookup("my-own-local-key-123")).tenant == "local"
    assert await ensure_local_key(store, "my-own-local-key-123") is None  # registered once
    assert len(await store.list("local")) == 2
    await db.close()


def test_config_validation_names_the_field(tmp_path):
    with pytest.raises(ValueError, match="^port: must be in"):
        GatewayConfig(port=70000)
    with pytest.raises(ValueError, match="^budget_period: must be one of"):
        QuotaLimits(budget_period="week")
    with pytest.raises(ValueError, match="^upstream.token_estimate"):
        UpstreamConfig(token_estimate="guess")
    with pytest.raises(ValueError, match="^quotas.redis_url: required"):
        GatewayConfig.from_mapping({"quotas": {"store": "redis"}})
    with pytest.raises(ValueError, match="^billing.hooks.url: required"):
        GatewayConfig.from_mapping({"billing": {"hooks": [{"kind": "webhook"}]}})
    with pytest.raises(ValueError, match=r"^quotas.tenants.acme.rpm: unknown setting"):
        GatewayConfig.from_mapping({"quotas": {"tenants": {"acme": {"rpm": 5}}}})
    with pytest.raises(ValueError, match="^tls.cert_file: no such file"):
        TlsConfig(cert_file=str(tmp_path / "nope.pem"), key_file=str(tmp_path / "nope.key"))


def test_toml_config_and_flags(tmp_path):
    path = tmp_path / "gateway.toml"
    path.write_text("""
port = 9100
[upstream]
target = "serve:9000"
metadata = { application = "minimax-m1" }
[quotas.default]
requests_per_minute = 600
[quotas.tenants.acme]
tokens_per_minute = 100000
[billing]
database = "postgresql://gw@db/billing"
[[billing.hooks]]
kind = "webhook"
url = "https://billing.example/hook"
[[billing.hooks]]
kind = "otel_metrics"
""")
    config = load_config(path)
    assert config.upstream.metadata == (("application", "minimax-m1"),)
    assert config.quotas.limits_for("acme").tokens_per_minute == 100000
    assert config.quotas.limits_for("other").requests_per_minute == 600
    assert [h.name for h in config.billing.hooks] == ["webhook", "otel_metrics"]
    args = build_parser().parse_args(["--config", str(path), "--port", "0", "--upstream", "127.0.0.1:1",
                                      "--upstream-metadata", "application=x", "--redis-url", "redis://r:6379/0",
                                      "--instance-id", "gw-7"])
    flagged = config_from_args(args)
    assert (flagged.port, flagged.upstream.target, flagged.quotas.store, flagged.billing.instance_id) == \
        (0, "127.0.0.1:1", "redis", "gw-7")
    assert flagged.upstream.metadata == (("application", "x"),)


async def test_graceful_stop_closes_calls_in_flight(make_gateway, fake):
    import asyncio

    fake.model.behaviour.token_delay_s = 0.02
    gw = await make_gateway()
    c = Client(gw.port, (await gw.keys.create("acme")).key)
    stream = c.stream(input="x", max_output_tokens=1000, request_id="in-flight")
    await stream.read()
    stopping = asyncio.ensure_future(gw.stop(0.2))
    with pytest.raises(grpc.aio.AioRpcError):
        while await stream.read() is not grpc.aio.EOF:
            pass
    await stopping
    db = await open_database(f"sqlite:///{gw.ledger._db.path}")
    from minimax_m1.gateway.ledger import Ledger

    record = await Ledger(db, "observer", ()).get("in-flight")
    assert record.status == "CANCELLED" and 1 <= record.output_tokens < 1000
    await db.close()
    await c.close()


async def test_telemetry_spans_reach_upstream_and_quota_rejections_are_counted(make_gateway, fake):
    pytest.importorskip("minimax_m1.telemetry.gateway", reason="the telemetry package is not in this tree")
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from minimax_m1.telemetry.config import TelemetryConfig
    from minimax_m1.telemetry.gateway import gateway_telemetry
    from minimax_m1.telemetry.setup import setup_telemetry

    spans, reader = InMemorySpanExporter(), InMemoryMetricReader()
    tel = setup_telemetry(TelemetryConfig(service="gateway"), span_exporters=[spans], metric_readers=[reader],
                          simple_spans=True, install_as_current=False)
    gw = await make_gateway(QuotaLimits(requests_per_minute=1), telemetry=gateway_telemetry(tel))
    c = Client(gw.port, (await gw.keys.create("acme")).key)
    await c.generate(input="x", max_output_tokens=1)
    with pytest.raises(grpc.aio.AioRpcError):
        await c.generate(input="x", max_output_tokens=1)
    assert "traceparent" in fake.model.observed.metadata[-1]
    assert {s.name for s in spans.get_finished_spans()} == {"minimax.m1.v1.Generation/Generate"}
    points = {m.name: m.data.data_points for rm in reader.get_metrics_data().resource_metrics
              for sm in rm.scope_metrics for m in sm.metrics}
    (rejected,) = points["minimax_m1.gateway.quota.rejections"]
    assert rejected.value == 1 and dict(rejected.attributes) == {"tenant": "acme", "limit": "requests_per_minute"}
    await c.close()
    tel.shutdown()


def test_process_serves_prometheus_metrics_and_registers_the_env_key(fake_process_upstream, tmp_path):
    pytest.importorskip("minimax_m1.telemetry.setup", reason="the telemetry package is not in this tree")
    import os
    import sys
    import urllib.request

    from tests.conftest import REPO_ROOT
    from tests.services import free_port, wait_for_port

    port, metrics_port = free_port(), free_port()
    env = {**os.environ, "MINIMAX_M1_API_KEY": "bootstrap-key-0123456789", "MINIMAX_M1_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen([sys.executable, "-m", "minimax_m1.gateway", "--port", str(port), "--upstream",
                             fake_process_upstream, "--database", f"sqlite:///{tmp_path / 'g.sqlite3'}",
                             "--metrics-port", str(metrics_port)], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert b"gateway listening" in proc.stdout.readline()
        wait_for_port("127.0.0.1", metrics_port)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            resp = pb_grpc.GenerationStub(ch).Generate(pb.GenerateRequest(input="x", max_output_tokens=2),
                                                       metadata=(("authorization", "Bearer bootstrap-key-0123456789"),),
                                                       timeout=10)
        assert resp.usage.output_tokens == 2
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
        assert "minimax_m1_gateway_requests_total" in text
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
