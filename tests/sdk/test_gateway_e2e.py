"""The SDK against the REAL gateway (minimax_m1.gateway) over 127.0.0.1 sockets.

    SDK Client / AsyncClient --gRPC--> gateway (auth, validation, quotas, ledger) --gRPC--> upstream

The upstream is a real gRPC server running the FAKE MODEL of fake_upstream.py (a deterministic
stand-in for the GPU model, which cannot run here), optionally behind SheddingServicer to shed
load. Every scenario runs with the sync `Client` and the `AsyncClient` ("flavour").
"""
from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from minimax_m1 import (
    AsyncClient,
    AuthenticationError,
    Client,
    ContextWindowExceededError,
    DeadlineExceededError,
    FinishReason,
    InvalidRequestError,
    PermissionDeniedError,
    RateLimitError,
    RequestCancelledError,
    ServiceUnavailableError,
)
from minimax_m1.gateway.config import QuotaLimits, TlsConfig
from tests.sdk.fake_upstream import (
    MAX_CONTEXT,
    MODEL_ID,
    FakeModelServicer,
    RunningServer,
    SheddingServicer,
    dead_address,
    fake_greedy_text,
    gaps,
)
from tests.sdk.gateway_stack import GatewayStack

FLAVOURS = ["sync", "async"]
pytestmark = pytest.mark.parametrize("flavour", FLAVOURS)


# -- running one SDK call in either flavour ---------------------------------------------------


def generate(flavour: str, endpoint: str, api_key: str | None, client: dict | None = None, **kwargs):
    if flavour == "sync":
        with Client(endpoint, api_key, **(client or {})) as c:
            return c.generate(**kwargs)

    async def go():
        async with AsyncClient(endpoint, api_key, **(client or {})) as c:
            return await c.generate(**kwargs)

    return asyncio.run(go())


def stream(flavour: str, endpoint: str, api_key: str | None, client: dict | None = None, sink=None, **kwargs):
    """All chunks of a stream; each is also appended to `sink` as it arrives."""
    sink = [] if sink is None else sink
    if flavour == "sync":
        with Client(endpoint, api_key, **(client or {})) as c:
            with c.stream(**kwargs) as s:
                for chunk in s:
                    sink.append(chunk)
        return sink

    async def go():
        async with AsyncClient(endpoint, api_key, **(client or {})) as c:
            async with c.stream(**kwargs) as s:
                async for chunk in s:
                    sink.append(chunk)
        return sink

    return asyncio.run(go())


def count_tokens(flavour: str, endpoint: str, api_key: str | None, text: str) -> int:
    if flavour == "sync":
        with Client(endpoint, api_key) as c:
            return c.count_tokens(text)

    async def go():
        async with AsyncClient(endpoint, api_key) as c:
            return await c.count_tokens(text)

    return asyncio.run(go())


def list_models(flavour: str, endpoint: str, api_key: str | None):
    if flavour == "sync":
        with Client(endpoint, api_key) as c:
            return c.list_models()

    async def go():
        async with AsyncClient(endpoint, api_key) as c:
            return await c.list_models()

    return asyncio.run(go())


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
def fake_model():
    return FakeModelServicer()


@pytest.fixture
def stacks(tmp_path):
    """Factory: start an upstream (the given servicer) and a real gateway in front of it."""
    started = []

    def start(servicer=None, **gateway_kwargs) -> tuple[GatewayStack, RunningServer]:
        upstream = RunningServer(servicer or FakeModelServicer())
        data_dir = tmp_path / f"gw{len(started)}"
        data_dir.mkdir()
        try:
            gateway = GatewayStack(upstream.address, data_dir, **gateway_kwargs)
        except BaseException:
            upstream.stop()
            raise
        started.append((gateway, upstream))
        return gateway, upstream

    yield start
    for gateway, upstream in started:
        gateway.stop()
        upstream.stop()


@pytest.fixture
def gateway(stacks, fake_model) -> GatewayStack:
    return stacks(fake_model)[0]


@pytest.fixture
def key(gateway) -> str:
    return gateway.create_key().key


def _wait_for(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    return predicate()


# -- generate and stream ------------------------------------------------------------------------


def test_generate(flavour, gateway, key):
    result = generate(flavour, gateway.address, key, input="the quick brown fox",
                      max_output_tokens=6, temperature=0, request_id=f"gen-{flavour}",
                      return_routing_log=True)  # fmt: skip
    assert result.text == fake_greedy_text("the quick brown fox", 6)
    assert result.finish_reason is FinishReason.LENGTH
    assert (result.usage.input_tokens, result.usage.output_tokens) == (4, 6)
    assert result.request_id == f"gen-{flavour}" and result.model == MODEL_ID
    assert [layer.layer for layer in result.routing_log] == [0, 1]
    # The gateway billed it under our request id, from the upstream's usage.
    (record,) = _wait_for(lambda: [r for r in gateway.records() if r.ended_at is not None])
    assert (record.request_id, record.status, record.output_tokens) == (f"gen-{flavour}", "OK", 6)


def test_stream(flavour, gateway, key):
    chunks = stream(flavour, gateway.address, key, input="x y z", max_output_tokens=5,
                    stop=["never"], request_id=f"st-{flavour}")  # fmt: skip
    assert "".join(c.text_delta for c in chunks) == fake_greedy_text("x y z", 5)
    assert [c.usage.output_tokens for c in chunks[:-1]] == [1, 2, 3, 4, 5]
    assert chunks[-1].finish_reason is FinishReason.LENGTH
    assert chunks[-1].usage.output_tokens == 5 and chunks[-1].usage.input_tokens == 3
    assert {c.request_id for c in chunks} == {f"st-{flavour}"}


def test_count_tokens_and_list_models(flavour, gateway, key):
    assert count_tokens(flavour, gateway.address, key, "one two three") == 3
    models = list_models(flavour, gateway.address, key)
    assert [(m.id, m.max_context) for m in models] == [(MODEL_ID, MAX_CONTEXT)]


def test_api_key_from_the_environment(flavour, gateway, key, monkeypatch):
    monkeypatch.setenv("MINIMAX_M1_API_KEY", key)
    monkeypatch.setenv("MINIMAX_M1_ENDPOINT", gateway.address)
    assert generate(flavour, None, None, input="env", max_output_tokens=1).text == " env"


def test_tls_gateway(flavour, stacks, certificate):
    tls = TlsConfig(cert_file=str(certificate.cert_file), key_file=str(certificate.key_file))
    gateway, _ = stacks(tls=tls)
    key = gateway.create_key().key
    result = generate(flavour, f"grpcs://localhost:{gateway.port}", key,
                      client={"root_certificates": certificate.cert}, input="sealed", max_output_tokens=2)  # fmt: skip
    assert result.text == " sealed sealed"


# -- every error type -------------------------------------------------------------------------


def test_authentication_error(flavour, gateway, key):
    with pytest.raises(AuthenticationError, match="missing API key"):
        generate(flavour, gateway.address, None, input="a", max_output_tokens=1)
    with pytest.raises(AuthenticationError, match="unknown API key"):
        stream(flavour, gateway.address, "mm1_not-a-real-key-at-all", input="a", max_output_tokens=1)


def test_permission_denied_error(flavour, gateway):
    revoked = gateway.create_key()
    gateway.revoke(revoked.info.key_id)
    with pytest.raises(PermissionDeniedError, match="revoked"):
        generate(flavour, gateway.address, revoked.key, input="a", max_output_tokens=1)
    other_model = gateway.create_key(models=("some-other-model",))
    with pytest.raises(PermissionDeniedError, match="may not use model"):
        stream(flavour, gateway.address, other_model.key, input="a", max_output_tokens=1)


def test_rate_limit_error_carries_retry_after(flavour, stacks):
    gateway, _ = stacks(tenants=(("tiny", QuotaLimits(requests_per_minute=1)),))
    key = gateway.create_key("tiny").key
    generate(flavour, gateway.address, key, input="a", max_output_tokens=1)
    started = time.monotonic()
    with pytest.raises(RateLimitError) as exc:
        # Retryable (it has a request id), but the quota's retry-after cannot fit in the deadline,
        # so the SDK gives up at once instead of sleeping for most of a minute.
        generate(flavour, gateway.address, key, input="a", max_output_tokens=1, request_id="rl", timeout=5)
    assert 1 <= exc.value.retry_after <= 60
    assert exc.value.request_id == "rl" and "requests_per_minute" in exc.value.message
    assert time.monotonic() - started < 5


def test_invalid_request_error(flavour, gateway, key):
    with pytest.raises(InvalidRequestError, match="not served here") as exc:
        generate(flavour, gateway.address, key, input="a", max_output_tokens=1, model="no-such-model")
    assert exc.value.code is grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(InvalidRequestError, match="input: must not be empty"):
        stream(flavour, gateway.address, key, input="", max_output_tokens=1)
    with pytest.raises(InvalidRequestError, match="request_id"):
        generate(flavour, gateway.address, key, input="a", max_output_tokens=1, request_id="has space")


def test_context_window_exceeded_error(flavour, gateway, key):
    # The gateway rejects a cap beyond the model's context...
    with pytest.raises(ContextWindowExceededError, match="max_output_tokens"):
        generate(flavour, gateway.address, key, input="a", max_output_tokens=MAX_CONTEXT + 1)
    # ...and the upstream rejects an input that fills the requested window (passed through).
    with pytest.raises(ContextWindowExceededError, match="context_window is 3"):
        stream(flavour, gateway.address, key, input="a b c d", max_output_tokens=1, context_window=3)


def test_service_unavailable_error(flavour, tmp_path):
    gateway = GatewayStack(dead_address(), tmp_path)  # an upstream that is not there
    try:
        key = gateway.create_key().key
        with pytest.raises(ServiceUnavailableError, match="unavailable"):
            generate(flavour, gateway.address, key, input="a", max_output_tokens=1, request_id="u1")
    finally:
        gateway.stop()
    # And with the gateway itself gone.
    with pytest.raises(ServiceUnavailableError):
        generate(flavour, gateway.address, key, input="a", max_output_tokens=1, client={"max_retries": 0})


def test_deadline_exceeded_error(flavour, gateway, key, fake_model):
    fake_model.token_delay_s = 0.1
    with pytest.raises(DeadlineExceededError):
        generate(flavour, gateway.address, key, input="slow", max_output_tokens=100, timeout=0.5)
    got = []
    with pytest.raises(DeadlineExceededError):
        stream(flavour, gateway.address, key, sink=got, input="slow", max_output_tokens=100, timeout=1.5)
    assert 1 <= len(got) < 100  # the deadline struck mid-stream, through the gateway


def test_cancelled_error(flavour, stacks):
    # The upstream aborts the call (as an engine does when it cancels a request).
    shedder = SheddingServicer(FakeModelServicer(), failures=1, code=grpc.StatusCode.ABORTED,
                               methods=("GenerateStream",))  # fmt: skip
    gateway, _ = stacks(shedder)
    key = gateway.create_key().key
    with pytest.raises(RequestCancelledError):
        generate(flavour, gateway.address, key, input="a", max_output_tokens=1, request_id="c1")
    assert len(shedder.calls) == 1  # CANCELLED is not retried


def test_mid_stream_error_is_typed(flavour, gateway, key, fake_model):
    fake_model.fail_stream_after = 2
    got = []
    with pytest.raises(ServiceUnavailableError, match="mid-stream"):
        stream(flavour, gateway.address, key, sink=got, input="a b", max_output_tokens=10, request_id="m1")
    assert [c.text_delta for c in got] == [" a", " b"]
    assert len(fake_model.requests) == 1  # not retried once text was delivered


# -- retries through the gateway, with an upstream that sheds load ----------------------------


def test_retries_honour_retry_after_and_reuse_the_request_id(flavour, stacks):
    # Upstream RESOURCE_EXHAUSTED reaches the client as RESOURCE_EXHAUSTED with retry-after: 1.
    shedder = SheddingServicer(FakeModelServicer(), failures=2, code=grpc.StatusCode.RESOURCE_EXHAUSTED,
                               methods=("GenerateStream",))  # fmt: skip
    gateway, _ = stacks(shedder)
    key = gateway.create_key().key
    result = generate(flavour, gateway.address, key, input="again", max_output_tokens=2, request_id="r-9")
    assert result.text == " again again" and result.request_id == "r-9"
    assert len(shedder.calls) == 3  # 1 + the default 2 retries
    assert all(gap >= 1.0 for gap in gaps(shedder.calls))  # waited the gateway's retry-after
    # One request id across the attempts: the gateway numbers its attempts under it.
    assert [c.request_id for c in shedder.calls] == ["r-9", "r-9#2", "r-9#3"]
    records = _wait_for(lambda: [r for r in gateway.records() if r.ended_at is not None and r.status == "OK"])
    assert {r.request_id for r in gateway.records()} == {"r-9"} and len(records) == 1


def test_unavailable_upstream_is_retried_with_backoff(flavour, stacks):
    shedder = SheddingServicer(FakeModelServicer(), failures=1, code=grpc.StatusCode.UNAVAILABLE,
                               methods=("GenerateStream",))  # fmt: skip
    gateway, _ = stacks(shedder)
    key = gateway.create_key().key
    chunks = stream(flavour, gateway.address, key, input="b", max_output_tokens=1, request_id="s-2")
    assert chunks[-1].finish_reason is FinishReason.LENGTH
    (gap,) = gaps(shedder.calls)
    assert gap >= 0.5 * 0.75  # no retry-after from the gateway here: backoff with jitter


def test_no_retry_without_request_id_unless_configured(flavour, stacks):
    shedder = SheddingServicer(FakeModelServicer(), failures=1, code=grpc.StatusCode.UNAVAILABLE,
                               methods=("GenerateStream",))  # fmt: skip
    gateway, _ = stacks(shedder)
    key = gateway.create_key().key
    with pytest.raises(ServiceUnavailableError):
        generate(flavour, gateway.address, key, input="a", max_output_tokens=1)
    assert len(shedder.calls) == 1
    shedder.failures = 2  # the next call fails once more, then succeeds
    result = generate(flavour, gateway.address, key, client={"auto_request_id": True},
                      input="a", max_output_tokens=1)  # fmt: skip
    assert len(shedder.calls) == 3 and result.text == " a"
    assert shedder.calls[2].request_id == f"{result.request_id}#2"
