"""A FAKE MODEL: a real `minimax.m1.v1.Generation` gRPC server with a deterministic text generator.

It stands in for the GPU model, which cannot run here. Everything else about it is real: it is a
grpc.aio server on a 127.0.0.1 socket, speaking the public proto. It honours max_output_tokens,
context_window and stop strings, streams text deltas with cumulative usage, reports expert
activations and routing logs, and can be told to be slow or to fail.

Tokenizer of the fake: one token per 4 UTF-8 bytes of input (rounded up), so a byte count is a
true upper bound as for a byte-level BPE. Output token i is " w<k>" for a word chosen from the
input's hash: the same request always gives the same text.

Run it as a process (used by the SIGKILL test and bench/gateway.py):
    python -m tests.gateway.fake_model --port 0 [--token-delay 0.01]   # prints "listening on PORT"
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import math
from dataclasses import dataclass, field

import grpc

from minimax_m1._generated import generation_pb2 as pb
from minimax_m1._generated import generation_pb2_grpc as pb_grpc

MODEL = "fake-m1"
MAX_CONTEXT = 4096
NUM_LAYERS = 4
NUM_EXPERTS = 8
TOP_K = 2


def count_tokens(text: str) -> int:
    return max(1, math.ceil(len(text.encode("utf-8")) / 4))


def token_text(text: str, seed: int, i: int) -> str:
    h = hashlib.blake2b(f"{seed}:{i}:{text}".encode(), digest_size=4).digest()
    return f" w{int.from_bytes(h, 'little') % 1000}"


@dataclass
class Behaviour:
    """Knobs a test turns; the servicer reads them per call."""

    token_delay_s: float = 0.0  # sleep before each output token
    fail_code: grpc.StatusCode | None = None  # abort with this code ...
    fail_message: str = "fake model failure"
    fail_after_tokens: int = 0  # ... after this many output tokens (0: before the first)


@dataclass
class Observed:
    """What the fake saw, for assertions."""

    requests: list[pb.GenerateRequest] = field(default_factory=list)
    metadata: list[dict[str, str]] = field(default_factory=list)
    deadlines: list[float | None] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)  # request ids whose call ended early
    produced: dict[str, int] = field(default_factory=dict)  # request id -> output tokens produced


class FakeModel(pb_grpc.GenerationServicer):
    def __init__(self, behaviour: Behaviour | None = None):
        self.behaviour = behaviour or Behaviour()
        self.observed = Observed()

    def _observe(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext) -> None:
        self.observed.requests.append(request)
        self.observed.metadata.append({k: str(v) for k, v in context.invocation_metadata() or ()})
        self.observed.deadlines.append(context.time_remaining())

    async def _tokens(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext):
        """Yields (text delta, usage, finish reason or None) per output token."""
        n_in = count_tokens(request.input)
        limit = request.max_output_tokens
        finish_at_limit = pb.FINISH_REASON_LENGTH
        if request.context_window:
            if n_in >= request.context_window:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"input has {n_in} tokens, context_window={request.context_window} leaves no room for output")
            if n_in + limit > request.context_window:
                limit, finish_at_limit = request.context_window - n_in, pb.FINISH_REASON_CONTEXT_WINDOW
        b = self.behaviour
        seed = request.sampling.seed if request.sampling.HasField("seed") else 0
        text = ""
        rid = request.request_id
        self.observed.produced[rid] = 0
        for i in range(limit):
            if b.fail_code is not None and i == b.fail_after_tokens:
                await context.abort(b.fail_code, b.fail_message)
            if b.token_delay_s:
                await asyncio.sleep(b.token_delay_s)
            delta = token_text(request.input, seed, i)
            text += delta
            self.observed.produced[rid] = i + 1
            usage = pb.Usage(input_tokens=n_in, output_tokens=i + 1,
                             expert_activations=(n_in + i + 1) * NUM_LAYERS * TOP_K)
            stop = next((s for s in request.stop if s in text), None)
            if stop is not None:
                yield delta[: max(0, len(delta) - (len(text) - text.index(stop)))], usage, pb.FINISH_REASON_STOP
                return
            yield delta, usage, (finish_at_limit if i + 1 == limit else None)

    def _routing_log(self, usage: pb.Usage) -> pb.RoutingLog:
        per_layer = (usage.input_tokens + usage.output_tokens) * TOP_K
        layers = []
        for layer in range(NUM_LAYERS):
            counts = [per_layer // NUM_EXPERTS] * NUM_EXPERTS
            counts[layer % NUM_EXPERTS] += per_layer - sum(counts)
            layers.append(pb.LayerRouting(layer=layer, expert_counts=counts))
        return pb.RoutingLog(layers=layers)

    async def GenerateStream(self, request, context):
        self._observe(request, context)
        try:
            async for delta, usage, finish in self._tokens(request, context):
                msg = pb.GenerateStreamResponse(request_id=request.request_id, text_delta=delta, usage=usage)
                if finish is not None:
                    msg.finish_reason = finish
                    if request.return_routing_log:
                        msg.routing_log.CopyFrom(self._routing_log(usage))
                yield msg
        except (asyncio.CancelledError, GeneratorExit):  # grpc cancels the task, or closes a suspended generator
            self.observed.cancelled.append(request.request_id)
            raise

    async def Generate(self, request, context):
        self._observe(request, context)
        text, usage, finish = "", pb.Usage(), pb.FINISH_REASON_UNSPECIFIED
        try:
            async for delta, usage, f in self._tokens(request, context):
                text += delta
                finish = f or finish
        except asyncio.CancelledError:
            self.observed.cancelled.append(request.request_id)
            raise
        resp = pb.GenerateResponse(request_id=request.request_id, model=request.model or MODEL, text=text,
                                   finish_reason=finish, usage=usage)
        if request.return_routing_log:
            resp.routing_log.CopyFrom(self._routing_log(usage))
        return resp

    async def CountTokens(self, request, context):
        return pb.CountTokensResponse(input_tokens=count_tokens(request.input))

    async def ListModels(self, request, context):
        return pb.ListModelsResponse(models=[
            pb.ModelInfo(id=MODEL, max_context=MAX_CONTEXT, num_experts=NUM_EXPERTS, experts_per_token=TOP_K),
            pb.ModelInfo(id=MODEL + "-small", max_context=1024, num_experts=NUM_EXPERTS, experts_per_token=TOP_K),
        ])


class FakeModelServer:
    """The fake model on a grpc.aio server bound to 127.0.0.1:<port> (0: a free one)."""

    def __init__(self, model: FakeModel | None = None, port: int = 0):
        self.model = model or FakeModel()
        self._requested_port = port
        self.port = 0
        self._server: grpc.aio.Server | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> "FakeModelServer":
        self._server = grpc.aio.server()
        pb_grpc.add_GenerationServicer_to_server(self.model, self._server)
        self.port = self._server.add_insecure_port(f"127.0.0.1:{self._requested_port}")
        await self._server.start()
        return self

    async def stop(self, grace: float | None = None) -> None:
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None


async def _main(port: int, token_delay: float) -> None:
    server = await FakeModelServer(FakeModel(Behaviour(token_delay_s=token_delay)), port).start()
    print(f"listening on {server.port}", flush=True)
    await server._server.wait_for_termination()  # type: ignore[union-attr]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="fake model Generation server (tests only)")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token-delay", type=float, default=0.0)
    args = parser.parse_args()
    try:
        asyncio.run(_main(args.port, args.token_delay))
    except KeyboardInterrupt:
        pass
