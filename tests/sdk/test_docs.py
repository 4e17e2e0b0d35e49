"""docs/sdk.md's examples run as written.

Every ```python block runs against the real gateway (in front of the FAKE MODEL upstream of
fake_upstream.py, a stand-in for the GPU model), with MINIMAX_M1_ENDPOINT / MINIMAX_M1_API_KEY
set as the doc says. The ```python model block (the seed's usage) runs on a tiny checkpoint made
by `minimax-m1 make-checkpoint`. Blocks marked no-run (a private CA file) are only compiled.
"""
from __future__ import annotations

import contextlib
import io
import pathlib
import re

import pytest

from tests.sdk.fake_upstream import FakeModelServicer, RunningServer
from tests.sdk.gateway_stack import GatewayStack

DOC = pathlib.Path(__file__).parents[2] / "docs" / "sdk.md"
_BLOCK = re.compile(r"^```python([^\n]*)\n(.*?)^```", re.S | re.M)


def _blocks(kind: str) -> list[tuple[int, str]]:
    text = DOC.read_text()
    found = []
    for match in _BLOCK.finditer(text):
        if match.group(1).strip() == kind:
            found.append((text[: match.start()].count("\n") + 1, match.group(2)))
    return found


def _run(line: int, code: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, f"{DOC}:{line}", "exec"), {"__name__": "__main__"})
    return out.getvalue()


@pytest.fixture(scope="module")
def gateway_env(tmp_path_factory):
    upstream = RunningServer(FakeModelServicer())
    gateway = GatewayStack(upstream.address, tmp_path_factory.mktemp("docs-gateway"))
    try:
        yield gateway.address, gateway.create_key().key
    finally:
        gateway.stop()
        upstream.stop()


@pytest.mark.parametrize(("line", "code"), _blocks(""), ids=lambda v: str(v) if isinstance(v, int) else "")
def test_sdk_examples_run(line, code, gateway_env, monkeypatch):
    endpoint, key = gateway_env
    monkeypatch.setenv("MINIMAX_M1_ENDPOINT", endpoint)
    monkeypatch.setenv("MINIMAX_M1_API_KEY", key)
    assert _run(line, code).strip()  # every example prints something


def test_doc_has_the_examples():
    assert len(_blocks("")) >= 7 and len(_blocks("model")) == 1
    for _, code in _blocks("no-run"):
        compile(code, str(DOC), "exec")


def test_seed_usage_runs_on_a_tiny_checkpoint(tmp_path, monkeypatch):
    pytest.importorskip("torch", reason="the model example needs torch (the [model] extra)")
    from minimax_m1.cli.main import main

    monkeypatch.chdir(tmp_path)
    assert main(["make-checkpoint", "tiny-checkpoint"]) == 0
    ((line, code),) = _blocks("model")
    assert 'path = "tiny-checkpoint"' in code
    assert _run(line, code)  # the decoded prompt and 200 new tokens
