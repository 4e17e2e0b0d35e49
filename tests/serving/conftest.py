"""Fixtures for the serving tests: a tiny checkpoint, and the EngineServer on a real grpc.aio
server on 127.0.0.1 (the same class Ray Serve runs; the Serve test itself is in test_serve_app.py)."""
from __future__ import annotations

import grpc
import pytest

from minimax_m1._generated import generation_pb2_grpc as pb_grpc
from minimax_m1.serving.app import EngineServer
from tests.serving.grpc_adapter import serve

ENGINE = {"max_num_seqs": 4, "max_batch_tokens": 64, "prefill_chunk_size": 16, "kv_block_size": 4, "num_kv_blocks": 128}


@pytest.fixture(scope="session")
def tiny_path(tmp_path_factory) -> str:
    from minimax_m1.model_shards.tiny import make_checkpoint

    path = str(tmp_path_factory.mktemp("tiny-serving"))
    make_checkpoint(path, seed=1)
    return path


@pytest.fixture
async def served(tiny_path):
    """(EngineServer, stub) with the service on a free 127.0.0.1 port."""
    engine_server = EngineServer({"model": {"path": tiny_path, "name": "tiny"}, "engine": ENGINE})
    server, port = await serve(engine_server)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield engine_server, pb_grpc.GenerationStub(channel)
    finally:
        await channel.close()
        await server.stop(0)
        engine_server.engine.shutdown()
