"""The Engine deployment's class (EngineServer) on a plain grpc.aio server, for tests.

It hands the real gRPC context to EngineServer, as Ray Serve's proxy does, so the caller's
metadata (e.g. traceparent) reaches the engine; StatusError becomes the call's status.
"""
from __future__ import annotations

import grpc

from minimax_m1._generated import generation_pb2_grpc as pb_grpc


class GrpcAdapter(pb_grpc.GenerationServicer):
    def __init__(self, server):
        self.server = server

    async def Generate(self, request, context):
        from minimax_m1.serving.app import StatusError

        try:
            return await self.server.Generate(request, grpc_context=context)
        except StatusError as exc:
            await context.abort(exc.code, exc.details)

    async def GenerateStream(self, request, context):
        from minimax_m1.serving.app import StatusError

        try:
            async for msg in self.server.GenerateStream(request, grpc_context=context):
                yield msg
        except StatusError as exc:
            await context.abort(exc.code, exc.details)

    async def CountTokens(self, request, context):
        return await self.server.CountTokens(request, grpc_context=context)

    async def ListModels(self, request, context):
        return await self.server.ListModels(request, grpc_context=context)


async def serve(engine_server, port: int = 0) -> tuple[grpc.aio.Server, int]:
    """Start a grpc.aio server for `engine_server` on 127.0.0.1; returns (server, port)."""
    server = grpc.aio.server()
    pb_grpc.add_GenerationServicer_to_server(GrpcAdapter(engine_server), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server, bound
