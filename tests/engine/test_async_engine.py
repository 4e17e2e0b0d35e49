"""AsyncEngine: streaming through the loop thread, cancellation freeing state, deadlines."""
from __future__ import annotations

import asyncio

import pytest

from minimax_m1.engine.async_engine import AsyncEngine
from minimax_m1.engine.errors import ContextWindowExceededError, DeadlineExceededError, RequestCancelledError
from minimax_m1.engine.request import FinishReason, RequestParams
from tests.engine.conftest import drain


@pytest.fixture
def async_engine(make_engine):
    engine = AsyncEngine(make_engine(max_num_seqs=4, num_kv_blocks=64))
    yield engine
    engine.shutdown()


async def collect(engine, prompt, params, **kw):
    text, outs = "", []
    async for out in engine.generate(prompt, params, **kw):
        text += out.text_delta
        outs.append(out)
    return text, outs


async def test_concurrent_streams_match_the_sync_engine(async_engine, make_engine):
    params = [RequestParams(max_output_tokens=10), RequestParams(max_output_tokens=7, temperature=0.9, seed=5),
              RequestParams(max_output_tokens=12, top_k=4, temperature=1.0, seed=8)]
    prompts = ["stream one", "a second, longer stream of input text", "3"]
    results = await asyncio.gather(*(collect(async_engine, p, q) for p, q in zip(prompts, params)))
    for (text, outs), p, q in zip(results, prompts, params):
        expected = drain(make_engine(), {0: [("x", p, q)]})["x"]
        assert text == expected["text"]
        assert [t for o in outs for t in o.token_ids] == expected["tokens"]
        assert outs[-1].finish_reason == FinishReason.LENGTH and not any(o.finished for o in outs[:-1])
        assert [o.output_tokens for o in outs] == sorted(o.output_tokens for o in outs), "usage is cumulative"


async def test_cancelling_a_stream_frees_its_slot_and_blocks_at_once(async_engine):
    gen = async_engine.generate("cancel me " * 4, RequestParams(max_output_tokens=500))
    first = await gen.__anext__()
    assert first.output_tokens >= 1
    busy = await async_engine.wait_idle()
    assert busy.cache.slots_used == 1 and busy.cache.blocks_used > 0
    await gen.aclose()  # the client went away
    after = await async_engine.wait_idle()
    assert after.cache.slots_used == 0 and after.cache.blocks_used == 0
    assert after.num_running == 0 and after.num_waiting == 0


async def test_a_cancelled_task_frees_state(async_engine):
    started = asyncio.Event()

    async def consume():
        async for _ in async_engine.generate("task", RequestParams(max_output_tokens=500)):
            started.set()

    task = asyncio.create_task(consume())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    stats = await async_engine.wait_idle()
    assert stats.cache.slots_used == 0 and stats.cache.blocks_used == 0


async def test_explicit_abort_raises_cancelled_in_the_stream(async_engine):
    gen = async_engine.generate("abort", RequestParams(max_output_tokens=500), request_id="req-1")
    await gen.__anext__()
    await async_engine.abort("req-1")
    with pytest.raises(RequestCancelledError):
        async for _ in gen:
            pass
    assert async_engine.stats().cache.slots_used == 0


async def test_deadline_exceeded_frees_state(async_engine):
    # 1,000 tokens (the KV pool's cap) take the CPU kernels ~0.3 s: the deadline lands mid-stream
    with pytest.raises(DeadlineExceededError):
        await collect(async_engine, "slow", RequestParams(max_output_tokens=10_000, context_window=0), deadline_s=0.05)
    stats = await async_engine.wait_idle()
    assert stats.cache.slots_used == 0 and stats.cache.blocks_used == 0


async def test_bad_input_raises_before_any_output(async_engine):
    with pytest.raises(ContextWindowExceededError):
        await collect(async_engine, "too long for the window", RequestParams(context_window=3))
    assert async_engine.stats().num_running == 0
