"""The ledger on SQLite and on a real PostgreSQL, the outbox, and the webhook and OpenTelemetry hooks."""
from __future__ import annotations

import asyncio

import grpc
import pytest

from minimax_m1.gateway.config import BillingConfig, HookConfig
from minimax_m1.gateway.hooks import OtelMetricsHook, OutboxDelivery
from minimax_m1.gateway.ledger import INTERRUPTED, Ledger
from minimax_m1.gateway.storage import open_database
from tests.gateway.conftest import Client
from tests.gateway.webhook_sink import WebhookSink


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    return request.getfixturevalue("postgres_server").create_database()


@pytest.fixture
async def db(database_url):
    backend = await open_database(database_url)
    yield backend
    await backend.close()


async def wait_until(predicate, timeout_s: float = 10.0):
    for _ in range(int(timeout_s / 0.02)):
        if await predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


async def test_record_lifecycle_is_idempotent(db):
    ledger = Ledger(db, "gw-a", hooks=["h"])
    rid = await ledger.open("req", "acme", "key_1", "m", reserved_tokens=50)
    await ledger.progress(rid, 3, 7, 56)
    assert (await ledger.get(rid)).output_tokens == 7
    assert await ledger.close(rid, "OK", 3, 9, 72, 12.5)
    assert not await ledger.close(rid, "OK", 3, 9, 72, 12.5)  # closing twice changes nothing
    await ledger.progress(rid, 3, 100, 0)  # a late progress write cannot reopen or change it
    record = await ledger.get(rid)
    assert (record.status, record.output_tokens, record.compute_ms) == ("OK", 9, 12.5)
    assert await ledger.outbox_pending("h") == 1
    # A retry with the same request id is a new attempt, billed on its own record.
    assert await ledger.open("req", "acme", "key_1", "m", 50) == "req#2"
    assert await ledger.open("req", "acme", "key_1", "m", 50) == "req#3"


async def test_recover_closes_own_and_stale_records_once(db):
    mine, other = Ledger(db, "gw-a", ["h"]), Ledger(db, "gw-b", ["h"])
    a = await mine.open("a", "acme", "k", "m", 10)
    await mine.progress(a, 2, 5, 0)
    b = await other.open("b", "acme", "k", "m", 10)
    assert await mine.recover(stale_after_s=3600) == [a]  # gw-b's record is alive
    assert await mine.recover(stale_after_s=3600) == []
    record = await mine.get(a)
    assert (record.status, record.output_tokens) == (INTERRUPTED, 5)
    assert await mine.recover(stale_after_s=0) == [b]  # now stale
    assert await mine.outbox_pending("h") == 2


async def test_outbox_claims_are_exclusive_and_backoff_on_failure(db):
    ledger = Ledger(db, "gw-a", ["h"])
    for i in range(5):
        await ledger.close(await ledger.open(f"r{i}", "t", "k", "m", 1), "OK", 1, 1, 0, 1.0)
    first = await ledger.claim("h", limit=3, lease_s=30)
    second = await Ledger(db, "gw-b", ["h"]).claim("h", limit=10, lease_s=30)
    assert [i.record.record_id for i in first] == ["r0", "r1", "r2"]
    assert [i.record.record_id for i in second] == ["r3", "r4"]  # never the same row twice
    delay = await ledger.failed(first, "HTTP 503", backoff_base_s=5, backoff_max_s=60)
    assert 2.5 <= delay <= 5
    assert await ledger.claim("h", 10, 30) == []  # backing off, and the rest is claimed
    await ledger.delivered([i.outbox_id for i in second])
    assert await ledger.outbox_pending("h") == 3


async def test_webhook_gets_every_record_exactly_once_despite_failures(make_gateway, fake, database_url):
    sink = WebhookSink(fail_first=4)
    hook = HookConfig(kind="webhook", url=sink.url, batch_size=3, backoff_base_s=0.02, backoff_max_s=0.1,
                      headers=(("authorization", "Bearer sink-secret"),))
    gw = await make_gateway(billing=BillingConfig(database=database_url, hooks=(hook,), outbox_poll_s=0.02))
    c = Client(gw.port, (await gw.keys.create("acme")).key)
    for i in range(12):
        await c.generate(input=f"hello {i}", max_output_tokens=3, request_id=f"w{i}")
    fake.model.behaviour.fail_code = grpc.StatusCode.UNAVAILABLE  # failed calls are billed too
    for i in range(3):
        with pytest.raises(grpc.aio.AioRpcError):
            await c.generate(input="x", max_output_tokens=3, request_id=f"f{i}")

    async def drained():
        return await gw.ledger.outbox_pending() == 0

    await wait_until(drained)
    expected = {r.record_id for r in await gw.ledger.records()}
    ids = sink.ids()
    assert len(expected) == 15 and sorted(ids) == sorted(expected) and len(ids) == len(set(ids))
    assert sink.attempts > 4  # the first four deliveries were refused and retried
    statuses = {r["record_id"]: r["status"] for r in sink.received}
    assert statuses["w0"] == "OK" and statuses["f0"] == "UNAVAILABLE"
    assert all(k for k in sink.idempotency_keys)
    sink.close()
    await c.close()


async def test_otel_metrics_hook_counts_billed_tokens(make_gateway):
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    otel = OtelMetricsHook(HookConfig(kind="otel_metrics"), MeterProvider(metric_readers=[reader]))
    gw = await make_gateway(hooks=[otel])
    c = Client(gw.port, (await gw.keys.create("acme")).key)
    for _ in range(3):
        await c.generate(input="abcd", max_output_tokens=4)

    async def drained():
        return await gw.ledger.outbox_pending() == 0

    await wait_until(drained)
    metrics = {m.name: m for rm in reader.get_metrics_data().resource_metrics for sm in rm.scope_metrics
               for m in sm.metrics}
    usage = {p.attributes["gen_ai.token.type"]: p.sum for p in metrics["gen_ai.client.token.usage"].data.data_points}
    assert usage == {"input": 3, "output": 12}
    (requests,) = metrics["minimax_m1.billing.requests"].data.data_points
    assert requests.value == 3 and requests.attributes["status"] == "OK" and requests.attributes["tenant"] == "acme"
    await c.close()


async def test_outbox_delivery_stop_flushes_what_is_due(db):
    ledger = Ledger(db, "gw-a", ["sink"])

    class ListHook:
        name = "sink"

        def __init__(self):
            self.got = []

        async def deliver(self, records):
            self.got.extend(r.record_id for r in records)

        async def aclose(self):
            pass

    hook = ListHook()
    delivery = OutboxDelivery(ledger, hook, batch_size=2, poll_s=10)
    for i in range(5):
        await ledger.close(await ledger.open(f"r{i}", "t", "k", "m", 1), "OK", 1, 1, 0, 1.0)
    await delivery.stop()  # never started: stop still delivers what is due
    assert hook.got == [f"r{i}" for i in range(5)]
