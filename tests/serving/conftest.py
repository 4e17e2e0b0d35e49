"""Fixtures for the serving tests: a tiny checkpoint, and the EngineServer on a real grpc.aio
server on 127.0.0.1 (the same class Ray Serve runs; the Serve test itself is in test_serve_app.py)."""
from __future__ import annotations

import grpc
import pytest

from minimax_m1._generated import generation_pb2_grpc as pb_grpc
from minimax_m1.serving.app import EngineServer, StatusError

ENGINE = {"max_num_seqs": 4, "max_batch_tokens": 64, "prefill_chunk_size": 16, "kv_block_size": 4, "num_kv_blocks": 128}


@pytest.fixture(scope="session")
def tiny_path(tmp_path_factory) -> str:
    from minimax_m1.model_shards.tiny import make_checkpoint

    path = str(tmp_path_factory.mktemp("tiny-serving"))
    make_checkpoint(path, seed=1)
    return path


class GrpcAdapter(pb_grpc.GenerationServicer):
    """Serves an EngineServer on a plain grpc.aio server: same methods, same status mapping."""

    def __init__(self, server: EngineServer):
        self.server = server

    async def Generate(self, request, context):
        try:
            return await self.server.Generate(request, grpc_context=None)
        except StatusError as exc:
            await context.abort(exc.code, exc.details)

    async def GenerateStream(self, request, context):
        try:
            async for msg in self.server.GenerateStream(request, grpc_context=None):
                yield msg
        except StatusError as exc:
            await context.abort(exc.code, exc.details)

    async def CountTokens(self, request, context):
        return await self.server.CountTokens(request)

    async def ListModels(self, request, context):
        return await self.server.ListModels(request)


@pytest.fixture
async def served(tiny_path):
    """(EngineServer, stub) with the service on a free 127.0.0.1 port."""
    engine_server = EngineServer({"model": {"path": tiny_path, "name": "tiny"}, "engine": ENGINE})
    server = grpc.aio.server()
    pb_grpc.add_GenerationServicer_to_server(GrpcAdapter(engine_server), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield engine_server, pb_grpc.GenerationStub(channel)
    finally:
        await channel.close()
        await server.stop(0)
        engine_server.engine.shutdown()
