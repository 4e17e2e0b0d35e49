"""The platform as separate processes, as a cluster runs it: the engine (EngineServer on gRPC, its
telemetry from the environment like a Ray replica's) and the gateway (`python -m minimax_m1.gateway
--metrics-port`), each with a Prometheus endpoint and OTLP export to a given collector; plus a
traffic generator that keeps real calls going (successes, errors, quota rejections).
"""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from dataclasses import dataclass, field

import grpc

from minimax_m1._generated import generation_pb2 as pb
from minimax_m1._generated import generation_pb2_grpc as pb_grpc
from tests.conftest import REPO_ROOT
from tests.services import free_port, wait_for_port

# Small KV pool: four concurrent 30-token sequences do not fit, so preemptions happen too.
ENGINE = {"max_num_seqs": 4, "max_batch_tokens": 32, "prefill_chunk_size": 8, "kv_block_size": 4, "num_kv_blocks": 24}


_TELEMETRY_ENV = ("OTEL_EXPORTER_OTLP_ENDPOINT", "MINIMAX_M1_METRICS_PORT")


# Tests want exports within a second; a deployment keeps the OpenTelemetry defaults (10 s, 5 s).
FAST_EXPORT = {"OTEL_METRIC_EXPORT_INTERVAL": "1000", "OTEL_BSP_SCHEDULE_DELAY": "200"}


def _env(otlp_endpoint: str | None, metrics_port: int | None, pod: str, service: str,
         fast_export: bool = True) -> dict[str, str]:
    """The process environment; no OTLP endpoint and no metrics port means telemetry stays off."""
    env = {k: v for k, v in os.environ.items() if k not in _TELEMETRY_ENV and k not in FAST_EXPORT}
    env.update({"POD_NAME": pod, "OTEL_SERVICE_NAME": service, "MINIMAX_M1_LOG_LEVEL": "WARNING", "OMP_NUM_THREADS": "1",
                "OTEL_EXPORTER_OTLP_INSECURE": "true", "MINIMAX_M1_METRICS_HOST": "127.0.0.1",
                **(FAST_EXPORT if fast_export else {})})
    if otlp_endpoint:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = otlp_endpoint
    if metrics_port is not None:
        env["MINIMAX_M1_METRICS_PORT"] = str(metrics_port)
    return env


def _wait_line(proc: subprocess.Popen, marker: str, what: str) -> str:
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if marker in line:
            return line
    raise RuntimeError(f"{what} exited with {proc.wait()} before ready:\n{''.join(lines)[-3000:]}")


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is None:
        return
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def _create_keys(database: str, tenants: tuple[str, ...]) -> dict[str, str]:
    from minimax_m1.gateway.keys import KeyStore
    from minimax_m1.gateway.storage import open_database

    db = await open_database(database)
    try:
        store = KeyStore(db)
        return {t: (await store.create(t)).key for t in tenants}
    finally:
        await db.close()


@dataclass
class PlatformProcesses:
    model_path: str
    tmp: str
    otlp_endpoint: str | None  # None and telemetry=False: both processes run without telemetry
    telemetry: bool = True
    engine: dict = field(default_factory=lambda: dict(ENGINE))
    quotas: dict = field(default_factory=lambda: {"tenants": {"limited": {"requests_per_minute": 2}}})
    fast_export: bool = True  # short export/outbox intervals for tests; False: the deployed defaults
    engine_port: int = 0
    engine_metrics_port: int = 0
    gateway_port: int = 0
    gateway_metrics_port: int = 0
    keys: dict[str, str] = field(default_factory=dict)
    _procs: list = field(default_factory=list)

    def start(self) -> "PlatformProcesses":
        try:
            self._start_engine()
            self._start_gateway()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_engine(self) -> None:
        self.engine_port = free_port()
        self.engine_metrics_port = free_port() if self.telemetry else 0
        proc = subprocess.Popen(
            [sys.executable, os.path.join(REPO_ROOT, "tests", "telemetry", "engine_service.py"), "--model",
             self.model_path, "--port", str(self.engine_port), "--engine", json.dumps(self.engine)], cwd=REPO_ROOT,
            env=_env(self.otlp_endpoint, self.engine_metrics_port or None, "engine-0", "minimax-m1-engine",
                     self.fast_export),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self._procs.append(proc)
        _wait_line(proc, "engine ready", "the engine process")
        if self.telemetry:
            wait_for_port("127.0.0.1", self.engine_metrics_port, proc=proc)

    def _start_gateway(self) -> None:
        database = f"sqlite:///{os.path.join(self.tmp, 'gateway.sqlite3')}"
        self.keys = asyncio.run(_create_keys(database, ("acme", "limited")))
        self.gateway_port = free_port()
        self.gateway_metrics_port = free_port() if self.telemetry else 0
        config = {"host": "127.0.0.1", "port": self.gateway_port,
                  "upstream": {"target": f"127.0.0.1:{self.engine_port}"}, "quotas": self.quotas,
                  "billing": {"database": database, "hooks": [{"kind": "otel_metrics", "name": "otel_metrics"}],
                              # tests want billed usage within a second; otherwise the gateway's default
                              **({"outbox_poll_s": 0.1} if self.fast_export else {})}}
        path = os.path.join(self.tmp, "gateway.json")
        with open(path, "w") as f:
            json.dump(config, f)
        metrics = ["--metrics-port", str(self.gateway_metrics_port)] if self.telemetry else []
        proc = subprocess.Popen(
            [sys.executable, "-m", "minimax_m1.gateway", "--config", path, *metrics], cwd=REPO_ROOT,
            env=_env(self.otlp_endpoint, self.gateway_metrics_port or None, "gateway-0", "minimax-m1-gateway",
                     self.fast_export),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self._procs.append(proc)
        _wait_line(proc, "gateway listening", "the gateway process")
        if self.telemetry:
            wait_for_port("127.0.0.1", self.gateway_metrics_port, proc=proc)

    def stop(self) -> None:
        for proc in reversed(self._procs):
            _stop(proc)
        self._procs.clear()


class Traffic:
    """Calls the gateway from threads until stopped: streams and unary calls for tenant acme,
    calls over tenant limited's quota, and calls without a key. Counts outcomes by status code."""

    def __init__(self, platform: PlatformProcesses, streams: int = 2):
        self.platform = platform
        self.streams = streams
        self.codes: dict[str, int] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def __enter__(self) -> "Traffic":
        for i in range(self.streams):
            self._threads.append(threading.Thread(target=self._loop, args=("acme", i), daemon=True))
        self._threads.append(threading.Thread(target=self._loop, args=("limited", 0), daemon=True))
        self._threads.append(threading.Thread(target=self._loop, args=(None, 0), daemon=True))
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)

    def _count(self, code: str) -> None:
        with self._lock:
            self.codes[code] = self.codes.get(code, 0) + 1

    def _loop(self, tenant: str | None, i: int) -> None:
        metadata = (("authorization", f"Bearer {self.platform.keys[tenant]}"),) if tenant else ()
        with grpc.insecure_channel(f"127.0.0.1:{self.platform.gateway_port}") as channel:
            stub = pb_grpc.GenerationStub(channel)
            n = 0
            while not self._stop.is_set():
                n += 1
                req = pb.GenerateRequest(input=f"hello world this is prompt number {i}-{n}", max_output_tokens=8)
                try:
                    if n % 2:
                        list(stub.GenerateStream(req, metadata=metadata, timeout=60))
                    else:
                        stub.Generate(req, metadata=metadata, timeout=60)
                    self._count("OK")
                except grpc.RpcError as exc:
                    self._count(exc.code().name)
                if tenant != "acme":
                    self._stop.wait(0.5)
