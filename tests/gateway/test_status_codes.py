"""Every status code of DESIGN.md section 5, produced by a real gateway over a socket.

The upstream is the fake model of fake_model.py (a real gRPC server standing in for the GPU model).
"""
from __future__ import annotations

import asyncio

import grpc
import pytest

from minimax_m1._generated import generation_pb2 as pb
from minimax_m1.gateway.config import QuotaLimits, UpstreamConfig
from minimax_m1.gateway.errors import TABLE, Reason
from tests.gateway.conftest import Client
from tests.gateway.fake_model import MODEL
from tests.services import free_port

Code = grpc.StatusCode


async def rpc_error(awaitable) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await awaitable
    return info.value


async def test_ok_generate_bills_usage_and_forwards_routing_metadata(gateway, client, fake):
    resp = await client.generate(input="hello world", max_output_tokens=5, request_id="req-1", return_routing_log=True)
    assert resp.request_id == "req-1" and resp.model == MODEL
    assert resp.finish_reason == pb.FINISH_REASON_LENGTH
    assert resp.usage.output_tokens == 5 and resp.usage.input_tokens == 3
    assert len(resp.text.split()) == 5 and len(resp.routing_log.layers) == 4
    seen = fake.model.observed.metadata[-1]
    assert seen["application"] == "minimax-m1"
    assert "authorization" not in seen  # the tenant's key never leaves the gateway
    record = await gateway.ledger.get("req-1")
    assert (record.status, record.input_tokens, record.output_tokens) == ("OK", 3, 5)
    assert record.expert_activations == resp.usage.expert_activations and record.tenant == "acme"


async def test_ok_stream_sets_request_id_and_cumulative_usage(client):
    msgs = [m async for m in client.stream(input="abc", max_output_tokens=4)]
    assert [m.usage.output_tokens for m in msgs] == [1, 2, 3, 4]
    assert len({m.request_id for m in msgs}) == 1 and msgs[0].request_id
    assert msgs[-1].finish_reason == pb.FINISH_REASON_LENGTH


@pytest.mark.parametrize("metadata, text", [
    ((), "missing API key"),
    ((("authorization", "Bearer mm1_not_a_key_at_all"),), "unknown API key"),
    ((("authorization", "Basic abc"),), "must be 'Bearer <key>'"),
])
async def test_unauthenticated(gateway, metadata, text):
    c = Client(gateway.port, None)
    c.metadata = metadata
    err = await rpc_error(c.generate(input="x", max_output_tokens=1))
    assert err.code() == Code.UNAUTHENTICATED and text in err.details()
    await c.close()


async def test_permission_denied_for_revoked_key(gateway, client, api_key):
    key = await gateway.keys.lookup(api_key)
    assert await gateway.keys.revoke(key.key_id)
    err = await rpc_error(client.generate(input="x", max_output_tokens=1))
    assert err.code() == Code.PERMISSION_DENIED and f"API key {key.key_id} was revoked" in err.details()


async def test_permission_denied_for_model_not_allowed(gateway):
    key = (await gateway.keys.create("acme", models=(MODEL + "-small",))).key
    c = Client(gateway.port, key)
    err = await rpc_error(c.generate(model=MODEL, input="x", max_output_tokens=1))
    assert err.code() == Code.PERMISSION_DENIED and f"may not use model '{MODEL}'" in err.details()
    ok = await c.generate(model=MODEL + "-small", input="x", max_output_tokens=1)
    assert ok.model == MODEL + "-small"
    models = await c.stub.ListModels(pb.ListModelsRequest(), metadata=c.metadata)
    assert [m.id for m in models.models] == [MODEL + "-small"]
    await c.close()


@pytest.mark.parametrize("fields, code, text", [
    (dict(input="", max_output_tokens=1), Code.INVALID_ARGUMENT, "input: must not be empty"),
    (dict(input="x", max_output_tokens=1, model="gpt-9"), Code.INVALID_ARGUMENT, "model: 'gpt-9' is not served here"),
    (dict(input="x", max_output_tokens=1, request_id="has space"), Code.INVALID_ARGUMENT, "request_id: must be"),
    (dict(input="x", max_output_tokens=1, stop=[""]), Code.INVALID_ARGUMENT, "stop[0]: must not be empty"),
    (dict(input="x", max_output_tokens=0), Code.OUT_OF_RANGE, "max_output_tokens=0 is out of range: allowed [1, 4096]"),
    (dict(input="x", max_output_tokens=5000), Code.OUT_OF_RANGE, "max_output_tokens=5000 is out of range: allowed [1, 4096]"),
    (dict(input="x", max_output_tokens=1, context_window=9000), Code.OUT_OF_RANGE, "context_window=9000 is out of range"),
    (dict(input="x", max_output_tokens=1, expert_threshold=1.5), Code.OUT_OF_RANGE, "expert_threshold=1.5 is out of range: allowed [0, 1]"),
    (dict(input="x", max_output_tokens=1, sampling=pb.SamplingParams(temperature=3)), Code.OUT_OF_RANGE,
     "sampling.temperature=3.0 is out of range: allowed [0, 2]"),
    (dict(input="x", max_output_tokens=1, sampling=pb.SamplingParams(top_p=0)), Code.OUT_OF_RANGE,
     "sampling.top_p=0.0 is out of range: allowed (0, 1]"),
    (dict(input="x", max_output_tokens=1, sampling=pb.SamplingParams(top_k=-1)), Code.OUT_OF_RANGE, "sampling.top_k=-1"),
    (dict(input="x", max_output_tokens=1, stop=["s"] * 17), Code.OUT_OF_RANGE, "stop (count)=17 is out of range: allowed [0, 16]"),
])
async def test_invalid_argument_and_out_of_range_name_the_field(client, fields, code, text):
    err = await rpc_error(client.generate(**fields))
    assert err.code() == code and text in err.details(), err.details()


async def test_tenant_max_context_narrows_the_allowed_range(make_gateway, fake):
    gw = await make_gateway(QuotaLimits(max_context=100))
    c = Client(gw.port, (await gw.keys.create("acme")).key)
    err = await rpc_error(c.generate(input="x", max_output_tokens=101))
    assert err.code() == Code.OUT_OF_RANGE and "allowed [1, 100] (tenant max_context)" in err.details()
    # The cap on input + output reaches the upstream, which counts the real tokens.
    resp = await c.generate(input="x" * 40, max_output_tokens=100)
    assert fake.model.observed.requests[-1].context_window == 100
    assert resp.finish_reason == pb.FINISH_REASON_CONTEXT_WINDOW and resp.usage.output_tokens == 90
    err = await rpc_error(c.generate(input="x" * 400, max_output_tokens=10))
    assert err.code() == Code.INVALID_ARGUMENT and "context_window=100" in err.details()
    await c.close()


async def test_resource_exhausted_carries_retry_after(make_gateway):
    gw = await make_gateway(QuotaLimits(requests_per_minute=1))
    c = Client(gw.port, (await gw.keys.create("acme")).key)
    await c.generate(input="x", max_output_tokens=1)
    call = c.generate(input="x", max_output_tokens=1)
    err = await rpc_error(call)
    assert err.code() == Code.RESOURCE_EXHAUSTED
    assert "over its requests_per_minute quota (1)" in err.details()
    retry_after = dict(err.trailing_metadata())["retry-after"]
    assert 1 <= int(retry_after) <= 60
    await c.close()


async def test_reservation_larger_than_a_limit_is_out_of_range(make_gateway):
    gw = await make_gateway(QuotaLimits(tokens_per_minute=50))
    c = Client(gw.port, (await gw.keys.create("acme")).key)
    err = await rpc_error(c.generate(input="x", max_output_tokens=100))
    assert err.code() == Code.OUT_OF_RANGE and "more than the tenant's tokens_per_minute of 50" in err.details()
    await c.close()


async def test_unavailable_when_upstream_is_down(make_gateway):
    target = f"127.0.0.1:{free_port()}"  # nothing listens there
    gw = await make_gateway(upstream=UpstreamConfig(target=target))
    c = Client(gw.port, (await gw.keys.create("acme")).key)
    err = await rpc_error(c.generate(input="x", max_output_tokens=1))
    assert err.code() == Code.UNAVAILABLE and f"upstream {target} is unavailable" in err.details()
    await c.close()


async def test_deadline_exceeded_is_propagated_and_billed_for_what_was_produced(make_gateway, fake):
    fake.model.behaviour.token_delay_s = 0.05
    gw = await make_gateway(upstream=UpstreamConfig(target=fake.target, timeout_s=0.5))
    c = Client(gw.port, (await gw.keys.create("acme")).key)
    # The gateway's own cap (0.5 s) ends the call: the status comes from the gateway.
    err = await rpc_error(c.generate(input="x", max_output_tokens=1000, request_id="slow-1", timeout=30))
    assert err.code() == Code.DEADLINE_EXCEEDED and "deadline exceeded after" in err.details()
    record = await gw.ledger.get("slow-1")
    assert record.status == "DEADLINE_EXCEEDED" and 3 <= record.output_tokens < 1000
    # A client deadline shorter than the cap travels upstream.
    err = await rpc_error(c.generate(input="x", max_output_tokens=1000, request_id="slow-2", timeout=0.3))
    assert err.code() == Code.DEADLINE_EXCEEDED
    assert fake.model.observed.deadlines[-1] is not None and fake.model.observed.deadlines[-1] <= 0.31  # not the 0.5 s cap
    await asyncio.sleep(0.2)
    assert "slow-2" in fake.model.observed.cancelled
    await c.close()


async def test_cancelled_by_upstream_is_relayed(fake, client):
    fake.model.behaviour.fail_code = Code.CANCELLED
    fake.model.behaviour.fail_message = "engine is draining"
    err = await rpc_error(client.generate(input="x", max_output_tokens=3))
    assert err.code() == Code.CANCELLED and "engine is draining" in err.details()


async def test_client_cancel_reaches_upstream_and_bills_partial_stream(gateway, fake, client):
    fake.model.behaviour.token_delay_s = 0.02
    stream = client.stream(input="x", max_output_tokens=1000, request_id="cancel-1")
    got = 0
    async for msg in stream:
        got = msg.usage.output_tokens
        if got == 5:
            break
    stream.cancel()
    for _ in range(100):
        record = await gateway.ledger.get("cancel-1")
        if record.status != "OPEN":
            break
        await asyncio.sleep(0.02)
    assert record.status == "CANCELLED" and got <= record.output_tokens < 1000
    assert "cancel-1" in fake.model.observed.cancelled


async def test_upstream_internal_error_is_internal_without_traceback(fake, client):
    fake.model.behaviour.fail_code = Code.INTERNAL
    fake.model.behaviour.fail_message = "cuda error"
    err = await rpc_error(client.generate(input="x", max_output_tokens=3))
    assert err.code() == Code.INTERNAL and "upstream failed (INTERNAL): cuda error" in err.details()
    assert "Traceback" not in err.details()


def test_one_table_covers_every_design_code():
    design = {Code.INVALID_ARGUMENT, Code.OUT_OF_RANGE, Code.UNAUTHENTICATED, Code.PERMISSION_DENIED,
              Code.RESOURCE_EXHAUSTED, Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED, Code.CANCELLED}
    assert design <= {code for code, _ in TABLE.values()}
    upstream = [c for _, (_, ups) in TABLE.items() for c in ups]
    assert len(upstream) == len(set(upstream))  # each upstream code maps to exactly one reason
    assert set(Reason) == set(TABLE)
