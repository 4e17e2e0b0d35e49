"""Run the gateway as a process: `python -m minimax_m1.gateway --config FILE [overrides]`.

Flags override the file; without a file the embedded defaults apply (memory quotas, SQLite ledger
under the data dir). SIGTERM and SIGINT stop it gracefully (in-flight calls get --grace seconds).
A key in $MINIMAX_M1_API_KEY is registered for tenant "local" (a bootstrap key). Telemetry (OTLP
from the OTEL_* variables, Prometheus on --metrics-port) is set up when minimax_m1.telemetry exists.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import logging
import os
import signal
import sys

from minimax_m1.gateway.config import GatewayConfig, HookConfig, env_api_key, env_log_level, load_config


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m minimax_m1.gateway", description=__doc__.splitlines()[0])
    p.add_argument("--config", help="gateway config file (.toml or .json)")
    p.add_argument("--host", help="listen address")
    p.add_argument("--port", type=int, help="listen port (0: any free port, printed on start)")
    p.add_argument("--upstream", help="host:port of the Generation upstream (Ray Serve's gRPC proxy)")
    p.add_argument("--upstream-metadata", action="append", default=[], metavar="KEY=VALUE",
                   help="metadata added to upstream calls, e.g. application=minimax-m1 (repeatable)")
    p.add_argument("--database", help="ledger and keys: sqlite:///PATH or postgresql://...")
    p.add_argument("--redis-url", help="use the Redis quota store at this URL")
    p.add_argument("--webhook", action="append", default=[], metavar="URL", help="add a billing webhook (repeatable)")
    p.add_argument("--instance-id", help="this replica's name in the ledger (stable across restarts)")
    p.add_argument("--grace", type=float, default=10.0, help="seconds in-flight calls get on shutdown")
    p.add_argument("--metrics-port", type=int, help="Prometheus scrape port (default: $MINIMAX_M1_METRICS_PORT; none)")
    p.add_argument("--log-level", default=None, help="default: $MINIMAX_M1_LOG_LEVEL or INFO")
    return p


def config_from_args(args: argparse.Namespace) -> GatewayConfig:
    config = load_config(args.config) if args.config else GatewayConfig()
    changes: dict = {}
    if args.host is not None:
        changes["host"] = args.host
    if args.port is not None:
        changes["port"] = args.port
    upstream = config.upstream
    if args.upstream:
        upstream = dataclasses.replace(upstream, target=args.upstream)
    if args.upstream_metadata:
        pairs = []
        for item in args.upstream_metadata:
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"--upstream-metadata: expected KEY=VALUE, got {item!r}")
            pairs.append((key, value))
        upstream = dataclasses.replace(upstream, metadata=tuple(pairs))
    changes["upstream"] = upstream
    if args.redis_url:
        changes["quotas"] = dataclasses.replace(config.quotas, store="redis", redis_url=args.redis_url)
    billing = config.billing
    if args.database:
        billing = dataclasses.replace(billing, database=args.database)
    if args.instance_id:
        billing = dataclasses.replace(billing, instance_id=args.instance_id)
    if args.webhook:
        hooks = billing.hooks + tuple(HookConfig(kind="webhook", name=f"webhook-{i}", url=u)
                                      for i, u in enumerate(args.webhook))
        billing = dataclasses.replace(billing, hooks=hooks)
    changes["billing"] = billing
    return config.replace(**changes)


def setup_process_telemetry(metrics_port: int | None):
    """The process's telemetry, or None when the telemetry package is not installed."""
    try:
        from minimax_m1.telemetry.config import TelemetryConfig
        from minimax_m1.telemetry.setup import setup_telemetry
    except ImportError:
        if metrics_port is not None:
            raise ValueError("--metrics-port: the minimax_m1.telemetry package is not available") from None
        return None
    overrides = {} if metrics_port is None else {"prometheus_port": metrics_port}
    config = TelemetryConfig.from_env("gateway", **overrides)
    if not config.otlp_endpoint and config.prometheus_port is None:
        return None  # nothing would be exported: stay on the no-op telemetry, which costs nothing
    return setup_telemetry(config)


async def serve(config: GatewayConfig, grace: float) -> None:
    from minimax_m1.gateway.keys import ensure_local_key
    from minimax_m1.gateway.server import start_gateway

    handle = await start_gateway(config)
    await ensure_local_key(handle.keys, env_api_key())  # registers $MINIMAX_M1_API_KEY only; never prints
    if os.environ.get("MINIMAX_M1_GC_FREEZE", "1") != "0":  # as the engine replica does (docs/engine.md)
        gc.collect()
        gc.freeze()  # the startup heap leaves the cyclic GC: full collections stop walking grpc/OTel/sqlite objects
    print(f"gateway listening on {config.host}:{handle.port} -> upstream {config.upstream.target}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await handle.stop(grace)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=(args.log_level or env_log_level()).upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = config_from_args(args)
        telemetry = setup_process_telemetry(args.metrics_port)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(config, args.grace))
    except (RuntimeError, OSError, ValueError) as exc:  # the port is taken, the database unreachable, ...
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if telemetry is not None:
            telemetry.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
