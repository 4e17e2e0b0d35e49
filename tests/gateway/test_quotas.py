"""One quota suite, run against both stores: in-memory and Redis (a real redis-server)."""
from __future__ import annotations

import asyncio
import collections
import random

import grpc
import pytest

from minimax_m1.gateway.config import QuotaConfig, QuotaLimits
from minimax_m1.gateway.quota import Admission, MemoryQuotaStore, RedisQuotaStore, Refusal, period_bounds
from minimax_m1.gateway.validate import estimate_input_tokens
from tests.gateway.conftest import Client

T0 = 1_800_000_040.0  # 40 s into a minute window (and a Wednesday, mid-month)


@pytest.fixture(params=["memory", "redis"])
def store_kind(request):
    return request.param


@pytest.fixture
async def store(store_kind, request):
    if store_kind == "memory":
        s = MemoryQuotaStore(lease_s=30)
    else:
        redis_server = request.getfixturevalue("redis_server")
        redis_server.flushall()
        s = RedisQuotaStore(redis_server.url, lease_s=30)
    yield s
    await s.close()


async def test_requests_per_minute_fixed_window(store):
    limits = QuotaLimits(requests_per_minute=3)
    for i in range(3):
        assert isinstance(await store.admit("t", f"r{i}", 1, limits, T0), Admission)
    refusal = await store.admit("t", "r3", 1, limits, T0 + 1)
    assert isinstance(refusal, Refusal) and refusal.limit == "requests_per_minute" and refusal.value == 3
    assert refusal.retry_after_s == pytest.approx(19.0)  # until the window ends
    assert isinstance(await store.admit("other", "o1", 1, limits, T0), Admission)  # per tenant
    assert isinstance(await store.admit("t", "r4", 1, limits, T0 + 20), Admission)  # next window


async def test_tokens_per_minute_reserve_then_settle(store):
    limits = QuotaLimits(tokens_per_minute=100)
    first = await store.admit("t", "a", 60, limits, T0)
    assert isinstance(first, Admission)
    refusal = await store.admit("t", "b", 60, limits, T0)
    assert isinstance(refusal, Refusal) and refusal.limit == "tokens_per_minute"
    await store.settle(first, 10)  # used far less than reserved: the rest comes back
    assert isinstance(await store.admit("t", "b", 60, limits, T0 + 1), Admission)
    assert isinstance(await store.admit("t", "c", 30, limits, T0 + 2), Admission)  # 10 + 60 + 30 = 100
    assert isinstance(await store.admit("t", "d", 1, limits, T0 + 3), Refusal)


async def test_settle_goes_to_the_window_of_admission(store):
    limits = QuotaLimits(tokens_per_minute=100)
    old = await store.admit("t", "a", 100, limits, T0)
    assert isinstance(await store.admit("t", "b", 100, limits, T0 + 21), Admission)  # new window
    await store.settle(old, 0)  # refunds the old window, not the new one
    assert isinstance(await store.admit("t", "c", 1, limits, T0 + 22), Refusal)


async def test_concurrency_slots_and_lease_expiry(store):
    limits = QuotaLimits(max_concurrent=2)
    a = await store.admit("t", "a", 1, limits, T0)
    assert isinstance(await store.admit("t", "b", 1, limits, T0), Admission)
    refusal = await store.admit("t", "c", 1, limits, T0)
    assert isinstance(refusal, Refusal) and refusal.limit == "max_concurrent" and refusal.retry_after_s == 1.0
    await store.settle(a, 1)
    assert isinstance(await store.admit("t", "c", 1, limits, T0), Admission)
    # Leases of a crashed gateway expire (lease_s = 30).
    assert isinstance(await store.admit("t", "d", 1, limits, T0 + 31), Admission)


async def test_budget_per_period_seeded_from_the_ledger(store):
    limits = QuotaLimits(budget_tokens=1000, budget_period="day")
    period, end = period_bounds("day", T0)
    await store.seed_budget("t", period, 950)
    await store.seed_budget("t", period, 0)  # an existing counter wins
    refusal = await store.admit("t", "a", 60, limits, T0)
    assert isinstance(refusal, Refusal) and refusal.limit == "budget_tokens"
    assert refusal.retry_after_s == pytest.approx(end - T0)
    assert isinstance(await store.admit("t", "b", 50, limits, T0), Admission)
    assert isinstance(await store.admit("t", "c", 50, limits, end + 1), Admission)  # next day


async def test_no_tenant_exceeds_a_limit_under_50_concurrent_clients(store_kind, make_gateway, fake, request):
    """50 clients, three tenants, each tenant tight on a different limit; checked from the ledger."""
    fake.model.behaviour.token_delay_s = 0.002
    base = QuotaLimits(max_concurrent=4)
    tenants = {
        "rpm": QuotaLimits(max_concurrent=4, requests_per_minute=40),
        "tpm": QuotaLimits(max_concurrent=4, tokens_per_minute=600),
        "budget": QuotaLimits(max_concurrent=2, budget_tokens=500, budget_period="day"),
    }
    quotas = QuotaConfig(default=base, tenants=tuple(tenants.items()))
    if store_kind == "redis":
        redis_server = request.getfixturevalue("redis_server")
        redis_server.flushall()
        quotas = QuotaConfig(store="redis", redis_url=redis_server.url, default=base, tenants=tuple(tenants.items()))
        # Two replicas share the Redis store, as in a cluster.
        gateways = [await make_gateway(quotas=quotas) for _ in range(2)]
    else:
        gateways = [await make_gateway(quotas=quotas)]
    keys = {t: (await gateways[0].keys.create(t)).key for t in tenants}
    inflight = collections.Counter()
    peak = collections.Counter()
    refusals = collections.Counter()
    max_reserve = estimate_input_tokens(12) + 20

    async def worker(i: int) -> None:
        tenant = list(tenants)[i % 3]
        c = Client(gateways[i % len(gateways)].port, keys[tenant])
        rng = random.Random(i)
        for _ in range(8):
            try:
                stream = c.stream(input="y" * 12, max_output_tokens=rng.randint(5, 20))
                async for msg in stream:
                    if msg.usage.output_tokens == 1:
                        inflight[tenant] += 1
                        peak[tenant] = max(peak[tenant], inflight[tenant])
                inflight[tenant] -= 1
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
                assert int(dict(err.trailing_metadata())["retry-after"]) >= 1
                refusals[tenant] += 1
                await asyncio.sleep(0.005)
        await c.close()

    await asyncio.gather(*(worker(i) for i in range(50)))
    records = await gateways[0].ledger.records(limit=10_000)
    assert all(r.status == "OK" for r in records)
    by_window = collections.defaultdict(lambda: [0, 0])
    for r in records:
        w = by_window[(r.tenant, int(r.started_at // 60))]
        w[0] += 1
        w[1] += r.input_tokens + r.output_tokens
    for (tenant, _), (n, tokens) in by_window.items():
        limits = tenants[tenant]
        if limits.requests_per_minute:
            assert n <= limits.requests_per_minute
        if limits.tokens_per_minute:
            assert tokens <= limits.tokens_per_minute + max_reserve
    budget_used = sum(r.input_tokens + r.output_tokens for r in records if r.tenant == "budget")
    assert budget_used <= tenants["budget"].budget_tokens + max_reserve
    for tenant, limits in tenants.items():
        assert peak[tenant] <= limits.max_concurrent, (tenant, peak[tenant])
        assert refusals[tenant] > 0  # every tenant was pushed against its limits
    assert len(records) > 40
