"""`Client` and `AsyncClient`: the Generation service over gRPC, with typed errors and retries.

    with Client("localhost:50051", api_key="...") as client:
        result = client.generate("Hello", max_output_tokens=32, temperature=0)
        with client.stream("Hello", max_output_tokens=32) as stream:
            for chunk in stream:
                print(chunk.text_delta, end="")

Retries: UNAVAILABLE and RESOURCE_EXHAUSTED are retried (2 times by default), waiting the
server's `retry-after` when it gives one in [0, 60] s and `min(0.5 * 2**n, 8)` s times jitter
otherwise. Read-only calls (count_tokens, list_models) are always retryable. A generate call is
retried only when it carries a request id (passed, or assigned with `auto_request_id=True`): the
gateway bills a request id once, so sending it again is safe; without one a retry could bill twice.
A stream is retried only before its first chunk. gRPC's own retry policy (service config) is not
used because it ignores the gateway's `retry-after` metadata.

Deadlines: `timeout` (seconds, per call or per client) bounds the whole call, retries included.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator, Sequence

import grpc

from minimax_m1 import _constants as C
from minimax_m1._base import NOT_GIVEN, BaseClient, _NotGiven
from minimax_m1._generated import generation_pb2 as pb
from minimax_m1._generated.generation_pb2_grpc import GenerationStub
from minimax_m1.errors import MiniMaxM1Error, from_rpc_error
from minimax_m1.types import (
    GenerateResult,
    ModelInfo,
    StreamChunk,
    chunk_from_proto,
    model_from_proto,
    result_from_proto,
)

__all__ = ["Client", "AsyncClient", "Stream", "AsyncStream"]


class _StreamResult:
    """Accumulates chunks so a stream can also give its result as one GenerateResult."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self.last: StreamChunk | None = None

    def add(self, chunk: StreamChunk) -> StreamChunk:
        self._parts.append(chunk.text_delta)
        self.last = chunk
        return chunk

    def result(self) -> GenerateResult:
        if self.last is None or self.last.finish_reason is None:
            raise RuntimeError("the stream has not finished")
        return GenerateResult(
            text="".join(self._parts),
            finish_reason=self.last.finish_reason,
            usage=self.last.usage,
            request_id=self.last.request_id,
            routing_log=self.last.routing_log,
        )


class Stream:
    """Chunks of a streaming generation: an iterator and a context manager.

    Leaving the `with` block, calling `close()`, or dropping the iterator cancels the call, so the
    server stops generating. A failure mid-stream raises the same typed error as `generate`.
    """

    def __init__(self, chunks: Iterator[StreamChunk]) -> None:
        self._chunks = chunks
        self._acc = _StreamResult()

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> StreamChunk:
        return self._acc.add(next(self._chunks))

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self._chunks.close()  # runs the generator's `finally`, which cancels the call

    def final_result(self) -> GenerateResult:
        """Read the rest of the stream and return the whole generation."""
        for _ in self:
            pass
        return self._acc.result()


class AsyncStream:
    """The asyncio twin of `Stream`: an async iterator and an async context manager."""

    def __init__(self, chunks) -> None:
        self._chunks = chunks  # an async generator
        self._acc = _StreamResult()

    def __aiter__(self) -> AsyncStream:
        return self

    async def __anext__(self) -> StreamChunk:
        return self._acc.add(await self._chunks.__anext__())

    async def __aenter__(self) -> AsyncStream:
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    async def close(self) -> None:
        await self._chunks.aclose()

    async def final_result(self) -> GenerateResult:
        async for _ in self:
            pass
        return self._acc.result()


class Client(BaseClient):
    """Blocking client for the Generation service; the arguments are BaseClient's.

    Thread-safe: one client (one channel) can serve many threads.
    """

    def _open(self) -> None:
        credentials = self._channel_credentials()
        options = self._channel_options()
        if credentials is None:
            self._channel = grpc.insecure_channel(self.target.address, options=options)
        else:
            self._channel = grpc.secure_channel(self.target.address, credentials, options=options)
        self._stub = GenerationStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def generate(
        self,
        input: str,
        *,
        max_output_tokens: int = C.DEFAULT_MAX_OUTPUT_TOKENS,
        context_window: int | None = None,
        expert_threshold: float | None = None,
        thinking_budget: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        stop_token_ids: Sequence[int] | None = None,
        return_routing_log: bool = False,
        request_id: str | None = None,
        model: str | None = None,
        timeout: float | None | _NotGiven = NOT_GIVEN,
        max_retries: int | None | _NotGiven = NOT_GIVEN,
    ) -> GenerateResult:
        """Generate a completion of `input` and return it whole. `temperature=0` is greedy."""
        request = self._generate_request(
            input, model=model, max_output_tokens=max_output_tokens,
            context_window=context_window, expert_threshold=expert_threshold,
            thinking_budget=thinking_budget, temperature=temperature, top_p=top_p, top_k=top_k,
            seed=seed, stop=stop, stop_token_ids=stop_token_ids,
            return_routing_log=return_routing_log, request_id=request_id,
        )  # fmt: skip
        retries = self._retries_for(max_retries, idempotent=bool(request.request_id))
        response = self._unary(self._stub.Generate, request, timeout, retries, request.request_id)
        return result_from_proto(response, return_routing_log)

    def stream(
        self,
        input: str,
        *,
        max_output_tokens: int = C.DEFAULT_MAX_OUTPUT_TOKENS,
        context_window: int | None = None,
        expert_threshold: float | None = None,
        thinking_budget: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        stop_token_ids: Sequence[int] | None = None,
        return_routing_log: bool = False,
        request_id: str | None = None,
        model: str | None = None,
        timeout: float | None | _NotGiven = NOT_GIVEN,
        max_retries: int | None | _NotGiven = NOT_GIVEN,
    ) -> Stream:
        """Stream a completion as chunks of text; the last chunk carries the final usage.

        The call starts on the first `next()`; the timeout covers the whole stream.
        """
        request = self._generate_request(
            input, model=model, max_output_tokens=max_output_tokens,
            context_window=context_window, expert_threshold=expert_threshold,
            thinking_budget=thinking_budget, temperature=temperature, top_p=top_p, top_k=top_k,
            seed=seed, stop=stop, stop_token_ids=stop_token_ids,
            return_routing_log=return_routing_log, request_id=request_id,
        )  # fmt: skip
        retries = self._retries_for(max_retries, idempotent=bool(request.request_id))
        return Stream(self._stream_chunks(request, timeout, retries, return_routing_log))

    def count_tokens(
        self,
        input: str,
        *,
        model: str | None = None,
        timeout: float | None | _NotGiven = NOT_GIVEN,
        max_retries: int | None | _NotGiven = NOT_GIVEN,
    ) -> int:
        """Number of tokens the model's tokenizer makes of `input`."""
        request = self._count_tokens_request(input, model)
        retries = self._retries_for(max_retries, idempotent=True)
        return self._unary(self._stub.CountTokens, request, timeout, retries).input_tokens

    def list_models(
        self,
        *,
        timeout: float | None | _NotGiven = NOT_GIVEN,
        max_retries: int | None | _NotGiven = NOT_GIVEN,
    ) -> list[ModelInfo]:
        """The models this endpoint serves."""
        retries = self._retries_for(max_retries, idempotent=True)
        response = self._unary(self._stub.ListModels, pb.ListModelsRequest(), timeout, retries)
        return [model_from_proto(model) for model in response.models]

    def _unary(self, method, request, timeout, retries: int, request_id: str = ""):
        deadline = self._deadline(timeout)
        attempt = 0
        while True:
            try:
                return method(request, timeout=self._remaining(deadline), metadata=self._metadata)
            except grpc.RpcError as exc:
                error = from_rpc_error(exc, request_id or None)
            delay = self._retry_delay(error, attempt, retries, deadline)
            if delay is None:
                raise error
            time.sleep(delay)
            attempt += 1

    def _stream_chunks(
        self, request: pb.GenerateRequest, timeout, retries: int, routing: bool
    ) -> Iterator[StreamChunk]:
        deadline = self._deadline(timeout)
        attempt = 0
        while True:
            call = self._stub.GenerateStream(
                request, timeout=self._remaining(deadline), metadata=self._metadata
            )
            received = False
            try:
                for message in call:
                    received = True
                    yield chunk_from_proto(message, routing)
                return
            except grpc.RpcError as exc:
                error: MiniMaxM1Error = from_rpc_error(exc, request.request_id or None)
            finally:
                call.cancel()  # no-op once the call has ended; stops the server otherwise
            # Retrying after a chunk was delivered would repeat text the caller already has.
            delay = None if received else self._retry_delay(error, attempt, retries, deadline)
            if delay is None:
                raise error
            time.sleep(delay)
            attempt += 1


class AsyncClient(BaseClient):
    """The asyncio twin of `Client`: same arguments, awaitable methods, `AsyncStream` streams."""

    def _open(self) -> None:
        self._channel: grpc.aio.Channel | None = None
        self._stub_instance: GenerationStub | None = None

    @property
    def _stub(self) -> GenerationStub:
        # An aio channel belongs to the running event loop, so it is opened on first use.
        if self._stub_instance is None:
            credentials = self._channel_credentials()
            options = self._channel_options()
            if credentials is None:
                self._channel = grpc.aio.insecure_channel(self.target.address, options=options)
            else:
                self._channel = grpc.aio.secure_channel(
                    self.target.address, credentials, options=options
                )
            self._stub_instance = GenerationStub(self._channel)
        return self._stub_instance

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
            self._stub_instance = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    async def generate(
        self,
        input: str,
        *,
        max_output_tokens: int = C.DEFAULT_MAX_OUTPUT_TOKENS,
        context_window: int | None = None,
        expert_threshold: float | None = None,
        thinking_budget: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        stop_token_ids: Sequence[int] | None = None,
        return_routing_log: bool = False,
        request_id: str | None = None,
        model: str | None = None,
        timeout: float | None | _NotGiven = NOT_GIVEN,
        max_retries: int | None | _NotGiven = NOT_GIVEN,
    ) -> GenerateResult:
        """Generate a completion of `input` and return it whole. `temperature=0` is greedy."""
        request = self._generate_request(
            input, model=model, max_output_tokens=max_output_tokens,
            context_window=context_window, expert_threshold=expert_threshold,
            thinking_budget=thinking_budget, temperature=temperature, top_p=top_p, top_k=top_k,
            seed=seed, stop=stop, stop_token_ids=stop_token_ids,
            return_routing_log=return_routing_log, request_id=request_id,
        )  # fmt: skip
        retries = self._retries_for(max_retries, idempotent=bool(request.request_id))
        response = await self._unary("Generate", request, timeout, retries, request.request_id)
        return result_from_proto(response, return_routing_log)

    def stream(
        self,
        input: str,
        *,
        max_output_tokens: int = C.DEFAULT_MAX_OUTPUT_TOKENS,
        context_window: int | None = None,
        expert_threshold: float | None = None,
        thinking_budget: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        stop_token_ids: Sequence[int] | None = None,
        return_routing_log: bool = False,
        request_id: str | None = None,
        model: str | None = None,
        timeout: float | None | _NotGiven = NOT_GIVEN,
        max_retries: int | None | _NotGiven = NOT_GIVEN,
    ) -> AsyncStream:
        """Stream a completion; use `async with client.stream(...) as s: async for chunk in s`."""
        request = self._generate_request(
            input, model=model, max_output_tokens=max_output_tokens,
            context_window=context_window, expert_threshold=expert_threshold,
            thinking_budget=thinking_budget, temperature=temperature, top_p=top_p, top_k=top_k,
            seed=seed, stop=stop, stop_token_ids=stop_token_ids,
            return_routing_log=return_routing_log, request_id=request_id,
        )  # fmt: skip
        retries = self._retries_for(max_retries, idempotent=bool(request.request_id))
        return AsyncStream(self._stream_chunks(request, timeout, retries, return_routing_log))

    async def count_tokens(
        self,
        input: str,
        *,
        model: str | None = None,
        timeout: float | None | _NotGiven = NOT_GIVEN,
        max_retries: int | None | _NotGiven = NOT_GIVEN,
    ) -> int:
        """Number of tokens the model's tokenizer makes of `input`."""
        request = self._count_tokens_request(input, model)
        retries = self._retries_for(max_retries, idempotent=True)
        return (await self._unary("CountTokens", request, timeout, retries)).input_tokens

    async def list_models(
        self,
        *,
        timeout: float | None | _NotGiven = NOT_GIVEN,
        max_retries: int | None | _NotGiven = NOT_GIVEN,
    ) -> list[ModelInfo]:
        """The models this endpoint serves."""
        retries = self._retries_for(max_retries, idempotent=True)
        response = await self._unary("ListModels", pb.ListModelsRequest(), timeout, retries)
        return [model_from_proto(model) for model in response.models]

    async def _unary(self, method_name: str, request, timeout, retries: int, request_id: str = ""):
        deadline = self._deadline(timeout)
        attempt = 0
        while True:
            method = getattr(self._stub, method_name)
            try:
                return await method(
                    request, timeout=self._remaining(deadline), metadata=self._metadata
                )
            except grpc.RpcError as exc:
                error = from_rpc_error(exc, request_id or None)
            delay = self._retry_delay(error, attempt, retries, deadline)
            if delay is None:
                raise error
            await asyncio.sleep(delay)
            attempt += 1

    async def _stream_chunks(
        self, request: pb.GenerateRequest, timeout, retries: int, routing: bool
    ) -> AsyncIterator[StreamChunk]:
        deadline = self._deadline(timeout)
        attempt = 0
        while True:
            call = self._stub.GenerateStream(
                request, timeout=self._remaining(deadline), metadata=self._metadata
            )
            received = False
            try:
                async for message in call:
                    received = True
                    yield chunk_from_proto(message, routing)
                return
            except grpc.RpcError as exc:
                error: MiniMaxM1Error = from_rpc_error(exc, request.request_id or None)
            finally:
                call.cancel()
            delay = None if received else self._retry_delay(error, attempt, retries, deadline)
            if delay is None:
                raise error
            await asyncio.sleep(delay)
            attempt += 1
