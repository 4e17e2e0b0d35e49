"""`minimax-m1 serve` end to end: a real subprocess with local Ray, the Serve app and the gateway;
the SDK calls it with the key from MINIMAX_M1_API_KEY; the gateway's and the engine's Prometheus
endpoints (--metrics-port, --engine-metrics-port) serve their metrics; Ctrl-C (SIGINT) stops it
cleanly."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.services import free_port

pytestmark = pytest.mark.slow


def _wait_for_line(proc, needle: str, timeout_s: float) -> list[str]:
    lines = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        lines.append(line)
        if needle in line:
            return lines
    raise AssertionError(f"no {needle!r} from `minimax-m1 serve`; output:\n{''.join(lines)}")


def test_serve_command_with_gateway_metrics_and_clean_shutdown(tiny_path, tmp_path):
    from minimax_m1 import Client

    port, gateway_metrics, engine_metrics = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "MINIMAX_M1_METRICS"))}
    env.update({"MINIMAX_M1_API_KEY": "mm1-test-key-0123456789", "MINIMAX_M1_DATA_DIR": str(tmp_path)})
    proc = subprocess.Popen([sys.executable, "-m", "minimax_m1.cli.main", "serve", "--model", tiny_path, "--port", str(port),
                             "--name", "tiny", "--metrics-port", str(gateway_metrics),
                             "--engine-metrics-port", str(engine_metrics)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        lines = _wait_for_line(proc, "listening on", 300)
        assert f"127.0.0.1:{port}" in lines[-1]
        assert not any("API key for the local tenant" in l for l in lines), "a key from the environment is not printed"
        with Client(f"127.0.0.1:{port}", api_key="mm1-test-key-0123456789", tls=False) as client:
            result = client.generate("Hello", max_output_tokens=5, seed=1, temperature=0.5)
            assert result.usage.output_tokens == 5
            chunks = list(client.stream("Hello", max_output_tokens=5, seed=1, temperature=0.5))
            assert "".join(c.text_delta for c in chunks) == result.text
        gateway = urllib.request.urlopen(f"http://127.0.0.1:{gateway_metrics}/metrics", timeout=10).read().decode()
        engine = urllib.request.urlopen(f"http://127.0.0.1:{engine_metrics}/metrics", timeout=10).read().decode()
        assert 'minimax_m1_gateway_requests_total{' in gateway and 'rpc_response_status_code="OK"' in gateway
        assert "gen_ai_server_time_to_first_token_seconds_count{" in engine
        assert 'service_name="minimax-m1-engine"' in engine and 'service_name="minimax-m1-gateway"' in gateway
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
