"""`Client` (blocking) against real gRPC servers on 127.0.0.1.

The servers run a FAKE MODEL (deterministic stand-in for the GPU model; see fake_upstream.py).
The same scenarios through the real gateway are in test_gateway_e2e.py; the async twin of this
file is test_async_client.py.
"""
from __future__ import annotations

import time

import grpc
import pytest

import minimax_m1
from tests.sdk.fake_upstream import MAX_CONTEXT, MODEL_ID, dead_address, fake_greedy_text, gaps
from minimax_m1 import (
    Client,
    ContextWindowExceededError,
    DeadlineExceededError,
    FinishReason,
    InvalidRequestError,
    NotFoundError,
    RateLimitError,
    ServiceUnavailableError,
)


# -- generate, stream, count_tokens, list_models --------------------------------------------


def test_generate_returns_text_finish_reason_and_usage(upstream):
    with Client(upstream.address) as client:
        result = client.generate("the quick fox", max_output_tokens=5, temperature=0)
    assert result.text == fake_greedy_text("the quick fox", 5)
    assert result.finish_reason is FinishReason.LENGTH
    assert (result.usage.input_tokens, result.usage.output_tokens) == (3, 5)
    assert result.usage.expert_activations == (3 + 5) * 2 * 2  # tokens x layers x top-2
    assert result.model == MODEL_ID
    assert result.routing_log is None


def test_generate_sends_every_parameter(upstream, fake_model):
    with Client(upstream.address) as client:
        result = client.generate(
            "a b c", max_output_tokens=7, context_window=100, expert_threshold=0.25,
            thinking_budget=3, temperature=0.7, top_p=0.9, top_k=5, seed=42, stop=["zz"],
            stop_token_ids=[7, 9], return_routing_log=True, request_id="req-1",
        )  # fmt: skip
    sent = fake_model.requests[-1]
    assert sent.input == "a b c" and sent.max_output_tokens == 7 and sent.context_window == 100
    assert sent.expert_threshold == pytest.approx(0.25) and sent.thinking_budget == 3
    assert sent.sampling.temperature == pytest.approx(0.7) and sent.sampling.top_p == pytest.approx(0.9)
    assert sent.sampling.top_k == 5 and sent.sampling.seed == 42
    assert list(sent.stop) == ["zz"] and list(sent.stop_token_ids) == [7, 9]
    assert sent.return_routing_log and sent.request_id == "req-1"
    assert result.request_id == "req-1"
    # expert_threshold < 0.5 makes the fake model route each token to one expert in each layer.
    assert [layer.layer for layer in result.routing_log] == [0, 1]
    assert all(sum(layer.expert_counts) == 3 + 7 for layer in result.routing_log)


def test_unset_sampling_fields_stay_unset(upstream, fake_model):
    with Client(upstream.address) as client:
        client.generate("a", max_output_tokens=1)
    sent = fake_model.requests[-1]
    assert not sent.sampling.HasField("temperature") and not sent.HasField("expert_threshold")
    assert sent.request_id == ""  # no id unless asked: the gateway assigns one


def test_seeded_sampling_is_reproducible(upstream):
    with Client(upstream.address) as client:
        runs = [
            client.generate("a b c d e f", max_output_tokens=12, temperature=1.0, seed=7).text
            for _ in range(2)
        ]
        other = client.generate("a b c d e f", max_output_tokens=12, temperature=1.0, seed=8).text
    assert runs[0] == runs[1]
    assert other != runs[0]


def test_stop_string_and_context_window_finish_reasons(upstream):
    with Client(upstream.address) as client:
        stopped = client.generate("a b c", max_output_tokens=10, stop="c")
        capped = client.generate("a b c", max_output_tokens=10, context_window=5)
    assert stopped.finish_reason is FinishReason.STOP and stopped.text == " a b "
    assert capped.finish_reason is FinishReason.CONTEXT_WINDOW
    assert capped.usage.output_tokens == 2


def test_stream_yields_deltas_then_final_usage(upstream):
    with Client(upstream.address) as client:
        with client.stream("x y z", max_output_tokens=4, return_routing_log=True) as stream:
            chunks = list(stream)
    assert "".join(c.text_delta for c in chunks) == fake_greedy_text("x y z", 4)
    assert [c.finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1].finish_reason is FinishReason.LENGTH
    assert [c.usage.output_tokens for c in chunks] == [1, 2, 3, 4, 4]  # cumulative
    assert chunks[-1].routing_log is not None and len(chunks[-1].routing_log) == 2
    assert all(c.routing_log is None for c in chunks[:-1])


def test_stream_final_result_matches_generate(upstream):
    with Client(upstream.address) as client:
        whole = client.generate("p q", max_output_tokens=6, request_id="same")
        streamed = client.stream("p q", max_output_tokens=6, request_id="same").final_result()
    assert (streamed.text, streamed.finish_reason, streamed.usage) == (
        whole.text, whole.finish_reason, whole.usage,
    )  # fmt: skip
    assert streamed.request_id == "same"


def test_closing_a_stream_cancels_the_call(fake_model, upstream):
    fake_model.token_delay_s = 0.05
    with Client(upstream.address) as client:
        with client.stream("a b", max_output_tokens=200) as stream:
            first = next(stream)
        assert first.text_delta == " a"
        with pytest.raises(StopIteration):
            next(stream)
    deadline = time.monotonic() + 10
    while fake_model.cancelled_streams == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fake_model.cancelled_streams == 1  # the server saw the cancellation and stopped


def test_count_tokens_and_list_models(upstream):
    with Client(upstream.address) as client:
        assert client.count_tokens("one two three four") == 4
        models = client.list_models()
    assert [(m.id, m.max_context, m.num_experts, m.experts_per_token) for m in models] == [
        (MODEL_ID, MAX_CONTEXT, 4, 2)
    ]


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "code", "needle"),
    [
        ({"max_output_tokens": 0}, InvalidRequestError, grpc.StatusCode.INVALID_ARGUMENT, "max_output_tokens"),
        ({"temperature": 3.0}, InvalidRequestError, grpc.StatusCode.INVALID_ARGUMENT, "temperature"),
        ({"context_window": 2}, ContextWindowExceededError, grpc.StatusCode.OUT_OF_RANGE, "context_window"),
        ({"model": "nope"}, NotFoundError, grpc.StatusCode.NOT_FOUND, "nope"),
    ],
)
def test_server_errors_are_typed(upstream, kwargs, error, code, needle):
    args = {"max_output_tokens": 4, **kwargs}
    with Client(upstream.address) as client:
        with pytest.raises(error) as unary:
            client.generate("a b c", **args)
        with pytest.raises(error) as streamed:
            list(client.stream("a b c", **args))
    for exc in (unary.value, streamed.value):
        assert exc.code is code and needle in exc.message
        assert isinstance(exc, minimax_m1.MiniMaxM1Error)


def test_bad_values_are_rejected_before_sending(upstream, fake_model):
    with Client(upstream.address) as client:
        with pytest.raises(InvalidRequestError, match="out of range") as exc:
            client.generate("a", max_output_tokens=-1)
        with pytest.raises(InvalidRequestError):
            client.generate(123, max_output_tokens=1)  # type: ignore[arg-type]
    assert exc.value.code is None
    assert fake_model.requests == []


def test_unreachable_endpoint_is_service_unavailable():
    with Client(dead_address(), max_retries=0, timeout=5) as client:
        with pytest.raises(ServiceUnavailableError):
            client.count_tokens("a")


def test_mid_stream_failure_raises_the_same_typed_error(fake_model, upstream):
    fake_model.fail_stream_after = 2
    received = []
    with Client(upstream.address) as client:
        with pytest.raises(ServiceUnavailableError, match="mid-stream") as exc:
            for chunk in client.stream("a b", max_output_tokens=10, request_id="mid"):
                received.append(chunk.text_delta)
    assert received == [" a", " b"]
    assert exc.value.request_id == "mid"
    assert len(fake_model.requests) == 1  # never retried once text was delivered


# -- retries --------------------------------------------------------------------------------


def test_retries_reuse_the_request_id_and_honour_retry_after(shedding):
    server = shedding(failures=2, code=grpc.StatusCode.UNAVAILABLE, retry_after="0.3")
    with Client(server.address) as client:
        result = client.generate("a", max_output_tokens=2, request_id="rid-7")
    calls = server.servicer.calls
    assert len(calls) == 3  # 1 + the default 2 retries
    assert {c.request_id for c in calls} == {"rid-7"}
    assert all(gap >= 0.3 for gap in gaps(calls))
    assert result.request_id == "rid-7"


def test_backoff_is_exponential_with_jitter_without_retry_after(shedding):
    server = shedding(failures=2, code=grpc.StatusCode.UNAVAILABLE)
    with Client(server.address) as client:
        client.generate("a", max_output_tokens=1, request_id="r")
    first, second = gaps(server.servicer.calls)
    assert first >= 0.5 * 0.75  # min(0.5 * 2**0, 8) times jitter in [0.75, 1]
    assert second >= 1.0 * 0.75  # min(0.5 * 2**1, 8) times jitter


def test_rate_limit_gives_up_after_max_retries_with_retry_after(shedding):
    server = shedding(failures=10, code=grpc.StatusCode.RESOURCE_EXHAUSTED, retry_after="0.1")
    with Client(server.address) as client:
        with pytest.raises(RateLimitError) as exc:
            client.generate("a", max_output_tokens=1, request_id="rl")
    assert len(server.servicer.calls) == 3
    assert exc.value.retry_after == pytest.approx(0.1)
    assert exc.value.request_id == "rl"


def test_no_retry_without_request_id(shedding):
    server = shedding(failures=2, code=grpc.StatusCode.UNAVAILABLE, retry_after="0")
    with Client(server.address) as client:
        with pytest.raises(ServiceUnavailableError):
            client.generate("a", max_output_tokens=1)
        with pytest.raises(ServiceUnavailableError):
            list(client.stream("a", max_output_tokens=1))
    assert len(server.servicer.calls) == 2  # one attempt each


def test_auto_request_id_makes_generate_retryable(shedding):
    server = shedding(failures=2, code=grpc.StatusCode.RESOURCE_EXHAUSTED, retry_after="0")
    with Client(server.address, auto_request_id=True) as client:
        result = client.generate("a", max_output_tokens=1)
    ids = {c.request_id for c in server.servicer.calls}
    assert len(server.servicer.calls) == 3 and len(ids) == 1
    assert result.request_id in ids and len(result.request_id) == 32


def test_max_retries_is_configurable(shedding):
    server = shedding(failures=10, code=grpc.StatusCode.UNAVAILABLE, retry_after="0")
    with Client(server.address, max_retries=0) as client:
        with pytest.raises(ServiceUnavailableError):
            client.generate("a", max_output_tokens=1, request_id="r")
        assert len(server.servicer.calls) == 1
        with pytest.raises(ServiceUnavailableError):
            client.generate("a", max_output_tokens=1, request_id="r", max_retries=4)
    assert len(server.servicer.calls) == 1 + 5


def test_read_only_calls_retry_without_request_id(shedding):
    server = shedding(failures=2, code=grpc.StatusCode.UNAVAILABLE, retry_after="0")
    with Client(server.address) as client:
        assert client.count_tokens("a b") == 2
    assert [c.method for c in server.servicer.calls] == ["CountTokens"] * 3


def test_non_retryable_status_is_not_retried(shedding):
    server = shedding(failures=1, code=grpc.StatusCode.INVALID_ARGUMENT)
    with Client(server.address) as client:
        with pytest.raises(InvalidRequestError):
            client.generate("a", max_output_tokens=1, request_id="r")
    assert len(server.servicer.calls) == 1


def test_retry_after_beyond_60_s_falls_back_to_backoff(shedding):
    server = shedding(failures=1, code=grpc.StatusCode.RESOURCE_EXHAUSTED, retry_after="3600")
    with Client(server.address) as client:
        client.generate("a", max_output_tokens=1, request_id="r")
    (gap,) = gaps(server.servicer.calls)
    assert 0.5 * 0.75 <= gap < 60  # the backoff, not an hour


def test_stream_retries_before_its_first_chunk(shedding):
    server = shedding(failures=1, code=grpc.StatusCode.UNAVAILABLE, retry_after="0")
    with Client(server.address) as client:
        with client.stream("a b", max_output_tokens=3, request_id="s1") as stream:
            text = "".join(c.text_delta for c in stream)
    assert text == fake_greedy_text("a b", 3)
    assert [(c.method, c.request_id) for c in server.servicer.calls] == [("GenerateStream", "s1")] * 2


# -- deadlines ------------------------------------------------------------------------------


def test_per_call_deadline(fake_model, upstream):
    fake_model.token_delay_s = 0.1
    with Client(upstream.address) as client:
        with pytest.raises(DeadlineExceededError):
            client.generate("a", max_output_tokens=100, timeout=0.5)
        got = []
        with pytest.raises(DeadlineExceededError):
            for chunk in client.stream("a", max_output_tokens=100, timeout=1.5):
                got.append(chunk)
        assert 1 <= len(got) < 100  # the deadline struck mid-stream
        assert client.generate("a", max_output_tokens=1, timeout=30).usage.output_tokens == 1


def test_client_default_timeout(fake_model, upstream):
    fake_model.token_delay_s = 0.2
    with Client(upstream.address, timeout=0.4) as client:
        with pytest.raises(DeadlineExceededError):
            client.generate("a", max_output_tokens=50)


def test_deadline_bounds_the_retries(shedding):
    server = shedding(failures=10, code=grpc.StatusCode.UNAVAILABLE, retry_after="30")
    with Client(server.address) as client:
        started = time.monotonic()
        with pytest.raises(ServiceUnavailableError):
            client.generate("a", max_output_tokens=1, request_id="r", timeout=2)
    assert len(server.servicer.calls) == 1  # a 30 s wait could not fit in 2 s
    assert time.monotonic() - started < 30
