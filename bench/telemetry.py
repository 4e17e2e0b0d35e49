"""Throughput with telemetry on against off, in one run (target: on / off >= 0.97).

    .venv/bin/python bench/telemetry.py [--instances 4] [--rounds 3] [--duration 5] [--concurrency 16]
                                        [--model PATH | --hidden 64]
    .venv/bin/python bench/telemetry.py --instances 32 --rounds 4 --duration 2.5   # for a figure (~15 min)

The defaults give a quick look; on a shared 2-core machine a run of 64 pairs has a standard error
of ~0.011 on the ratio, 128 pairs ~0.008-0.010 (the run prints its own).

Two copies of the platform run as processes, as in a cluster: an engine (the Engine deployment's
class on gRPC; in-process model instance) and a gateway (`python -m minimax_m1.gateway`, quotas and
the SQLite ledger on, the billing outbox feeding the OpenTelemetry-metrics hook at the default
0.2 s poll) in front of it.
- "on": both with telemetry as deployed: spans through the span sidecar (a child process of
  each) to OTLP/gRPC (a real receiver, tests/telemetry/otlp_receiver.py, in its own process,
  standing in for a collector on another machine: it runs at nice 19 and its CPU is reported),
  metrics pushed over OTLP and served on a Prometheus endpoint, with the OpenTelemetry default
  intervals (metrics every 10 s, spans batched every 5 s) and a scrape every --scrape-interval
  seconds (the chart's monitors use 30 s); expert load sampled as deployed (every 32nd step,
  MINIMAX_M1_EXPERT_LOAD_EVERY);
- "off": the same processes without telemetry (no OTLP endpoint, no metrics port).
The load is --concurrency streaming callers (this process), 32 output tokens per request: by default
twice the engine's batch, so the engine is saturated and the figure is its throughput, not the
callers' round trips. It runs in rounds of --duration seconds; each round runs both sides back to
back, in alternating order (off-on, on-off, ...). Each of --instances starts both sides' processes
afresh (which side starts first alternates too): two identical engine processes, both without
telemetry, measured 4% apart for their whole lives on this machine (an A/A test; memory
placement), as much as the effect measured here, so one pair of processes is not enough.
Reported: output tokens/s per round; the target figure, the median of the rounds' on / off ratios
(each pairs two runs seconds apart, so drift slower than a round cancels; the quartiles show the
spread), their geometric mean, the pooled ratio, and the ratio of the two medians; the standard
deviations of the paired log ratios within an instance and between instances, and the standard
error of their mean (how far a run's figure can be from the truth); the CPU seconds the engine
and gateway processes (each with its children: the span sidecar that exports its spans) spent per
1000 output tokens on each side, whose inverse ratio is what a machine with idle cores would
show; and the host's CPU steal time during the run.

The model defaults to the demo model (what `minimax-m1 serve` runs). --hidden 64 builds a tiny
random checkpoint instead, whose steps take a few milliseconds: telemetry's per-step and
per-request costs weigh far more there than on a real model, a lower bound.
"""
from __future__ import annotations

import argparse
import asyncio
import math
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # for tests.telemetry's process harness and OTLP receiver

import grpc  # noqa: E402

from minimax_m1._generated import generation_pb2 as pb  # noqa: E402
from minimax_m1._generated import generation_pb2_grpc as pb_grpc  # noqa: E402
from tests.telemetry.platform_processes import PlatformProcesses  # noqa: E402

ENGINE = {"max_num_seqs": 8, "max_batch_tokens": 256, "prefill_chunk_size": 64, "kv_block_size": 16,
          "num_kv_blocks": 512}
NO_LIMITS = {"default": {"requests_per_minute": 0}}
OUTPUT_TOKENS = 32


async def _caller(stub, metadata, stop_at: float, counts: list[int], i: int) -> None:
    n = 0
    while time.monotonic() < stop_at:
        n += 1
        req = pb.GenerateRequest(input=f"benchmark prompt {i} {n}: the quick brown fox jumps", max_output_tokens=OUTPUT_TOKENS)
        call = stub.GenerateStream(req, metadata=metadata, timeout=120)
        last = None
        while (msg := await call.read()) is not grpc.aio.EOF:
            last = msg
        counts[0] += last.usage.output_tokens if last is not None else 0


def _proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _host_cpu() -> list[int]:
    """The host's CPU time counters (Linux /proc/stat: user nice system idle iowait irq softirq steal ...)."""
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:]]


def _noise(ratios: list[float], rounds: int) -> tuple[float, float, float]:
    """(sd of the paired log ratios within an instance, sd between instances' means, standard error
    of the mean log ratio) for ratios in instance order, `rounds` per instance."""
    logs = [math.log(r) for r in ratios]
    groups = [logs[i:i + rounds] for i in range(0, len(logs), rounds)]
    if rounds < 2 or len(groups) < 2:
        return float("nan"), float("nan"), float("nan")
    within = statistics.fmean(statistics.variance(g) for g in groups)
    between = max(statistics.variance(statistics.fmean(g) for g in groups) - within / rounds, 0.0)
    se = math.sqrt(within / len(logs) + between / len(groups))
    return math.sqrt(within), math.sqrt(between), se


def _descendants(pid: int) -> list[int]:
    """The process's children, grandchildren, ... (Linux /proc): the span sidecars."""
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        return out
    return out + [d for c in out for d in _descendants(c)]


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process and its running descendants (the span sidecar counts as its parent's)."""
    total = 0.0
    for p in [pid, *_descendants(pid)]:
        try:
            total += _proc_cpu_s(p)
        except OSError:  # exited meanwhile
            pass
    return total


def _cpu_s(platform: PlatformProcesses) -> list[float]:
    """CPU seconds of each platform process so far, with its children (engine, gateway)."""
    return [_tree_cpu_s(proc.pid) for proc in platform._procs]


async def _round(platform: PlatformProcesses, duration: float, concurrency: int) -> tuple[float, list[float]]:
    """(output tokens/s, [engine, gateway] CPU s per 1000 output tokens)."""
    metadata = (("authorization", f"Bearer {platform.keys['acme']}"),)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{platform.gateway_port}") as channel:
        stub = pb_grpc.GenerationStub(channel)
        await stub.GenerateStream(pb.GenerateRequest(input="warm up", max_output_tokens=2), metadata=metadata).read()
        counts = [0]
        cpu0, started = _cpu_s(platform), time.monotonic()
        await asyncio.gather(*[_caller(stub, metadata, started + duration, counts, i) for i in range(concurrency)])
        elapsed, cpu1 = time.monotonic() - started, _cpu_s(platform)
        return counts[0] / elapsed, [1000.0 * (b - a) / max(counts[0], 1) for a, b in zip(cpu0, cpu1)]


class Scraper:
    """Scrapes the Prometheus endpoints every `interval_s` while running, like a Prometheus would."""

    def __init__(self, ports: list[int], interval_s: float):
        self.ports, self.interval_s = ports, interval_s
        self.scrapes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            for port in self.ports:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
                self.scrapes += 1

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--instances", type=int, default=4, help="fresh pairs of platforms (on, off), one after another")
    p.add_argument("--rounds", type=int, default=3, help="rounds per instance; each runs both sides")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per side per round")
    p.add_argument("--concurrency", type=int, default=16,
                   help="concurrent streaming callers (default: twice the engine's max_num_seqs, so it stays saturated)")
    p.add_argument("--model", help="checkpoint folder (default: the demo model, what `minimax-m1 serve` runs)")
    p.add_argument("--hidden", type=int, default=0,
                   help="instead, a random checkpoint of this hidden and expert size (64: steps of a few ms, the worst case)")
    p.add_argument("--scrape-interval", type=float, default=15.0, help="seconds between Prometheus scrapes")
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-telemetry-") as tmp:
        model = args.model
        if args.hidden:
            from minimax_m1.model_shards.tiny import make_checkpoint

            model = os.path.join(tmp, "model")
            make_checkpoint(model, seed=0, hidden_size=args.hidden, intermediate_size=args.hidden)
        elif model is None:
            from minimax_m1.model_shards.demo import default_model_path

            model = default_model_path()
        # The receiver stands in for a collector, which runs on other machines: at nice 19 it takes
        # this machine's cores from the platform as little as it can (its CPU is still reported).
        receiver = subprocess.Popen([sys.executable, str(REPO / "tests" / "telemetry" / "otlp_receiver.py")],
                                    stdout=subprocess.PIPE, text=True, preexec_fn=lambda: os.nice(19))
        endpoint = f"http://127.0.0.1:{receiver.stdout.readline().split()[-1]}"
        results: dict[str, list[float]] = {"off": [], "on": []}
        cpu: dict[str, list[list[float]]] = {"off": [], "on": []}
        receiver_cpu0 = _proc_cpu_s(receiver.pid)
        host0 = _host_cpu()
        scrapes = 0
        try:
            for instance in range(args.instances):
                # Fresh processes for each instance: two identical processes can differ by several
                # percent for as long as they live (memory placement), as much as what is measured.
                on = PlatformProcesses(model, os.path.join(tmp, f"on{instance}"), endpoint, True, ENGINE, NO_LIMITS,
                                       fast_export=False)
                off = PlatformProcesses(model, os.path.join(tmp, f"off{instance}"), None, False, ENGINE, NO_LIMITS,
                                        fast_export=False)
                os.makedirs(on.tmp), os.makedirs(off.tmp)
                try:
                    # which side starts first alternates too (a process started second finds the
                    # first one's memory in use)
                    for platform in ((on, off) if instance % 2 == 0 else (off, on)):
                        platform.start()
                    with Scraper([on.gateway_metrics_port, on.engine_metrics_port], args.scrape_interval) as scraper:
                        for r in range(args.rounds):
                            sides = (("off", off), ("on", on)) if r % 2 == 0 else (("on", on), ("off", off))
                            for name, platform in sides:
                                tps, cpu_per_k = asyncio.run(_round(platform, args.duration, args.concurrency))
                                results[name].append(tps)
                                cpu[name].append(cpu_per_k)
                                print(f"instance {instance + 1} round {r + 1} {name:>3}: {tps:8.1f} output tokens/s; "
                                      f"CPU s / 1000 tokens: engine {cpu_per_k[0]:.3f}, gateway {cpu_per_k[1]:.3f}",
                                      flush=True)
                    scrapes += scraper.scrapes
                finally:
                    on.stop()
                    off.stop()
            receiver_cpu = _proc_cpu_s(receiver.pid) - receiver_cpu0
            host = [b - a for a, b in zip(host0, _host_cpu())]
        finally:
            receiver.terminate()
            received = receiver.stdout.read().strip()
            receiver.wait(30)
    off_med, on_med = statistics.median(results["off"]), statistics.median(results["on"])
    # Each round measures both sides back to back; its on/off ratio cancels drift slower than a round.
    ratios = [a / b for a, b in zip(results["on"], results["off"])]  # in instance order
    paired = sorted(ratios)
    q1, paired_med, q3 = statistics.quantiles(paired, n=4, method="inclusive") if len(paired) > 1 else paired * 3
    on_tokens = sum(results["on"]) * args.duration
    print(f"\nmodel: {args.model or model}; cpus: {os.cpu_count()}, load average: {os.getloadavg()[0]:.2f}; "
          f"{args.concurrency} streaming callers x {OUTPUT_TOKENS} output tokens; {args.instances} instances x "
          f"{args.rounds} rounds x {args.duration:.0f} s per side")
    print(f"telemetry on: OTLP receiver {received} ({1000 * receiver_cpu / max(on_tokens, 1):.3f} CPU s / 1000 "
          f"on-side tokens, at nice 19); {scrapes} Prometheus scrapes")
    print(f"throughput off (baseline): {off_med:.1f} output tokens/s (median)")
    print(f"throughput on:             {on_med:.1f} output tokens/s (median)")
    med = {side: [statistics.median(c[i] for c in cpu[side]) for i in range(2)] for side in cpu}
    cpu_off, cpu_on = sum(med["off"]), sum(med["on"])
    print(f"CPU s per 1000 output tokens, engine / gateway: off {med['off'][0]:.3f} / {med['off'][1]:.3f}, "
          f"on {med['on'][0]:.3f} / {med['on'][1]:.3f}; CPU-bound throughput ratio (off CPU / on CPU) "
          f"{cpu_off / cpu_on:.3f}")
    print(f"ratio of the medians on / off: {on_med / off_med:.3f}")
    geomean = math.exp(statistics.fmean(math.log(r) for r in paired))
    pooled = sum(results["on"]) / sum(results["off"])
    print(f"ratio on / off, geometric mean of the rounds' ratios: {geomean:.3f}; pooled (all on tokens / all off "
          f"tokens, equal round lengths): {pooled:.3f}")
    within, between, se = _noise(ratios, args.rounds)
    steal = host[7] / max(sum(host[:8]), 1) if len(host) > 7 else float("nan")
    print(f"noise: paired log ratios vary by {within:.3f} (sd) within an instance and {between:.3f} between "
          f"instances; standard error of the mean ratio ~{se:.3f}; host CPU steal during the run {100 * steal:.1f}%")
    print(f"ratio on / off, median of the {len(paired)} rounds' ratios: {paired_med:.3f} (quartiles {q1:.3f} - {q3:.3f}) "
          f"(target >= 0.97) {'PASS' if paired_med >= 0.97 else 'BELOW TARGET'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
