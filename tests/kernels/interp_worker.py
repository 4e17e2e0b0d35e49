"""A child process that runs kernel-test bodies under Triton's CPU interpreter.

Triton reads TRITON_INTERPRET when a function is decorated with @triton.jit, and Triton's own
library functions (tl.cdiv, tl.sum, ...) are decorated when `triton` is first imported. So the
variable must be set before anything in the process imports Triton, which the pytest process
cannot promise: another test folder may import Triton first. The bodies therefore run in a spawned
child whose initializer sets the variable before the child imports torch or Triton. The pytest
process never sets it, so nothing leaks into other folders or into processes their tests start.

This module imports nothing heavy: the child imports it first, before the variable is set.
"""
from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

# One body may take a while under the interpreter; a hung child fails the test instead of the run.
BODY_TIMEOUT_S = 300


def _init_child() -> None:
    os.environ["TRITON_INTERPRET"] = "1"


class InterpreterWorker:
    """Runs picklable module-level functions in one spawned child with TRITON_INTERPRET=1."""

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None

    def run(self, fn, *args, **kwargs):
        """fn(*args, **kwargs) in the child; its result, or its exception re-raised here."""
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn"), initializer=_init_child
            )
        try:
            return self._pool.submit(fn, *args, **kwargs).result(timeout=BODY_TIMEOUT_S)
        except BrokenProcessPool:
            self.close()  # the child died (a crash, say): the next test gets a fresh one
            raise

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
