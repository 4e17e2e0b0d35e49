"""Fixtures for the kernel tests. There is no GPU here: the Triton kernels run under Triton's CPU
interpreter, in a child process (see interp_worker.py for why not in this one)."""
from __future__ import annotations

import importlib.util

import pytest

from tests.kernels.interp_worker import InterpreterWorker


@pytest.fixture(scope="session")
def interp():
    """Runs a test body in the interpreter child: interp.run(body, *args)."""
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    worker = InterpreterWorker()
    yield worker
    worker.close()
