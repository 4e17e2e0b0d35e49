"""`minimax-m1 serve`: local Ray, the Serve app, and the gateway in front of it on --port.

    minimax-m1 serve [--model DIR] [--tp N] [--ep N] [--host H] [--port P]

Without --model it serves the embedded demo model with a small CPU plan (tp=1, ep=2). The API
key: $MINIMAX_M1_API_KEY is registered for the local tenant; otherwise a key is generated and
printed once (it is stored hashed, so it is never shown again). Ctrl-C shuts everything down.
"""
from __future__ import annotations

import argparse
import asyncio
import signal

from minimax_m1.cli.common import CliError, progress

DEFAULT_PORT = 50051
EMBEDDED_PLAN = {"tp": 1, "ep": 2}
LOCAL_ENGINE = {"max_num_seqs": 32, "max_batch_tokens": 512, "prefill_chunk_size": 256, "kv_block_size": 16,
                "num_kv_blocks": 1024}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="checkpoint folder (default: the built-in demo model)")
    p.add_argument("--tp", type=int, default=None, help="attention tensor-parallel workers (default 1)")
    p.add_argument("--ep", type=int, default=None, help="expert-parallel workers (default: 2 for the demo model, else 1)")
    p.add_argument("--host", default="127.0.0.1", help="gateway address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"gateway port (default {DEFAULT_PORT})")
    p.add_argument("--name", default="minimax-m1", help="model name clients use (default minimax-m1)")
    p.add_argument("--metrics-port", type=int, default=None, help="gateway Prometheus endpoint port (docs/telemetry.md)")
    p.add_argument("--engine-metrics-port", type=int, default=None, help="engine replica Prometheus endpoint port")


def serving_args(args: argparse.Namespace) -> dict:
    plan = dict(EMBEDDED_PLAN) if args.model is None else {"tp": 1, "ep": 1}
    if args.tp is not None:
        plan["tp"] = args.tp
    if args.ep is not None:
        plan["ep"] = args.ep
    if plan["tp"] < 1 or plan["ep"] < 1:
        raise CliError("--tp and --ep must be >= 1", exit_code=2)
    if plan["tp"] * plan["ep"] > 1:
        plan["cpus_per_worker"] = 0.25  # CPU workers share the machine's cores
    return {"model": {"path": args.model or "", "name": args.name}, "plan": plan, "engine": dict(LOCAL_ENGINE)}


def run(args: argparse.Namespace) -> int:
    import os

    from minimax_m1.serving.config import ServingConfig
    from minimax_m1.serving.local import LocalServe

    try:  # fail fast on a bad --model or plan, before Ray starts
        config = ServingConfig.from_args(serving_args(args))
        if args.model is not None:
            config.model.resolve_path()
    except ValueError as exc:
        raise CliError(str(exc), exit_code=2) from None

    progress("starting Ray and the engine (loading the model) ...")
    # Logical CPUs: the replica and its CPU workers share the cores; Ray only counts them.
    num_cpus = max(os.cpu_count() or 1, 4)
    if args.engine_metrics_port is not None:  # the replica sets telemetry up from its environment, Ray's copy of ours
        os.environ["MINIMAX_M1_METRICS_PORT"] = str(args.engine_metrics_port)
    try:
        cluster = LocalServe.start(serving_args(args), grpc_port=_free_port(), http_port=_free_port(), num_cpus=num_cpus)
    except (RuntimeError, TimeoutError, ValueError) as exc:
        raise CliError(f"the engine did not start: {exc}") from None
    try:
        return asyncio.run(_serve(args, cluster))
    finally:
        cluster.stop()
        progress("stopped")


async def _serve(args: argparse.Namespace, cluster) -> int:
    from minimax_m1.gateway.config import GatewayConfig, UpstreamConfig, env_api_key
    from minimax_m1.gateway.keys import ensure_local_key
    from minimax_m1.gateway.server import start_gateway
    from minimax_m1.serving.local import APP_NAME

    loop = asyncio.get_running_loop()
    gateway = telemetry = None
    try:
        # ---- the gateway in front of the Serve gRPC ingress (minimax_m1.gateway) ----
        config = GatewayConfig(host=args.host, port=args.port,
                               upstream=UpstreamConfig(target=cluster.target, metadata=(("application", APP_NAME),)))
        telemetry = _gateway_telemetry(args.metrics_port)
        try:
            gateway = await start_gateway(config)
        except (OSError, RuntimeError) as exc:
            raise CliError(f"the gateway could not listen on {args.host}:{args.port}: {exc}") from None
        env_key = env_api_key()
        key = await ensure_local_key(gateway.keys, env_key)
        if key:
            print(f"API key for the local tenant (shown once; it is stored hashed): {key}", flush=True)
        elif env_key:
            progress("using the API key in MINIMAX_M1_API_KEY")
        print(f"minimax-m1 listening on {args.host}:{gateway.port} (gRPC minimax.m1.v1.Generation), "
              f"model {args.name!r}; Ray Serve ingress at {cluster.target}", flush=True)
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        progress("shutting down ...")
    finally:
        if gateway is not None:
            await gateway.stop(grace=5.0)
        if telemetry is not None:
            telemetry.shutdown()
    return 0


def _gateway_telemetry(metrics_port: int | None):
    """The gateway's telemetry (OTLP from the OTEL_* variables, Prometheus on --metrics-port), or None."""
    from minimax_m1.telemetry import TelemetryConfig, setup_telemetry

    config = TelemetryConfig.from_env("gateway", prometheus_port=metrics_port)
    if metrics_port is None and not config.otlp_endpoint:
        return None
    try:
        return setup_telemetry(config)
    except OSError as exc:
        raise CliError(f"--metrics-port {metrics_port}: {exc}") from None


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
