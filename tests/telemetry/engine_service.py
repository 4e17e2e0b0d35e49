"""The Engine deployment's class (EngineServer) on a plain grpc.aio server, in this process or as
its own process (`python tests/telemetry/engine_service.py --model PATH --port N`).

The adapter (tests/serving/grpc_adapter.py) hands the real gRPC context to EngineServer, as Ray
Serve's proxy does, so the caller's traceparent metadata reaches the engine's telemetry. The process form
sets telemetry up from the environment (OTEL_EXPORTER_OTLP_ENDPOINT, MINIMAX_M1_METRICS_PORT) like
a Ray replica does, and prints `engine ready <port>` once it serves.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys


if __name__ == "__main__":  # run as a script: make `tests` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tests.serving.grpc_adapter import serve  # noqa: E402

ENGINE = {"max_num_seqs": 4, "max_batch_tokens": 64, "prefill_chunk_size": 8, "kv_block_size": 4, "num_kv_blocks": 128}


async def _main(args) -> None:
    from minimax_m1.serving.app import EngineServer

    engine_server = EngineServer({"model": {"path": args.model, "name": args.name}, "engine": json.loads(args.engine)})
    server, port = await serve(engine_server, args.port)
    print(f"engine ready {port}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)
    engine_server.engine.shutdown()
    from minimax_m1.telemetry import current

    current().shutdown()  # flush what is left to the collector


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--name", default="tiny")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--engine", default=json.dumps(ENGINE))
    asyncio.run(_main(p.parse_args()))
