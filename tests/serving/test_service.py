"""The Generation service of the Engine deployment, over real gRPC on 127.0.0.1."""
from __future__ import annotations

import asyncio

import grpc
import pytest

from minimax_m1._generated import generation_pb2 as pb
from minimax_m1.engine.instance import InstanceDeadError


def req(**kw) -> pb.GenerateRequest:
    kw.setdefault("max_output_tokens", 8)
    return pb.GenerateRequest(**kw)


async def test_unary_and_stream_agree(served):
    _, stub = served
    r = req(input="Hello there", max_output_tokens=10, request_id="abc", sampling=pb.SamplingParams(temperature=0.8, seed=4))
    unary = await stub.Generate(r)
    msgs = [m async for m in stub.GenerateStream(r)]
    assert unary.request_id == "abc" and unary.model == "tiny"
    assert "".join(m.text_delta for m in msgs) == unary.text
    assert msgs[-1].finish_reason == unary.finish_reason == pb.FINISH_REASON_LENGTH
    assert all(m.finish_reason == pb.FINISH_REASON_UNSPECIFIED for m in msgs[:-1])
    assert [m.usage.output_tokens for m in msgs] == list(range(1, 11)), "cumulative usage on every message"
    assert msgs[-1].usage == unary.usage and unary.usage.output_tokens == 10
    assert unary.usage.input_tokens == len("Hello there".encode())
    assert unary.usage.expert_activations == (unary.usage.input_tokens + 9) * 8 * 2


async def test_routing_log_on_request(served):
    _, stub = served
    resp = await stub.Generate(req(input="route", return_routing_log=True, expert_threshold=0.5))
    assert len(resp.routing_log.layers) == 8 and all(len(l.expert_counts) == 32 for l in resp.routing_log.layers)
    assert sum(sum(l.expert_counts) for l in resp.routing_log.layers) == resp.usage.expert_activations
    assert not (await stub.Generate(req(input="route"))).HasField("routing_log")


@pytest.mark.parametrize("request_kw, code, words", [
    (dict(input="x", max_output_tokens=0), grpc.StatusCode.INVALID_ARGUMENT, "max_output_tokens"),
    (dict(input="x", expert_threshold=2.0), grpc.StatusCode.INVALID_ARGUMENT, "expert_threshold"),
    (dict(input="x", sampling=pb.SamplingParams(temperature=5.0)), grpc.StatusCode.INVALID_ARGUMENT, "temperature"),
    (dict(input="", ), grpc.StatusCode.INVALID_ARGUMENT, "empty"),
    (dict(input="x", model="other"), grpc.StatusCode.INVALID_ARGUMENT, "not served"),
    (dict(input="too long for it", context_window=4), grpc.StatusCode.OUT_OF_RANGE, "context_window"),
])
async def test_errors_have_precise_codes(served, request_kw, code, words):
    _, stub = served
    for call in (stub.Generate(req(**request_kw)), _drain(stub.GenerateStream(req(**request_kw)))):
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await call
        assert exc.value.code() == code and words in exc.value.details()
        assert "Traceback" not in exc.value.details()


async def _drain(call):
    return [m async for m in call]


async def test_stream_cancelled_by_the_client_frees_state(served):
    server, stub = served
    call = stub.GenerateStream(req(input="keep going", max_output_tokens=2000))
    async for _ in call:
        break
    assert server.stats()["slots_used"] == 1
    call.cancel()
    for _ in range(100):  # the server sees the cancellation asynchronously
        stats = await server.engine.wait_idle()
        if stats.cache.slots_used == 0:
            break
        await asyncio.sleep(0.05)
    assert stats.cache.slots_used == 0 and stats.cache.blocks_used == 0 and stats.num_running == 0


async def test_count_tokens_and_list_models(served):
    _, stub = served
    assert (await stub.CountTokens(pb.CountTokensRequest(input="héllo"))).input_tokens == 6
    models = (await stub.ListModels(pb.ListModelsRequest())).models
    assert [(m.id, m.num_experts, m.experts_per_token) for m in models] == [("tiny", 32, 2)]
    assert models[0].max_context == 128 * 4  # the KV pool holds fewer tokens than the model's limit


class BrokenInstance:
    """A fake for a lost worker: the wrapped real instance fails every step and health check."""

    def __init__(self, inner):
        self.inner, self.config, self.cache_shape = inner, inner.config, inner.cache_shape

    def step(self, request):
        raise InstanceDeadError("attention worker 0 lost")

    def check_health(self):
        raise InstanceDeadError("attention worker 0 lost")

    def close(self):
        pass


async def test_dead_instance_is_unavailable_and_fails_health(served):
    server, stub = served
    await server.check_health()
    server.engine.engine.instance = BrokenInstance(server.engine.engine.instance)
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await stub.Generate(req(input="x"))
    assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(Exception, match="lost|failed"):
        await server.check_health()
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await stub.Generate(req(input="y"))
    assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
