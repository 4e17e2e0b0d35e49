"""The real thing: a local Ray cluster, Ray Serve's gRPC proxy, build_app's Engine deployment."""
from __future__ import annotations

import time

import grpc
import pytest

from minimax_m1._generated import generation_pb2 as pb
from minimax_m1._generated import generation_pb2_grpc as pb_grpc
from tests.serving.conftest import ENGINE
from tests.services import free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def serve_target(tiny_path):
    from minimax_m1.serving.local import LocalServe

    # A KV pool of 16K tokens: a request can run for seconds (the cancellation test needs one that the
    # CPU kernels cannot finish before the cancellation reaches the replica).
    config = {"model": {"path": tiny_path, "name": "tiny"}, "engine": {**ENGINE, "num_kv_blocks": 4096}}
    cluster = LocalServe.start(config,
                               grpc_port=free_port(), http_port=free_port(), num_cpus=2)
    try:
        yield cluster.target
    finally:
        cluster.stop()


def test_serve_ingress_answers_unary_and_streaming_calls(serve_target):
    with grpc.insecure_channel(serve_target) as channel:
        stub = pb_grpc.GenerationStub(channel)
        request = pb.GenerateRequest(input="Hello Serve", max_output_tokens=6, request_id="r-1",
                                     sampling=pb.SamplingParams(temperature=0.7, seed=3))
        unary = stub.Generate(request, timeout=60)
        stream = list(stub.GenerateStream(request, timeout=60))
        assert unary.request_id == "r-1" and unary.usage.output_tokens == 6
        assert unary.finish_reason == pb.FINISH_REASON_LENGTH
        assert "".join(m.text_delta for m in stream) == unary.text
        assert [m.usage.output_tokens for m in stream] == [1, 2, 3, 4, 5, 6]
        assert stream[-1].finish_reason == pb.FINISH_REASON_LENGTH
        models = stub.ListModels(pb.ListModelsRequest(), timeout=30).models
        assert models[0].id == "tiny"
        assert stub.CountTokens(pb.CountTokensRequest(input="abc"), timeout=30).input_tokens == 3


def test_serve_ingress_maps_engine_errors_to_status_codes(serve_target):
    with grpc.insecure_channel(serve_target) as channel:
        stub = pb_grpc.GenerationStub(channel)
        with pytest.raises(grpc.RpcError) as exc:
            stub.Generate(pb.GenerateRequest(input="x", max_output_tokens=0), timeout=30)
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "max_output_tokens" in exc.value.details()
        with pytest.raises(grpc.RpcError) as exc:
            list(stub.GenerateStream(pb.GenerateRequest(input="far too long", max_output_tokens=4, context_window=3), timeout=30))
        assert exc.value.code() == grpc.StatusCode.OUT_OF_RANGE and "context_window" in exc.value.details()


def test_a_client_cancelling_a_stream_through_serve_frees_the_replica_state(serve_target):
    from ray import serve

    from minimax_m1.serving.local import APP_NAME

    handle = serve.get_app_handle(APP_NAME)
    with grpc.insecure_channel(serve_target) as channel:
        stub = pb_grpc.GenerationStub(channel)
        call = stub.GenerateStream(pb.GenerateRequest(input="a long one", max_output_tokens=100_000), timeout=120)
        next(call)
        assert handle.stats.remote().result(timeout_s=30)["slots_used"] == 1
        call.cancel()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        stats = handle.stats.remote().result(timeout_s=30)
        if stats["slots_used"] == 0:
            break
        time.sleep(0.1)
    assert stats["slots_used"] == 0 and stats["blocks_used"] == 0 and stats["running"] == 0
    # Freed by the cancellation, not by running out of room: the request alone needed ~16K steps
    # (the KV pool holds 16,384 tokens) and the replica took far fewer in all of this module's tests.
    assert stats["steps"] < 4000, stats
