"""The gateway's own cost: latency it adds and requests/s it sustains, against its upstream directly.

    .venv/bin/python bench/gateway.py [--samples 2000] [--duration 10] [--concurrency 32]
    .venv/bin/python bench/gateway.py --engine --engine-target HOST:PORT   # also end to end

The upstream is the tests' fake model (a real Generation gRPC server that answers at once), run in
its own process; the gateway runs in its own process as `python -m minimax_m1.gateway`, with
quotas (memory store, every limit set but generous) and billing (SQLite ledger, outbox to the
OpenTelemetry metrics hook) on; --telemetry also turns on spans and metrics with a Prometheus
endpoint. The load generator is this process. All three share the machine's
cores, so the figures are what this machine gives with the client included; the CPU count and load
are printed with them.

In one run it measures, with the baseline in the same run:
- latency: sequential unary Generate (max_output_tokens=1), direct and through the gateway
  interleaved call by call; p50/p99 of each and the difference (target: < 2 ms added at p50);
- throughput: --concurrency callers for --duration seconds, direct and through the gateway
  (target: >= 1000 requests/s through the gateway);
- --engine: the same latency figures against a real engine (no target). The engine must be
  running (e.g. `minimax-m1 serve`) and reachable at --engine-target.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # for tests.gateway.fake_model and tests.services

import grpc  # noqa: E402

from minimax_m1._generated import generation_pb2 as pb  # noqa: E402
from minimax_m1._generated import generation_pb2_grpc as pb_grpc  # noqa: E402
from tests.services import free_port, wait_for_port  # noqa: E402

GENEROUS = {"requests_per_minute": 10**9, "tokens_per_minute": 10**12, "max_concurrent": 10**6,
            "max_context": 4096, "budget_tokens": 10**15, "budget_period": "month"}


def spawn(args: list[str], ready: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:  # type: ignore[union-attr]
        if ready in line:
            return proc
    raise RuntimeError(f"{args} exited before printing {ready!r}")


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


async def latency(direct, gateway, key: str, samples: int, model_request: pb.GenerateRequest) -> dict[str, float]:
    md = (("authorization", f"Bearer {key}"),)
    d_ms: list[float] = []
    g_ms: list[float] = []
    for i in range(samples):
        t = time.perf_counter()
        await direct.Generate(model_request, timeout=30)
        d_ms.append((time.perf_counter() - t) * 1e3)
        t = time.perf_counter()
        await gateway.Generate(model_request, metadata=md, timeout=30)
        g_ms.append((time.perf_counter() - t) * 1e3)
    return {"direct_p50_ms": percentile(d_ms, 0.5), "direct_p99_ms": percentile(d_ms, 0.99),
            "gateway_p50_ms": percentile(g_ms, 0.5), "gateway_p99_ms": percentile(g_ms, 0.99),
            "added_p50_ms": percentile(g_ms, 0.5) - percentile(d_ms, 0.5),
            "added_p99_ms": percentile(g_ms, 0.99) - percentile(d_ms, 0.99),
            "direct_mean_ms": statistics.fmean(d_ms), "gateway_mean_ms": statistics.fmean(g_ms)}


async def throughput(stub, metadata, request: pb.GenerateRequest, concurrency: int, duration: float) -> tuple[float, int]:
    done = errors = 0
    stop_at = time.perf_counter() + duration

    async def worker() -> None:
        nonlocal done, errors
        while time.perf_counter() < stop_at:
            try:
                await stub.Generate(request, metadata=metadata, timeout=30)
                done += 1
            except grpc.aio.AioRpcError:
                errors += 1

    t = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.perf_counter() - t), errors


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, all its threads (gRPC's core threads included)."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(args, upstream: str, gateway_port: int, key: str, gateway_pid: int) -> dict:
    req = pb.GenerateRequest(input="The quick brown fox", max_output_tokens=1)
    async with grpc.aio.insecure_channel(upstream) as up, grpc.aio.insecure_channel(f"127.0.0.1:{gateway_port}") as gw:
        direct, gateway = pb_grpc.GenerationStub(up), pb_grpc.GenerationStub(gw)
        md = (("authorization", f"Bearer {key}"),)
        await latency(direct, gateway, key, 200, req)  # warm-up: connections, caches
        lat = await latency(direct, gateway, key, args.samples, req)
        rps_direct, _ = await throughput(direct, (), req, args.concurrency, args.duration)
        cpu0 = cpu_seconds(gateway_pid)
        rps_gateway, errors = await throughput(gateway, md, req, args.concurrency, args.duration)
        cpu_us = (cpu_seconds(gateway_pid) - cpu0) / max(1.0, rps_gateway * args.duration) * 1e6
    return {**lat, "direct_rps": rps_direct, "gateway_rps": rps_gateway, "gateway_errors": errors,
            "gateway_cpu_us_per_request": cpu_us}


async def create_key(database: str) -> str:
    from minimax_m1.gateway.keys import KeyStore
    from minimax_m1.gateway.storage import open_database

    db = await open_database(database)
    key = (await KeyStore(db).create("bench")).key
    await db.close()
    return key


async def ledger_counts(database: str) -> tuple[int, int]:
    from minimax_m1.gateway.storage import open_database

    db = await open_database(database)
    records = (await db.execute("SELECT COUNT(*) FROM usage_records WHERE status = 'OK'"))[0][0]
    pending = (await db.execute("SELECT COUNT(*) FROM billing_outbox WHERE delivered_at IS NULL"))[0][0]
    await db.close()
    return records, pending


def start_gateway_process(tmp: pathlib.Path, upstream: str, database: str, metadata: dict[str, str],
                          telemetry: bool = False) -> tuple[subprocess.Popen, int]:
    config = {"upstream": {"target": upstream, "metadata": metadata},
              "quotas": {"default": GENEROUS},
              "billing": {"database": database, "hooks": [{"kind": "otel_metrics"}]}}
    path = tmp / "gateway.json"
    path.write_text(json.dumps(config))
    port = free_port()
    extra = ["--metrics-port", str(free_port())] if telemetry else []
    proc = spawn(["-m", "minimax_m1.gateway", "--config", str(path), "--port", str(port), "--log-level", "WARNING",
                  *extra], "gateway listening")
    wait_for_port("127.0.0.1", port)
    return proc, port


def run_engine(args, tmp: pathlib.Path) -> None:
    try:
        import minimax_m1.serving  # noqa: F401
    except Exception as exc:  # the engine's package may not exist yet
        print(f"engine: unavailable (minimax_m1.serving is not importable: {exc})")
        return
    if not args.engine_target:
        print("engine: unavailable (start the engine, e.g. `minimax-m1 serve`, and pass --engine-target HOST:PORT)")
        return
    database = f"sqlite:///{tmp / 'engine.sqlite3'}"
    key = asyncio.run(create_key(database))
    proc, port = start_gateway_process(tmp, args.engine_target, database, dict(args.engine_metadata))
    try:
        req = pb.GenerateRequest(input="Hello", max_output_tokens=1)

        async def go() -> dict:
            async with grpc.aio.insecure_channel(args.engine_target) as up, \
                    grpc.aio.insecure_channel(f"127.0.0.1:{port}") as gw:
                md_up = tuple(args.engine_metadata)
                direct = pb_grpc.GenerationStub(up)

                class WithMetadata:  # the engine's Serve ingress needs its routing metadata directly too
                    async def Generate(self, r, timeout):  # noqa: N802
                        return await direct.Generate(r, metadata=md_up, timeout=timeout)

                return await latency(WithMetadata(), pb_grpc.GenerationStub(gw), key, args.engine_samples, req)

        e2e = asyncio.run(go())
        print(f"engine end to end (max_output_tokens=1, {args.engine_samples} calls, no target): "
              f"direct p50 {e2e['direct_p50_ms']:.2f} ms p99 {e2e['direct_p99_ms']:.2f} ms | "
              f"through gateway p50 {e2e['gateway_p50_ms']:.2f} ms p99 {e2e['gateway_p99_ms']:.2f} ms")
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=2000, help="sequential calls per side for latency")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per throughput run")
    p.add_argument("--concurrency", type=int, default=32, help="callers in flight for throughput")
    p.add_argument("--engine", action="store_true", help="also measure end to end through the real engine")
    p.add_argument("--engine-target", help="host:port of a running engine's Generation ingress")
    p.add_argument("--engine-metadata", type=lambda s: tuple(s.split("=", 1)), action="append",
                   default=[("application", "minimax-m1")], help="routing metadata for the engine (KEY=VALUE)")
    p.add_argument("--engine-samples", type=int, default=50)
    p.add_argument("--telemetry", action="store_true",
                   help="run the gateway with telemetry on (spans and metrics, Prometheus endpoint)")
    p.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp_name:
        tmp = pathlib.Path(tmp_name)
        upstream_port = free_port()
        upstream_proc = spawn(["-m", "tests.gateway.fake_model", "--port", str(upstream_port)], "listening on")
        upstream = f"127.0.0.1:{upstream_port}"
        database = f"sqlite:///{tmp / 'gateway.sqlite3'}"
        key = asyncio.run(create_key(database))
        gateway_proc, gateway_port = start_gateway_process(tmp, upstream, database, {"application": "minimax-m1"},
                                                           args.telemetry)
        try:
            r = asyncio.run(measure(args, upstream, gateway_port, key, gateway_proc.pid))
            time.sleep(1.0)  # let the outbox catch up before counting
            records, pending = asyncio.run(ledger_counts(database))
        finally:
            gateway_proc.terminate()
            gateway_proc.wait(30)
            upstream_proc.terminate()
            upstream_proc.wait(30)

        load = os.getloadavg()
        print(f"machine: {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
              "upstream, gateway and load generator share them")
        print(f"latency, {args.samples} sequential unary calls each (max_output_tokens=1):")
        print(f"  direct   p50 {r['direct_p50_ms']:.3f} ms  p99 {r['direct_p99_ms']:.3f} ms")
        print(f"  gateway  p50 {r['gateway_p50_ms']:.3f} ms  p99 {r['gateway_p99_ms']:.3f} ms")
        print(f"  added    p50 {r['added_p50_ms']:.3f} ms  p99 {r['added_p99_ms']:.3f} ms  "
              f"(ratio gateway/direct p50 {r['gateway_p50_ms'] / r['direct_p50_ms']:.2f}x; target: < 2 ms added at p50"
              f" -> {'met' if r['added_p50_ms'] < 2 else 'NOT met'})")
        print(f"throughput, {args.concurrency} callers for {args.duration:.0f} s, quotas and billing on"
              f"{', telemetry on' if args.telemetry else ''}:")
        print(f"  direct   {r['direct_rps']:.0f} req/s")
        print(f"  gateway  {r['gateway_rps']:.0f} req/s  errors {r['gateway_errors']}  "
              f"(ratio gateway/direct {r['gateway_rps'] / r['direct_rps']:.2f}; target: >= 1000 req/s -> "
              f"{'met' if r['gateway_rps'] >= 1000 else 'NOT met'})")
        print(f"  gateway CPU {r['gateway_cpu_us_per_request']:.0f} us per request (all its threads, from /proc): "
              f"one fully used core would serve {1e6 / r['gateway_cpu_us_per_request']:.0f} req/s "
              "(derived, not measured; its event loop is one thread)")
        print(f"billing check: {records} OK usage records in the ledger, {pending} outbox rows undelivered")
        if args.json:
            print(json.dumps({**r, "ledger_ok_records": records, "outbox_pending": pending}))
        if args.engine:
            run_engine(args, tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
