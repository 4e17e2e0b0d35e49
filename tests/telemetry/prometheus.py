"""A real Prometheus for tests (Debian's /usr/bin/prometheus), scraping given targets.

    prom = PrometheusServer({"gateway": ["127.0.0.1:9464"]}, scrape_interval="1s").start()
    prom.wait_targets_up(2)
    prom.query('sum(rate(minimax_m1_gateway_requests_total[1m]))')   # the result vector
    prom.stop()

Its own config file and TSDB live in a temp dir; it listens on a free 127.0.0.1 port.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request

from tests.services import free_port, wait_for_port

BINARY = os.environ.get("MINIMAX_M1_TEST_PROMETHEUS", "/usr/bin/prometheus")


def available() -> bool:
    return os.path.isfile(BINARY) and os.access(BINARY, os.X_OK) or shutil.which("prometheus") is not None


class PrometheusServer:
    def __init__(self, targets: dict[str, list[str]], scrape_interval: str = "1s"):
        self.targets = targets
        self.scrape_interval = scrape_interval
        self.port = 0
        self._dir: tempfile.TemporaryDirectory | None = None
        self._proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "PrometheusServer":
        binary = BINARY if os.path.isfile(BINARY) else shutil.which("prometheus")
        if binary is None:
            raise FileNotFoundError("prometheus binary not found")
        self._dir = tempfile.TemporaryDirectory(prefix="test-prometheus-")
        jobs = "".join(
            f"  - job_name: {job}\n    static_configs:\n      - targets: {json.dumps(addrs)}\n"
            for job, addrs in self.targets.items())
        config = (f"global:\n  scrape_interval: {self.scrape_interval}\n  evaluation_interval: {self.scrape_interval}\n"
                  f"scrape_configs:\n{jobs}")
        path = os.path.join(self._dir.name, "prometheus.yml")
        with open(path, "w") as f:
            f.write(config)
        self.port = free_port()
        self._log = open(os.path.join(self._dir.name, "prometheus.log"), "wb")
        self._proc = subprocess.Popen(
            [binary, f"--config.file={path}", f"--storage.tsdb.path={os.path.join(self._dir.name, 'data')}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h"],
            stdout=self._log, stderr=subprocess.STDOUT)
        wait_for_port("127.0.0.1", self.port, timeout_s=60, proc=self._proc)
        self._wait_ready()
        return self

    def _get(self, path: str, params: dict | None = None) -> dict:
        url = self.url + path + ("?" + urllib.parse.urlencode(params) if params else "")
        with urllib.request.urlopen(url, timeout=10) as resp:
            return json.loads(resp.read())

    def _wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"Prometheus not ready: {self.log()}")

    def log(self) -> str:
        try:
            with open(os.path.join(self._dir.name, "prometheus.log")) as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def targets_up(self) -> dict[str, str]:
        active = self._get("/api/v1/targets")["data"]["activeTargets"]
        return {t["scrapeUrl"]: t["health"] for t in active}

    def wait_targets_up(self, count: int, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        health = {}
        while time.monotonic() < deadline:
            health = self.targets_up()
            if len(health) >= count and all(h == "up" for h in health.values()):
                return
            time.sleep(0.5)
        raise TimeoutError(f"Prometheus targets not all up: {health}")

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        body = self._get("/api/v1/query", params)
        if body.get("status") != "success":
            raise AssertionError(f"PromQL {expr!r} failed: {body}")
        return body["data"]["result"]

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(20)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
            self._log.close()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None
