"""Real gRPC servers of the Generation service for the SDK and CLI tests.

`FakeModelServicer` is a FAKE MODEL: a deterministic stand-in for the GPU model, which cannot run
here. Everything around it is real: grpc servers on 127.0.0.1 sockets, real status codes, real
metadata. `SheddingServicer` wraps any servicer and sheds load (UNAVAILABLE or RESOURCE_EXHAUSTED
with `retry-after`) for its first N calls, recording every call it sees.

The fake model's rules, which tests rely on:
- tokens are whitespace-separated words; CountTokens counts them;
- greedy output (temperature unset or 0) repeats the input words in order, cycling, one word per
  token with a leading space; temperature > 0 picks words with random.Random(seed);
- stop strings end the text before their first occurrence (finish STOP);
- context_window: input >= window is OUT_OF_RANGE; otherwise output is capped at window - input
  (finish CONTEXT_WINDOW); max_output_tokens reached gives finish LENGTH;
- the fake model has NUM_LAYERS MoE layers of NUM_EXPERTS experts; token i activates experts
  i % E and (i + 1) % E in every layer (one expert when expert_threshold < 0.5).
"""
from __future__ import annotations

import random
import socket
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field

import grpc

from minimax_m1._generated import generation_pb2 as pb
from minimax_m1._generated import generation_pb2_grpc as pb_grpc

MODEL_ID = "fake-m1-tiny"
MAX_CONTEXT = 1000
NUM_LAYERS = 2
NUM_EXPERTS = 4


def fake_tokens(text: str) -> list[str]:
    return text.split()


def fake_greedy_text(input: str, n: int) -> str:
    """What the fake model answers greedily with n output tokens (the tests' oracle)."""
    words = fake_tokens(input) or ["<empty>"]
    return "".join(f" {words[i % len(words)]}" for i in range(n))


class FakeModelServicer(pb_grpc.GenerationServicer):
    """FAKE MODEL standing in for the GPU model (see the module docstring for its rules).

    token_delay_s slows each output token (deadline and cancellation tests);
    fail_stream_after aborts a stream with UNAVAILABLE after that many messages.
    """

    def __init__(self, token_delay_s: float = 0.0, fail_stream_after: int | None = None) -> None:
        self.token_delay_s = token_delay_s
        self.fail_stream_after = fail_stream_after
        self.requests: list[pb.GenerateRequest] = []
        self.cancelled_streams = 0
        self._lock = threading.Lock()

    # -- the fake model ------------------------------------------------------------------

    def _plan(self, request: pb.GenerateRequest, context: grpc.ServicerContext):
        """Validate like the real engine; return (input tokens, output tokens, finish, text)."""
        with self._lock:
            self.requests.append(request)
        if request.model not in ("", MODEL_ID):
            context.abort(grpc.StatusCode.NOT_FOUND, f"model {request.model!r} is not served here")
        if request.max_output_tokens < 1:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "max_output_tokens must be >= 1")
        sampling = request.sampling
        if sampling.HasField("temperature") and not 0 <= sampling.temperature <= 2:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "sampling.temperature must be in [0, 2]")
        if request.HasField("expert_threshold") and not 0 <= request.expert_threshold <= 1:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "expert_threshold must be in [0, 1]")
        words = fake_tokens(request.input)
        window = request.context_window or MAX_CONTEXT
        if len(words) >= window:
            context.abort(
                grpc.StatusCode.OUT_OF_RANGE,
                f"input has {len(words)} tokens, context_window is {window}",
            )
        budget = min(request.max_output_tokens, window - len(words))
        finish = pb.FINISH_REASON_LENGTH if budget == request.max_output_tokens else pb.FINISH_REASON_CONTEXT_WINDOW
        pool = words or ["<empty>"]
        if sampling.temperature > 0:
            rng = random.Random(sampling.seed if sampling.HasField("seed") else None)
            out = [rng.choice(pool) for _ in range(budget)]
        else:
            out = [pool[i % len(pool)] for i in range(budget)]
        text = ""
        for i, word in enumerate(out):
            text += f" {word}"
            hits = [text.find(s) for s in request.stop if s and s in text]
            if hits:
                return len(words), i + 1, pb.FINISH_REASON_STOP, text[: min(hits)]
        return len(words), len(out), finish, text

    def _experts_per_token(self, request: pb.GenerateRequest) -> int:
        return 1 if request.HasField("expert_threshold") and request.expert_threshold < 0.5 else 2

    def _usage(self, request, n_in: int, n_out: int) -> pb.Usage:
        activations = (n_in + n_out) * NUM_LAYERS * self._experts_per_token(request)
        return pb.Usage(input_tokens=n_in, output_tokens=n_out, expert_activations=activations)

    def _routing_log(self, request, n_tokens: int) -> pb.RoutingLog:
        per_token = self._experts_per_token(request)
        counts = [0] * NUM_EXPERTS
        for i in range(n_tokens):
            for j in range(per_token):
                counts[(i + j) % NUM_EXPERTS] += 1
        return pb.RoutingLog(
            layers=[pb.LayerRouting(layer=l, expert_counts=counts) for l in range(NUM_LAYERS)]
        )

    def _request_id(self, request) -> str:
        return request.request_id or f"fake-{len(self.requests)}"

    # -- the service ---------------------------------------------------------------------

    @staticmethod
    def _pieces(n_out: int, text: str) -> list[str]:
        """The text cut into one piece per output token (a stop string may cut pieces short)."""
        pieces, pos = [], 0
        words = text.split(" ")[1:]
        for i in range(n_out):
            end = min(pos + 1 + len(words[i]), len(text)) if i < len(words) else len(text)
            pieces.append(text[pos:end])
            pos = end
        return pieces

    def Generate(self, request, context):
        n_in, n_out, finish, text = self._plan(request, context)
        for _ in range(n_out):
            if self.token_delay_s:
                time.sleep(self.token_delay_s)
            if not context.is_active():
                return pb.GenerateResponse()
        response = pb.GenerateResponse(
            request_id=self._request_id(request),
            model=MODEL_ID,
            text=text,
            finish_reason=finish,
            usage=self._usage(request, n_in, n_out),
        )
        if request.return_routing_log:
            response.routing_log.CopyFrom(self._routing_log(request, n_in + n_out))
        return response

    def GenerateStream(self, request, context):
        n_in, n_out, finish, text = self._plan(request, context)
        request_id = self._request_id(request)
        ended_here = threading.Event()  # the server ended the stream (last message or abort)

        def count_cancellation() -> None:
            # grpc calls this once the RPC is over, however it ended. (Checking is_active() in the
            # loop alone misses cancellations that land while a message is being sent: grpc then
            # stops pulling from this generator and the check never runs.)
            if not ended_here.is_set():
                with self._lock:
                    self.cancelled_streams += 1

        context.add_callback(count_cancellation)
        for i, piece in enumerate(self._pieces(n_out, text)):
            if self.fail_stream_after is not None and i >= self.fail_stream_after:
                ended_here.set()
                context.abort(grpc.StatusCode.UNAVAILABLE, "fake model: instance lost mid-stream")
            if self.token_delay_s:
                time.sleep(self.token_delay_s)
            if not context.is_active():
                return  # the caller went away: stop generating
            yield pb.GenerateStreamResponse(
                request_id=request_id, text_delta=piece, usage=self._usage(request, n_in, i + 1)
            )
        last = pb.GenerateStreamResponse(
            request_id=request_id, finish_reason=finish, usage=self._usage(request, n_in, n_out)
        )
        if request.return_routing_log:
            last.routing_log.CopyFrom(self._routing_log(request, n_in + n_out))
        ended_here.set()
        yield last

    def CountTokens(self, request, context):
        return pb.CountTokensResponse(input_tokens=len(fake_tokens(request.input)))

    def ListModels(self, request, context):
        return pb.ListModelsResponse(
            models=[pb.ModelInfo(id=MODEL_ID, max_context=MAX_CONTEXT, num_experts=NUM_EXPERTS,
                                 experts_per_token=2)]
        )


@dataclass
class Call:
    method: str
    at: float  # time.monotonic() when the call arrived
    request_id: str
    authorization: str | None


@dataclass
class SheddingServicer(pb_grpc.GenerationServicer):
    """Sheds load for its first `failures` calls (of `methods`), then delegates to `inner`.

    Each shed call aborts with `code` and, when retry_after is set, trailing `retry-after`
    metadata. Every call is recorded in `calls` (method, arrival time, request id, auth header).
    """

    inner: pb_grpc.GenerationServicer
    failures: int = 2
    code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    retry_after: str | None = None
    # Only these methods are recorded and shed; others pass straight through (a gateway's
    # ListModels lookups must not use up the failures meant for Generate).
    methods: tuple[str, ...] = ("Generate", "GenerateStream", "CountTokens", "ListModels")
    calls: list[Call] = field(default_factory=list)

    def _record(self, method: str, request, context) -> None:
        if method not in self.methods:
            return
        metadata = dict(context.invocation_metadata())
        self.calls.append(Call(method, time.monotonic(), getattr(request, "request_id", ""),
                               metadata.get("authorization")))
        if len(self.calls) <= self.failures:
            if self.retry_after is not None:
                context.set_trailing_metadata((("retry-after", self.retry_after),))
            context.abort(self.code, f"shedding load (call {len(self.calls)} of {self.failures})")

    def Generate(self, request, context):
        self._record("Generate", request, context)
        return self.inner.Generate(request, context)

    def GenerateStream(self, request, context):
        self._record("GenerateStream", request, context)
        yield from self.inner.GenerateStream(request, context)

    def CountTokens(self, request, context):
        self._record("CountTokens", request, context)
        return self.inner.CountTokens(request, context)

    def ListModels(self, request, context):
        self._record("ListModels", request, context)
        return self.inner.ListModels(request, context)


class RunningServer:
    """A grpc server on 127.0.0.1 with a free port; stop() or use as a context manager."""

    def __init__(self, servicer: pb_grpc.GenerationServicer, credentials=None) -> None:
        self.servicer = servicer
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        pb_grpc.add_GenerationServicer_to_server(servicer, self.server)
        if credentials is None:
            self.port = self.server.add_insecure_port("127.0.0.1:0")
        else:
            self.port = self.server.add_secure_port("127.0.0.1:0", credentials)
        self.server.start()
        self.address = f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.stop(grace=None).wait()

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def dead_address() -> str:
    """A 127.0.0.1 address where nothing listens (the port was free a moment ago)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def gaps(calls: list[Call]) -> list[float]:
    """Seconds between consecutive calls' arrivals."""
    return [b.at - a.at for a, b in zip(calls, calls[1:])]
