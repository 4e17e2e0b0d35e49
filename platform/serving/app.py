"""The Ray Serve app: one Engine deployment, the gRPC ingress of `minimax.m1.v1.Generation`.

    build_app(args)   -> the Serve Application (import path minimax_m1.serving.app:build_app)

One replica is one model instance: the replica owns an AsyncEngine over an in-process instance
(tp = ep = 1) or over the Ray-sharded instance, whose workers go into the replica's placement
group (bundle 0 is the replica, then one bundle per worker in world-rank order, from ShardPlan).
Serve's gRPC proxy calls the methods below by RPC name; errors become gRPC statuses through the
engine's one error table.
"""
from __future__ import annotations

import contextlib
import gc
import logging
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

from minimax_m1._generated import generation_pb2 as pb
from minimax_m1.engine.errors import InvalidRequestError, grpc_status
from minimax_m1.serving import protocol
from minimax_m1.serving.config import ServingConfig

log = logging.getLogger(__name__)
DEPLOYMENT_NAME = "Engine"
GRPC_SERVICER_FUNCTIONS = ["minimax_m1._generated.generation_pb2_grpc.add_GenerationServicer_to_server"]


class StatusError(Exception):
    """Raised after the status was set on the gRPC context (Serve then forwards that status)."""

    def __init__(self, code, details: str):
        super().__init__(code, details)  # both in args, so it survives pickling to Serve's proxy
        self.code, self.details = code, details

    def __str__(self) -> str:
        return self.details


def _fail(grpc_context, exc: BaseException) -> StatusError:
    code, details = grpc_status(exc)
    if grpc_context is not None:
        grpc_context.set_code(code)
        grpc_context.set_details(details)
    return StatusError(code, details)


def _torch_threads(replica_cpus: float) -> int:
    import torch

    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    n = max(1, min(available, int(replica_cpus) or 1))
    torch.set_num_threads(n)
    return n


def _instrument(engine, model_name: str):
    """Telemetry from the replica's environment (docs/telemetry.md); None without the package."""
    try:
        from minimax_m1.telemetry import ensure_telemetry
        from minimax_m1.telemetry.engine import instrument_engine
    except ImportError:
        return None
    return instrument_engine(engine, model_name, ensure_telemetry("engine"))


def _replica_group() -> dict:
    """Inside a Serve replica with placement_group_bundles (see deployment_options), the workers
    go into the replica's own group after its bundle 0, so their resources are reserved once."""
    import ray

    group = ray.util.get_current_placement_group()
    return {} if group is None else {"placement_group": group, "first_bundle": 1}


def freeze_startup_heap() -> None:
    """Move everything allocated so far (torch, the model, Ray, gRPC: ~200K objects) out of the
    cyclic GC's reach. Without it, every full collection walks them all (~100 ms on a CPU core) and
    stalls the step loop; per-request allocations (spans, outputs) trigger one every few seconds.
    MINIMAX_M1_GC_FREEZE=0 turns it off (the test suite does: its process outlives many servers)."""
    if os.environ.get("MINIMAX_M1_GC_FREEZE", "1") == "0":
        return
    gc.collect()
    gc.freeze()


class EngineServer:
    """The Generation service over one AsyncEngine. The Serve deployment wraps this class."""

    def __init__(self, args: dict | None = None, engine=None):
        from minimax_m1.engine.async_engine import AsyncEngine
        from minimax_m1.engine.engine import LLMEngine, make_instance
        from minimax_m1.model_shards.tokenizer import MiniMaxM1Tokenizer

        self.config = ServingConfig.from_args(args)
        self.model_name = self.config.model.name
        built_here = engine is None  # a replica builds its own; tests may hand one in
        if engine is None:
            _torch_threads(self.config.replica_cpus)
            path = self.config.model.resolve_path()
            plan = None if self.config.plan.in_process else self.config.plan.shard_plan()
            extra = {} if plan is None else {"cpus_per_worker": self.config.plan.cpus_per_worker, **_replica_group()}
            instance = make_instance(path, self.config.engine.cache_shape(), plan, **extra)
            engine = LLMEngine(instance, MiniMaxM1Tokenizer.from_pretrained(path), self.config.engine, self.model_name)
        self.engine = AsyncEngine(engine)
        self.telemetry = _instrument(self.engine, self.model_name)
        if built_here:
            freeze_startup_heap()

    # ---- Generation --------------------------------------------------------------------------
    def _start(self, request: pb.GenerateRequest, grpc_context) -> tuple[str, AsyncIterator, Any]:
        """(request id, the engine's output stream, its RequestTrace or None)."""
        if request.model and request.model != self.model_name:
            raise _fail(grpc_context, InvalidRequestError(
                f"model {request.model!r} is not served here; this endpoint serves {self.model_name!r}"))
        request_id = request.request_id or uuid.uuid4().hex
        try:
            params = protocol.params_from_proto(request)
            # The engine id is unique even when a client retries with the same request id.
            engine_id = f"{request_id}:{uuid.uuid4().hex[:8]}"
            stream = self.engine.generate(request.input, params, request_id=engine_id)
        except Exception as exc:
            raise _fail(grpc_context, exc) from None
        traced = self.telemetry.start_request(engine_id, request, grpc_context) if self.telemetry is not None else None
        return request_id, stream, traced

    async def _outputs(self, request: pb.GenerateRequest, grpc_context) -> AsyncIterator[tuple[str, Any]]:
        """(request id, RequestOutput) for each output of the request; engine errors become gRPC
        statuses; closing it (a client that went away) cancels the request and ends its trace."""
        request_id, stream, traced = self._start(request, grpc_context)
        error = None
        try:
            async for out in stream:
                if traced is not None:
                    traced.output(out)
                yield request_id, out
        except BaseException as exc:
            error = exc
            if isinstance(exc, Exception):
                raise _fail(grpc_context, exc) from None
            raise
        finally:
            await stream.aclose()
            if traced is not None:
                traced.end(error)

    async def Generate(self, request: pb.GenerateRequest, grpc_context=None) -> pb.GenerateResponse:
        request_id, text, last = request.request_id, [], None
        async with contextlib.aclosing(self._outputs(request, grpc_context)) as outputs:
            async for request_id, out in outputs:
                text.append(out.text_delta)
                last = out
        return protocol.unary_response(request_id, self.model_name, "".join(text), last)

    async def GenerateStream(self, request: pb.GenerateRequest, grpc_context=None) -> AsyncIterator[pb.GenerateStreamResponse]:
        async with contextlib.aclosing(self._outputs(request, grpc_context)) as outputs:
            async for request_id, out in outputs:
                yield protocol.stream_message(request_id, out)

    async def CountTokens(self, request: pb.CountTokensRequest, grpc_context=None) -> pb.CountTokensResponse:
        if request.model and request.model != self.model_name:
            raise _fail(grpc_context, InvalidRequestError(f"model {request.model!r} is not served here"))
        return pb.CountTokensResponse(input_tokens=len(self.engine.engine.tokenizer.encode(request.input)))

    async def ListModels(self, request: pb.ListModelsRequest, grpc_context=None) -> pb.ListModelsResponse:
        mc = self.engine.engine.model_config
        return pb.ListModelsResponse(models=[pb.ModelInfo(
            id=self.model_name, max_context=self.engine.engine.max_context,
            num_experts=mc.num_local_experts, experts_per_token=mc.num_experts_per_tok)])

    # ---- operations ----------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        s = self.engine.stats()
        return {"slots_used": s.cache.slots_used, "slots_total": s.cache.slots_total,
                "blocks_used": s.cache.blocks_used, "blocks_total": s.cache.blocks_total,
                "waiting": s.num_waiting, "running": s.num_running, "preemptions": s.num_preemptions,
                "steps": s.num_steps, "dead": s.dead}

    async def check_health(self) -> None:
        """Ray Serve's health check: raises (so the replica is replaced) when the instance is broken."""
        self.engine.check_health()

    def __del__(self):
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.shutdown(timeout_s=2.0)


def deployment_options(config: ServingConfig) -> dict[str, Any]:
    """Ray Serve options for the Engine deployment (exposed for tests and the chart's docs)."""
    options: dict[str, Any] = {
        "name": DEPLOYMENT_NAME,
        "ray_actor_options": {"num_cpus": config.replica_cpus},
        # Requests queue in the engine, not in Serve: allow well over one batch in flight.
        "max_ongoing_requests": max(64, 4 * config.engine.max_num_seqs),
        "health_check_period_s": 10,
        "health_check_timeout_s": 30,
    }
    if config.autoscaling_config:
        options["autoscaling_config"] = dict(config.autoscaling_config)
    else:
        options["num_replicas"] = 1
    if not config.plan.in_process:
        plan = config.plan.shard_plan()
        options["placement_group_bundles"] = [{"CPU": config.replica_cpus}] + config.plan.worker_bundles()
        options["placement_group_strategy"] = plan.strategy
    return options


def build_app(args: dict | None = None):
    """The Serve Application for `args` (see ServingConfig). Raises ValueError on a bad config."""
    from ray import serve

    config = ServingConfig.from_args(args)
    deployment = serve.deployment(EngineServer).options(**deployment_options(config))
    return deployment.bind(dict(args or {}))


__all__ = ["build_app", "EngineServer", "deployment_options", "GRPC_SERVICER_FUNCTIONS", "DEPLOYMENT_NAME"]
