"""The SDK alone: a fresh venv, `pip install <repo>` (no extras, not editable), a real call.

Slow (it builds the package and fetches grpcio and protobuf, from pip's cache when warm), so it
runs in CI's slow step: `pytest -m slow tests/sdk/test_install.py`.
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from tests.sdk.fake_upstream import FakeModelServicer, RunningServer, fake_greedy_text
from tests.sdk.gateway_stack import GatewayStack

REPO = pathlib.Path(__file__).parents[2]
HEAVY = ("torch", "ray", "triton")

CALL = textwrap.dedent(
    """
    import importlib.util, json, sys
    from minimax_m1 import Client
    with Client() as client:  # endpoint and key from the environment
        result = client.generate("fresh venv", max_output_tokens=3, temperature=0)
    print(json.dumps({
        "text": result.text,
        "finish_reason": str(result.finish_reason),
        "heavy_imported": [m for m in %r if m in sys.modules],
        "heavy_installed": [m for m in %r if importlib.util.find_spec(m) is not None],
    }))
    """
    % (HEAVY, HEAVY)
)


@pytest.mark.slow
def test_sdk_installs_without_extras_and_calls_the_gateway(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--disable-pip-version-check", str(REPO)],
        capture_output=True, text=True, timeout=1200, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout[-4000:] + install.stderr[-4000:]

    freeze = subprocess.run([str(python), "-m", "pip", "list", "--format=json"],
                            capture_output=True, text=True, check=True, env=env)  # fmt: skip
    installed = {p["name"].lower().replace("_", "-"): p["version"] for p in json.loads(freeze.stdout)}
    assert {"minimax-m1", "grpcio", "protobuf"} <= set(installed)
    assert not set(HEAVY) & set(installed), sorted(installed)
    # Nothing beyond the base dependencies (and pip itself / setuptools from venv creation).
    assert set(installed) <= {"minimax-m1", "grpcio", "protobuf", "typing-extensions", "pip", "setuptools"}

    upstream = RunningServer(FakeModelServicer())  # FAKE MODEL standing in for the GPU model
    gateway = GatewayStack(upstream.address, tmp_path)
    try:
        call_env = {**env, "MINIMAX_M1_ENDPOINT": gateway.address,
                    "MINIMAX_M1_API_KEY": gateway.create_key().key}  # fmt: skip
        sdk = subprocess.run([str(python), "-c", CALL], capture_output=True, text=True,
                             timeout=120, cwd=tmp_path, env=call_env)  # fmt: skip
        assert sdk.returncode == 0, sdk.stderr
        report = json.loads(sdk.stdout)
        assert report == {
            "text": fake_greedy_text("fresh venv", 3),
            "finish_reason": "length",
            "heavy_imported": [],
            "heavy_installed": [],
        }
        # The CLI's client commands work in the same torch-free install.
        cli = subprocess.run(
            [str(venv / "bin" / "minimax-m1"), "generate", "cli too", "--max-output-tokens", "2", "--stream"],
            capture_output=True, text=True, timeout=120, cwd=tmp_path, env=call_env,
        )  # fmt: skip
        assert cli.returncode == 0, cli.stderr
        assert cli.stdout == fake_greedy_text("cli too", 2) + "\n"
    finally:
        gateway.stop()
        upstream.stop()
