"""The gateway: auth -> validate -> quota -> ledger -> forward -> bill, as a grpc.aio server.

Stable interface:

    handle = await start_gateway(config, hooks=(), meter_provider=None, telemetry=None)
    handle.port                    # the bound port (config.port may be 0)
    handle.keys / handle.ledger    # the KeyStore and Ledger on the gateway's database
    await handle.stop(grace)       # stop accepting, let calls finish for `grace` s, close records
    await handle.wait()            # until stopped

Telemetry (spans per RPC with the trace context sent upstream, request/token/quota-rejection
metrics, outbox lag) comes from `minimax_m1.telemetry.gateway` when that package is present: the
process's telemetry (set it up before starting the gateway) unless `telemetry=` passes a
GatewayTelemetry; with no telemetry set up the gateway skips all of it.

Each call is billed from the upstream's usage. Unary Generate is forwarded as an upstream
GenerateStream and assembled here: the stream's cumulative usage tells what was produced even when
the call is cancelled or runs out of time, which a unary upstream call cannot.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Sequence

import grpc

from minimax_m1._generated import generation_pb2 as pb
from minimax_m1._generated import generation_pb2_grpc as pb_grpc
from minimax_m1.gateway.config import GatewayConfig, QuotaLimits
from minimax_m1.gateway.errors import GatewayError, Reason
from minimax_m1.gateway.hooks import BillingHook, OutboxDelivery, build_hook
from minimax_m1.gateway.keys import KeyInfo, KeyStore, hash_key
from minimax_m1.gateway.ledger import Ledger
from minimax_m1.gateway.quota import Admission, QuotaStore, Refusal, build_store, period_bounds, period_start
from minimax_m1.gateway import validate
from minimax_m1.gateway.storage import Backend, open_database

log = logging.getLogger(__name__)

SERVICE = "minimax.m1.v1.Generation"
_AUTH_CACHE_MAX = 10_000
_UNARY_PROGRESS_S = 0.5  # unary calls deliver nothing early, so their progress writes are sparse


@dataclass(slots=True)
class _Call:
    """What the gateway knows about one call while it runs; `finish` settles whatever was reached."""

    started: float
    request_id: str = ""  # as the client knows it (the record id may carry an attempt suffix)
    tenant: str = ""
    admission: Admission | None = None
    record_id: str | None = None
    status: str = "OK"
    usage: pb.Usage | None = None
    persisted_output: int = -1
    persisted_at: float = 0.0

    def counts(self) -> tuple[int, int, int]:
        u = self.usage
        return (u.input_tokens, u.output_tokens, u.expert_activations) if u is not None else (0, 0, 0)


class Gateway:
    def __init__(self, config: GatewayConfig, keys: KeyStore, ledger: Ledger, quotas: QuotaStore,
                 deliveries: Sequence[OutboxDelivery], telemetry: Any = None):
        self.config = config
        self.telemetry = telemetry
        self.keys = keys
        self.ledger = ledger
        self.quotas = quotas
        self.deliveries = list(deliveries)
        up = config.upstream
        options = [("grpc.max_receive_message_length", config.max_message_bytes),
                   ("grpc.max_send_message_length", config.max_message_bytes)]
        if up.ca_file:
            with open(up.ca_file, "rb") as f:
                creds = grpc.ssl_channel_credentials(f.read())
            self._channel = grpc.aio.secure_channel(up.target, creds, options=options)
        else:
            self._channel = grpc.aio.insecure_channel(up.target, options=options)
        self._upstream = pb_grpc.GenerationStub(self._channel)
        self._metadata = tuple(up.metadata)
        self._auth_cache: dict[str, tuple[KeyInfo | None, float]] = {}
        self._models: dict[str, pb.ModelInfo] = {}
        self._models_at = -1e18
        self._models_lock = asyncio.Lock()
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    # -- the pieces of a call -------------------------------------------------------------------

    async def authenticate(self, context: grpc.aio.ServicerContext) -> KeyInfo:
        header = None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                header = value
                break
        if not header:
            raise GatewayError(Reason.UNAUTHENTICATED, "missing API key: send metadata 'authorization: Bearer <key>'")
        scheme, _, secret = str(header).partition(" ")
        secret = secret.strip()
        if scheme.lower() != "bearer" or not secret:
            raise GatewayError(Reason.UNAUTHENTICATED, "authorization metadata must be 'Bearer <key>'")
        now = time.monotonic()
        digest = hash_key(secret)  # the cache holds no secrets
        cached = self._auth_cache.get(digest)
        if cached is not None and cached[1] > now:
            info = cached[0]
        else:
            info = await self.keys.lookup_hash(digest)
            if len(self._auth_cache) >= _AUTH_CACHE_MAX:
                self._auth_cache.clear()  # bounded: unknown keys cannot grow it without limit
            self._auth_cache[digest] = (info, now + self.config.auth_cache_s)
        if info is None:
            raise GatewayError(Reason.UNAUTHENTICATED, "unknown API key")
        if info.revoked:
            raise GatewayError(Reason.PERMISSION_DENIED, f"API key {info.key_id} was revoked")
        return info

    async def models(self) -> dict[str, pb.ModelInfo]:
        if time.monotonic() - self._models_at < self.config.upstream.models_cache_s and self._models:
            return self._models
        async with self._models_lock:
            if time.monotonic() - self._models_at < self.config.upstream.models_cache_s and self._models:
                return self._models
            try:
                resp = await self._upstream.ListModels(pb.ListModelsRequest(), timeout=10.0, metadata=self._metadata)
            except grpc.aio.AioRpcError as exc:
                raise GatewayError.from_upstream(exc.code(), exc.details() or "", self.config.upstream.target) from None
            self._models = {m.id: m for m in resp.models}
            self._models_at = time.monotonic()
            return self._models

    async def _model_for(self, name: str, key: KeyInfo) -> pb.ModelInfo:
        info = validate.resolve_model(name, await self.models())
        if not key.allows(info.id):
            raise GatewayError(Reason.PERMISSION_DENIED,
                               f"API key {key.key_id} may not use model {info.id!r} (allowed: {', '.join(key.models)})")
        return info

    def _timeout(self, context: grpc.aio.ServicerContext) -> float:
        remaining = context.time_remaining()
        cap = self.config.upstream.timeout_s
        return cap if remaining is None else max(0.0, min(remaining, cap))

    async def _reserve_input(self, req: pb.GenerateRequest, utf8_bytes: int, timeout: float) -> int:
        if self.config.upstream.token_estimate == "count_tokens":
            try:
                resp = await self._upstream.CountTokens(pb.CountTokensRequest(model=req.model, input=req.input),
                                                        timeout=timeout, metadata=self._metadata)
            except grpc.aio.AioRpcError as exc:
                raise GatewayError.from_upstream(exc.code(), exc.details() or "", self.config.upstream.target) from None
            return resp.input_tokens
        return validate.estimate_input_tokens(utf8_bytes)

    async def _admit(self, call: _Call, key: KeyInfo, req: pb.GenerateRequest, reserve: int, limits: QuotaLimits) -> None:
        for limit in ("tokens_per_minute", "budget_tokens"):
            value = getattr(limits, limit)
            if value and reserve > value:  # no retry can ever fit it
                raise GatewayError(Reason.OUT_OF_RANGE,
                                   f"max_output_tokens={req.max_output_tokens} is out of range: input + max_output_tokens "
                                   f"reserves {reserve} tokens, more than the tenant's {limit} of {value}")
        now = time.time()
        result = await self.quotas.admit(key.tenant, req.request_id, reserve, limits, now)
        if isinstance(result, Refusal):
            if self.telemetry is not None:
                self.telemetry.quota_rejected(key.tenant, result.limit)
            raise GatewayError(Reason.QUOTA,
                               f"tenant {key.tenant!r} is over its {result.limit} quota ({result.value}); "
                               f"retry after {result.retry_after_s:.1f} s", result.retry_after_s)
        call.admission = result
        # Durable before anything goes upstream. If the client cancels during this write, the
        # record still lands (open, nothing produced) and recovery closes it with zero usage.
        call.record_id = await self.ledger.open(req.request_id, key.tenant, key.key_id, req.model, reserve, now)

    async def _record_progress(self, call: _Call, interval_s: float) -> None:
        if call.usage is None or call.usage.output_tokens == call.persisted_output:
            return
        now = time.monotonic()
        if interval_s and now - call.persisted_at < interval_s:
            return
        call.persisted_output, call.persisted_at = call.usage.output_tokens, now
        await self.ledger.progress(call.record_id, *call.counts())

    def _begin(self) -> _Call:
        self._in_flight += 1
        self._idle.clear()
        return _Call(time.monotonic())

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until every call has closed its record (after the server stopped taking calls)."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
            return True
        except asyncio.TimeoutError:
            return False

    async def _finish(self, call: _Call) -> None:
        """Settle the quota and close the record, for whatever part of the call was reached.

        Runs in the handler's `finally`, also after a client cancel (a task is cancelled once).
        The memory store settles without awaiting, and a queued SQLite write commits even if
        its caller is cancelled, so neither can be torn.
        """
        try:
            inp, out, experts = call.counts()
            if call.admission is not None:
                await self.quotas.settle(call.admission, inp + out)
            if call.record_id is not None:
                await self.ledger.close(call.record_id, call.status, inp, out, experts,
                                        (time.monotonic() - call.started) * 1000.0)
                if self.telemetry is not None:
                    self.telemetry.call_finished(call.tenant, call.status, inp, out)
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    async def _prepare(self, call: _Call, raw: bytes, context: grpc.aio.ServicerContext) -> pb.GenerateRequest:
        key = await self.authenticate(context)
        req = validate.parse(pb.GenerateRequest, raw)
        model = await self._model_for(req.model, key)
        req.model = model.id
        limits = self.config.quotas.limits_for(key.tenant)
        size = validate.validate_generate(req, model, limits, self.config.max_input_bytes)
        call.request_id, call.tenant = req.request_id, key.tenant
        reserve = await self._reserve_input(req, size, self._timeout(context)) + req.max_output_tokens
        await self._admit(call, key, req, reserve, limits)
        return req

    async def _upstream_stream(self, req: pb.GenerateRequest, call: _Call,
                               context: grpc.aio.ServicerContext) -> AsyncIterator[pb.GenerateStreamResponse]:
        """The upstream stream; records status and usage on `call`; maps upstream errors."""
        req.request_id = call.record_id  # unique per attempt, like the ledger
        metadata = self.telemetry.outgoing(self._metadata) if self.telemetry is not None else self._metadata
        stream = self._upstream.GenerateStream(req, timeout=self._timeout(context), metadata=metadata)
        try:
            # read() rather than `async for`: the latter costs grpc.aio noticeably more per message.
            while (msg := await stream.read()) is not grpc.aio.EOF:
                call.usage = msg.usage
                yield msg
        except grpc.aio.AioRpcError as exc:
            call.status = exc.code().name
            error = GatewayError.from_upstream(exc.code(), exc.details() or "", self.config.upstream.target)
            if error.reason is Reason.DEADLINE_EXCEEDED:
                error.message = f"deadline exceeded after {time.monotonic() - call.started:.3f} s waiting for the upstream"
            raise error from None
        except (asyncio.CancelledError, GeneratorExit):  # the client went away: stop the upstream call too
            call.status = grpc.StatusCode.CANCELLED.name
            raise
        except BaseException:
            call.status = grpc.StatusCode.INTERNAL.name
            raise
        finally:
            stream.cancel()

    # -- RPC handlers ---------------------------------------------------------------------------

    async def generate(self, raw: bytes, context: grpc.aio.ServicerContext) -> pb.GenerateResponse:
        call = self._begin()
        call.persisted_at = call.started  # a unary call's first progress write waits an interval
        try:
            req = await self._prepare(call, raw, context)
            texts: list[str] = []
            last: pb.GenerateStreamResponse | None = None
            async for msg in self._upstream_stream(req, call, context):
                texts.append(msg.text_delta)
                last = msg
                await self._record_progress(call, max(self.config.billing.progress_interval_s, _UNARY_PROGRESS_S))
            resp = pb.GenerateResponse(request_id=call.request_id, model=req.model, text="".join(texts))
            if last is not None:
                resp.finish_reason = last.finish_reason
                resp.usage.CopyFrom(last.usage)
                if last.HasField("routing_log"):
                    resp.routing_log.CopyFrom(last.routing_log)
            return resp
        finally:
            await self._finish(call)

    async def generate_stream(self, raw: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.GenerateStreamResponse]:
        call = self._begin()
        try:
            req = await self._prepare(call, raw, context)
            async for msg in self._upstream_stream(req, call, context):
                # Billed before the client sees it: a crash never leaves delivered output unbilled.
                await self._record_progress(call, self.config.billing.progress_interval_s)
                msg.request_id = call.request_id
                yield msg
        except GeneratorExit:
            call.status = grpc.StatusCode.CANCELLED.name
            raise
        finally:
            await self._finish(call)

    async def count_tokens(self, raw: bytes, context: grpc.aio.ServicerContext) -> pb.CountTokensResponse:
        key = await self.authenticate(context)
        req = validate.parse(pb.CountTokensRequest, raw)
        req.model = (await self._model_for(req.model, key)).id
        validate.check_input(req.input, self.config.max_input_bytes)
        try:
            return await self._upstream.CountTokens(req, timeout=self._timeout(context), metadata=self._metadata)
        except grpc.aio.AioRpcError as exc:
            raise GatewayError.from_upstream(exc.code(), exc.details() or "", self.config.upstream.target) from None

    async def list_models(self, raw: bytes, context: grpc.aio.ServicerContext) -> pb.ListModelsResponse:
        key = await self.authenticate(context)
        validate.parse(pb.ListModelsRequest, raw)
        return pb.ListModelsResponse(models=[m for m in (await self.models()).values() if key.allows(m.id)])

    async def close(self) -> None:
        await self._channel.close()


async def _abort(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    if isinstance(exc, GatewayError):
        await context.abort(exc.code, exc.message, trailing_metadata=exc.trailing_metadata())
    log.exception("gateway bug", exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal gateway error ({type(exc).__name__}); see the gateway log")


def _unary(fn: Callable[..., Any]) -> Callable[..., Any]:
    async def handler(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await fn(raw, context)
        except Exception as exc:  # GatewayError, or a bug that must not reach the client as a traceback
            if isinstance(exc, grpc.aio.AbortError):
                raise
            await _abort(context, exc)
    return handler


def _streaming(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A server-streaming handler as a coroutine that writes each message (grpc.aio's other form): a
    wrapper around it (the telemetry's server span) then costs nothing per message."""
    async def handler(raw: bytes, context: grpc.aio.ServicerContext) -> None:
        try:
            async for msg in fn(raw, context):
                await context.write(msg)
        except Exception as exc:  # GatewayError, or a bug that must not reach the client as a traceback
            if isinstance(exc, grpc.aio.AbortError):
                raise
            await _abort(context, exc)
    return handler


def _generic_handler(gw: Gateway, telemetry: Any = None) -> grpc.GenericRpcHandler:
    # Requests arrive as raw bytes (no deserializer) so that a malformed message is answered with
    # INVALID_ARGUMENT by the gateway instead of an opaque deserialization failure.
    ser = lambda m: m.SerializeToString()  # noqa: E731

    def traced(method: str, handler: Callable[..., Any]) -> Callable[..., Any]:
        return telemetry.traced(method, handler) if telemetry is not None else handler

    return grpc.method_handlers_generic_handler(SERVICE, {
        "Generate": grpc.unary_unary_rpc_method_handler(traced("Generate", _unary(gw.generate)), response_serializer=ser),
        "GenerateStream": grpc.unary_stream_rpc_method_handler(traced("GenerateStream", _streaming(gw.generate_stream)),
                                                               response_serializer=ser),
        "CountTokens": grpc.unary_unary_rpc_method_handler(traced("CountTokens", _unary(gw.count_tokens)),
                                                           response_serializer=ser),
        "ListModels": grpc.unary_unary_rpc_method_handler(traced("ListModels", _unary(gw.list_models)),
                                                          response_serializer=ser),
    })


def _server_credentials(config: GatewayConfig) -> grpc.ServerCredentials | None:
    tls = config.tls
    if tls is None:
        return None
    with open(tls.cert_file, "rb") as f:
        cert = f.read()
    with open(tls.key_file, "rb") as f:
        key = f.read()
    ca = None
    if tls.client_ca_file:
        with open(tls.client_ca_file, "rb") as f:
            ca = f.read()
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)


class GatewayHandle:
    def __init__(self, server: grpc.aio.Server, port: int, gateway: Gateway, health: Any, db: Backend,
                 outbox_probe: Any = None):
        self._server = server
        self._outbox_probe = outbox_probe
        self.port = port
        self.gateway = gateway
        self.keys = gateway.keys
        self.ledger = gateway.ledger
        self._health = health
        self._db = db
        self._stopped = False

    async def wait(self) -> None:
        await self._server.wait_for_termination()

    async def stop(self, grace: float | None = 5.0) -> None:
        if self._stopped:
            return
        self._stopped = True
        await self._health.enter_graceful_shutdown()
        await self._server.stop(grace)
        if not await self.gateway.wait_idle(10.0):
            log.warning("calls still closing after stop; their records are recovered on the next start")
        if self._outbox_probe is not None:
            await self._outbox_probe.stop()
        for d in self.gateway.deliveries:
            await d.stop()
        await self.gateway.quotas.close()
        await self.gateway.close()
        await self._db.close()


async def _seed_budgets(config: GatewayConfig, ledger: Ledger, quotas: QuotaStore) -> None:
    """A restarted memory store starts budgets from the ledger, so a restart is no free refill."""
    q = config.quotas
    all_limits = [q.default, *(limits for _, limits in q.tenants)]
    if not any(l.budget_tokens for l in all_limits):
        return
    now = time.time()
    for period in {l.budget_period for l in all_limits if l.budget_tokens}:
        for tenant, used in (await ledger.tokens_since(period_start(period, now))).items():
            if q.limits_for(tenant).budget_period == period:
                await quotas.seed_budget(tenant, period_bounds(period, now)[0], used)


def _default_telemetry() -> Any:
    try:  # the telemetry package is optional: without it the gateway emits no spans or metrics
        from minimax_m1.telemetry.gateway import gateway_telemetry
    except ImportError:
        return None
    return gateway_telemetry()


async def start_gateway(config: GatewayConfig, hooks: Sequence[BillingHook] = (), meter_provider: Any = None,
                        telemetry: Any = None) -> GatewayHandle:
    """Open the database, recover open records, start hooks and serve on config.host:config.port."""
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection

    db = await open_database(config.billing.database_url)
    all_hooks: list[tuple[BillingHook, Any]] = [(build_hook(h, meter_provider), h) for h in config.billing.hooks]
    all_hooks += [(h, None) for h in hooks]
    ledger = Ledger(db, config.billing.instance_id, [h.name for h, _ in all_hooks])
    recovered = await ledger.recover(config.billing.stale_after_s)
    if recovered:
        log.warning("closed %d usage records left open by a previous run", len(recovered))
    quotas = build_store(config.quotas.store, config.quotas.redis_url, config.quotas.lease_s)
    await _seed_budgets(config, ledger, quotas)
    deliveries = []
    for hook, hc in all_hooks:
        kw = {} if hc is None else dict(batch_size=hc.batch_size, backoff_base_s=hc.backoff_base_s,
                                        backoff_max_s=hc.backoff_max_s)
        d = OutboxDelivery(ledger, hook, poll_s=config.billing.outbox_poll_s, **kw)
        d.start()
        deliveries.append(d)
    tel = telemetry if telemetry is not None else _default_telemetry()
    if tel is not None and not tel.enabled:
        tel = None  # the no-op telemetry: skip the traced handlers and hooks entirely (set telemetry up first)
    gw = Gateway(config, KeyStore(db), ledger, quotas, deliveries, tel)

    server = grpc.aio.server(options=[("grpc.max_receive_message_length", config.max_message_bytes),
                                      ("grpc.max_send_message_length", config.max_message_bytes),
                                      ("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((_generic_handler(gw, tel),))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server)
    address = f"{config.host}:{config.port}"
    creds = _server_credentials(config)
    port = server.add_secure_port(address, creds) if creds else server.add_insecure_port(address)
    await server.start()
    for name in ("", SERVICE):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    probe = tel.start_outbox_probe(db, ledger.hooks) if tel is not None else None
    return GatewayHandle(server, port, gw, health_servicer, db, probe)
