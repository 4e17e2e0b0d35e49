"""AsyncEngine: the LLMEngine loop in its own thread, with one async generator per request.

The loop thread owns the engine: requests and aborts reach it through a command queue and are
applied before the next step, so a cancelled request's slot and blocks are free before any more
compute happens. Outputs go back to each request's asyncio queue on the caller's event loop.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from minimax_m1.engine.engine import EngineStats, LLMEngine, RequestOutput
from minimax_m1.engine.errors import DeadlineExceededError, EngineDeadError, RequestCancelledError
from minimax_m1.engine.request import FinishReason, RequestParams, Sequence

log = logging.getLogger(__name__)


@dataclass
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue


class AsyncEngine:
    def __init__(self, engine: LLMEngine, name: str = "engine-loop"):
        self.engine = engine
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._streams: dict[str, _Stream] = {}
        self._stats = engine.stats()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # ---- the caller's side ---------------------------------------------------------------------
    async def generate(self, prompt: str | list[int], params: RequestParams, request_id: str | None = None,
                       deadline_s: float | None = None) -> AsyncIterator[RequestOutput]:
        """Stream a request's outputs. Raises per-request errors (before the first output for bad
        input) and EngineDeadError. Closing the generator early cancels the request."""
        request_id = request_id or uuid.uuid4().hex
        seq = self.engine.make_sequence(request_id, prompt, params)  # validation errors raise here
        loop = asyncio.get_running_loop()
        stream = _Stream(loop, asyncio.Queue())
        self._streams[request_id] = stream
        self._send(("add", seq, None))
        finished = False
        deadline = None if deadline_s is None else time.monotonic() + deadline_s
        try:
            while True:
                timeout = None if deadline is None else max(deadline - time.monotonic(), 0.0)
                try:
                    out: RequestOutput = await asyncio.wait_for(stream.queue.get(), timeout)
                except asyncio.TimeoutError:
                    await self.abort(request_id, FinishReason.ERROR)
                    finished = True
                    raise DeadlineExceededError(f"request {request_id} passed its deadline of {deadline_s:.3g} s") from None
                if out.error is not None:
                    finished = True
                    raise out.error
                finished = out.finished
                yield out
                if finished:
                    return
        finally:
            self._streams.pop(request_id, None)
            if not finished:  # the consumer went away (client cancelled): free its state now
                self._send(("abort", request_id, None))

    async def abort(self, request_id: str, reason: FinishReason = FinishReason.CANCELLED) -> None:
        """Abort a request and wait until its slot and blocks are free."""
        done = asyncio.get_running_loop().create_future()
        self._send(("abort", request_id, (done, reason)))
        await done

    async def wait_idle(self) -> EngineStats:
        """Wait until every command sent so far is applied; return the stats after it."""
        done = asyncio.get_running_loop().create_future()
        self._send(("sync", None, done))
        return await done

    def stats(self) -> EngineStats:
        """A snapshot taken after the last step (thread-safe)."""
        return self._stats

    def check_health(self) -> None:
        if not self._thread.is_alive():
            raise EngineDeadError("the engine loop has stopped")
        self.engine.check_health()

    def shutdown(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout_s)
        self.engine.close()

    def _send(self, command: tuple) -> None:
        self._commands.put(command)
        self._wake.set()

    # ---- the loop thread -----------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            self._apply_commands()
            if self.engine.has_unfinished():
                outputs = self.engine.step()
                self._stats = self.engine.stats()
                self._deliver(outputs)
            else:
                self._stats = self.engine.stats()
                self._wake.wait(0.5)
                self._wake.clear()
        self._fail_all(EngineDeadError("the engine is shutting down"))

    def _apply_commands(self) -> None:
        while True:
            try:
                kind, arg, reply = self._commands.get_nowait()
            except queue.Empty:
                return
            if kind == "add":
                self._add(arg)
            elif kind == "abort":
                future, reason = reply if reply else (None, FinishReason.CANCELLED)
                out = self.engine.abort(arg, reason)
                if out is not None and arg in self._streams:
                    out.error = RequestCancelledError(f"request {arg} was cancelled")
                    self._deliver([out])
                self._stats = self.engine.stats()
                if future is not None:
                    future.get_loop().call_soon_threadsafe(_resolve, future, None)
            elif kind == "sync":
                self._stats = self.engine.stats()
                reply.get_loop().call_soon_threadsafe(_resolve, reply, self._stats)

    def _add(self, seq: Sequence) -> None:
        if seq.request_id not in self._streams:
            return  # cancelled before it was added
        try:
            self.engine.add(seq)
        except Exception as exc:
            self._deliver([RequestOutput(seq.request_id, "", [], len(seq.prompt_ids), 0, 0, FinishReason.ERROR, error=exc)])

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        # One wake-up per event loop per step, not one per output: the loop thread competes with
        # this one for the GIL, and every callback it runs delays the next step.
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, RequestOutput]]] = {}
        for out in outputs:
            stream = self._streams.get(out.request_id)
            if stream is not None:
                by_loop.setdefault(stream.loop, []).append((stream.queue, out))
        for loop, items in by_loop.items():
            loop.call_soon_threadsafe(_put_all, items)

    def _fail_all(self, error: Exception) -> None:
        for request_id in list(self._streams):
            out = self.engine.abort(request_id, FinishReason.ERROR, error)
            if out is not None:
                self._deliver([out])


def _put_all(items: list[tuple[asyncio.Queue, RequestOutput]]) -> None:
    for queue_, out in items:
        queue_.put_nowait(out)


def _resolve(future: asyncio.Future, value) -> None:
    if not future.done():
        future.set_result(value)


__all__ = ["AsyncEngine"]
