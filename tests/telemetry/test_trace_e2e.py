"""One real request through a real gateway (127.0.0.1 socket) and the in-process engine
(EngineServer on grpc.aio, fed the real gRPC context as Ray Serve's proxy does), with in-memory
exporters: the span tree, its parent/child links, and the metric points it leaves."""
from __future__ import annotations

import asyncio

import grpc
import pytest
from opentelemetry.trace import SpanKind

from minimax_m1.telemetry import names
from tests.telemetry.conftest import PROMPT, make_memory_telemetry

GATEWAY_SPAN = "minimax.m1.v1.Generation/{}"
ENGINE_SPAN = "text_completion tiny"
PHASES = ("engine.queue", "engine.prefill", "engine.decode", "engine.finish")


def by_name(spans) -> dict[str, list]:
    out: dict[str, list] = {}
    for s in spans:
        out.setdefault(s.name, []).append(s)
    return out


def one_trace(spans, method: str):
    """The gateway span of `method`, the engine span under it, and the engine's children."""
    named = by_name(spans)
    (gw,) = named[GATEWAY_SPAN.format(method)]
    engine = [s for s in named[ENGINE_SPAN] if s.parent is not None and s.parent.span_id == gw.context.span_id]
    assert len(engine) == 1, "exactly one engine span under the gateway span"
    (eng,) = engine
    children = [s for s in spans if s.parent is not None and s.parent.span_id == eng.context.span_id]
    return gw, eng, children


def points(metrics: dict, name: str, **attrs) -> list:
    return [p for a, p in metrics.get(name, []) if all(a.get(k) == v for k, v in attrs.items())]


async def wait_until(predicate, timeout_s: float = 10.0):
    for _ in range(int(timeout_s / 0.05)):
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached")


@pytest.mark.parametrize("method", ["GenerateStream", "Generate"])
async def test_request_makes_one_trace_gateway_then_engine(exact_telemetry, make_stack, method):
    memory_telemetry = exact_telemetry
    stack = await make_stack()
    client = stack.client("acme")
    if method == "Generate":
        resp = await client.generate(input=PROMPT, max_output_tokens=6, request_id="req-1")
        usage = resp.usage
    else:
        msgs = await client.stream(input=PROMPT, max_output_tokens=6, request_id="req-1")
        usage = msgs[-1].usage
    assert usage.output_tokens == 6
    spans = memory_telemetry.spans()
    gw, eng, children = one_trace(spans, method)

    # the gateway span is the root; the engine span is its child in the same trace
    assert gw.parent is None and gw.kind == SpanKind.SERVER and eng.kind == SpanKind.SERVER
    assert eng.context.trace_id == gw.context.trace_id
    assert gw.attributes[names.RPC_STATUS] == "OK" and gw.attributes["minimax_m1.tenant"] == "acme"
    assert eng.attributes[names.REQUEST_MODEL] == "tiny" and eng.attributes["minimax_m1.request_id"].startswith("req-1")
    assert eng.attributes["gen_ai.usage.output_tokens"] == 6
    assert gw.start_time <= eng.start_time and eng.end_time <= gw.end_time

    # the engine's phases, all children of the engine span and in order
    kids = by_name(children)
    assert set(PHASES) <= set(kids), sorted(kids)
    chunks = sorted(kids["engine.prefill"], key=lambda s: s.attributes["engine.chunk.start"])
    prompt_tokens = usage.input_tokens
    assert sum(c.attributes["engine.chunk.tokens"] for c in chunks) == prompt_tokens, "chunks cover the prompt"
    assert len(chunks) == -(-prompt_tokens // 8), "prefill_chunk_size is 8"
    (queue,), (decode,), (finish,) = kids["engine.queue"], kids["engine.decode"], kids["engine.finish"]
    assert queue.end_time <= chunks[0].start_time <= chunks[-1].end_time <= decode.start_time
    assert decode.end_time <= finish.start_time <= finish.end_time <= eng.end_time
    assert decode.attributes["engine.decode_steps"] == 5, "first token comes with the last prefill chunk"
    assert finish.attributes["gen_ai.response.finish_reasons"] == ("length",)
    first = [e for e in eng.events if e.name == "gen_ai.first_token"]
    assert len(first) == 1 and chunks[-1].start_time <= first[0].timestamp

    # no prompt text anywhere unless the operator asks for it
    for span in spans:
        assert not any(PROMPT in str(v) for v in span.attributes.values()), span.name
        assert not any(PROMPT in str(v) for e in span.events for v in e.attributes.values())

    m = memory_telemetry.metrics()
    model = {names.REQUEST_MODEL: "tiny"}
    assert [p.count for p in points(m, names.TIME_TO_FIRST_TOKEN.name, **model)] == [1]
    assert [p.count for p in points(m, names.TIME_PER_OUTPUT_TOKEN.name, **model)] == [1]
    (duration,) = points(m, names.REQUEST_DURATION.name, **model)
    assert duration.count == 1 and names.ERROR_TYPE not in dict(m[names.REQUEST_DURATION.name][0][0])
    assert [p.value for p in points(m, names.ENGINE_TOKENS.name, **{names.TOKEN_TYPE: "output"})] == [6]
    assert [p.value for p in points(m, names.ENGINE_TOKENS.name, **{names.TOKEN_TYPE: "input"})] == [prompt_tokens]
    assert [p.value for p in points(m, names.GATEWAY_REQUESTS.name, **{names.RPC_METHOD: method, names.RPC_STATUS: "OK"})] == [1]
    assert [p.value for p in points(m, names.GATEWAY_TOKENS.name, tenant="acme", **{names.TOKEN_TYPE: "output"})] == [6]
    load = points(m, names.EXPERT_LOAD.name)
    assert len(load) == 8 * 32 and sum(p.value for p in load) == usage.expert_activations, "exact expert load"
    imbalance = points(m, names.EXPERT_IMBALANCE.name)
    assert len(imbalance) == 8 and all(p.value >= 1.0 for p in imbalance)
    assert [p.value for p in points(m, names.SLOTS_TOTAL.name)] == [4]
    assert [p.value for p in points(m, names.BLOCKS_TOTAL.name)] == [128]
    assert [p.value for p in points(m, names.INSTANCE_RESTARTS.name)] == [0]

    # the billing hook delivers from the outbox: semconv token usage, then zero lag
    def billed():
        got = memory_telemetry.metrics()
        usage_points = points(got, "gen_ai.client.token.usage", tenant="acme", **{names.TOKEN_TYPE: "output"})
        lag = points(got, names.OUTBOX_LAG.name, hook="otel_metrics")
        return usage_points and lag and (usage_points, lag)
    usage_points, lag = await wait_until(billed)
    assert usage_points[0].sum == 6 and lag[0].value >= 0.0


async def test_client_traceparent_is_continued(memory_telemetry, make_stack):
    stack = await make_stack()
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    await stack.client().generate(metadata=[("traceparent", f"00-{trace_id}-{parent_id}-01")], input="hi",
                                  max_output_tokens=2)
    gw, eng, _ = one_trace(memory_telemetry.spans(), "Generate")
    assert format(gw.context.trace_id, "032x") == trace_id and format(gw.parent.span_id, "016x") == parent_id
    assert eng.context.trace_id == gw.context.trace_id


async def test_errors_and_quota_rejections_are_counted_by_code(memory_telemetry, make_stack):
    stack = await make_stack(limited_rpm=1)
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await stack.client(None).generate(input="x", max_output_tokens=2)
    assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED
    limited = stack.client("limited")
    await limited.generate(input="x", max_output_tokens=2)
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await limited.stream(input="x", max_output_tokens=2)
    assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    m = memory_telemetry.metrics()
    count = lambda method, code: [p.value for p in points(m, names.GATEWAY_REQUESTS.name,
                                                           **{names.RPC_METHOD: method, names.RPC_STATUS: code})]
    assert count("Generate", "UNAUTHENTICATED") == [1] and count("Generate", "OK") == [1]
    assert count("GenerateStream", "RESOURCE_EXHAUSTED") == [1]
    assert [p.value for p in points(m, names.QUOTA_REJECTIONS.name, tenant="limited", limit="requests_per_minute")] == [1]
    rejected = [s for s in memory_telemetry.spans() if s.name == GATEWAY_SPAN.format("GenerateStream")]
    assert rejected[0].attributes[names.RPC_STATUS] == "RESOURCE_EXHAUSTED"
    assert not [s for s in memory_telemetry.spans() if s.name == ENGINE_SPAN and s.parent is not None
                and s.parent.span_id == rejected[0].context.span_id], "a rejected call never reaches the engine"


async def test_engine_error_and_cancel_close_the_spans(memory_telemetry, make_stack):
    stack = await make_stack()
    client = stack.client()
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await client.generate(input="a prompt that does not fit", context_window=3, max_output_tokens=1)
    call = client.stub.GenerateStream(__import__("minimax_m1._generated.generation_pb2", fromlist=["x"]).GenerateRequest(
        input="keep going", max_output_tokens=500), metadata=client.metadata, timeout=60)
    async for _ in call:
        break
    call.cancel()
    stats = await wait_until(lambda: stack.engine_server.stats()["slots_used"] == 0 and
                             [s for s in memory_telemetry.spans() if s.name == ENGINE_SPAN
                              and s.attributes.get(names.ERROR_TYPE) == "CANCELLED"])
    assert stats
    m = memory_telemetry.metrics()
    errors = {a.get(names.ERROR_TYPE) for a, _ in m[names.REQUEST_DURATION.name]}
    assert "CANCELLED" in errors
    engine_spans = [s for s in memory_telemetry.spans() if s.name == ENGINE_SPAN]
    assert all(s.end_time for s in engine_spans)
    if exc.value.code() == grpc.StatusCode.OUT_OF_RANGE and len(engine_spans) == 2:  # the engine saw it too
        assert "OUT_OF_RANGE" in errors


async def test_preemption_is_an_event_and_the_request_queues_again(memory_telemetry, make_stack):
    # 12 KV blocks of 4 tokens: three 30-token sequences cannot all stay resident.
    stack = await make_stack(engine={"max_num_seqs": 3, "max_batch_tokens": 24, "prefill_chunk_size": 8,
                                     "kv_block_size": 4, "num_kv_blocks": 12})
    client = stack.client()
    prompt = "hello world this is a prompt "
    await asyncio.gather(*[client.stream(input=f"{prompt}{i}", max_output_tokens=10) for i in range(3)])
    assert stack.engine_server.stats()["preemptions"] > 0
    engine_spans = [s for s in memory_telemetry.spans() if s.name == ENGINE_SPAN]
    preempted = [s for s in engine_spans if any(e.name == "engine.preemption" for e in s.events)]
    assert preempted
    span = preempted[0]
    kids = by_name(s for s in memory_telemetry.spans() if s.parent is not None and s.parent.span_id == span.context.span_id)
    assert len(kids["engine.queue"]) >= 2, "requeued after the preemption"
    assert any(c.attributes["engine.recompute"] for c in kids["engine.prefill"])
    m = memory_telemetry.metrics()
    assert points(m, names.PREEMPTIONS.name)[0].value == stack.engine_server.stats()["preemptions"]


async def test_prompt_recorded_only_when_the_operator_turns_it_on(make_stack):
    mt = make_memory_telemetry(record_prompts=True)
    try:
        stack = await make_stack()
        await stack.client().generate(input=PROMPT, max_output_tokens=2)
        (eng,) = [s for s in mt.spans() if s.name == ENGINE_SPAN]
        assert eng.attributes["gen_ai.prompt"] == PROMPT
    finally:
        mt.telemetry.shutdown()
