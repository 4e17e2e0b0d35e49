"""The status -> exception table (through a real server failing with each code) and retry-after."""
from __future__ import annotations

import grpc
import pytest

import minimax_m1
from tests.sdk.fake_upstream import RunningServer
from minimax_m1 import Client, errors
from minimax_m1._generated import generation_pb2_grpc as pb_grpc


class AbortingServicer(pb_grpc.GenerationServicer):
    """Fails CountTokens with the status named by its input, e.g. "UNAVAILABLE"."""

    def CountTokens(self, request, context):
        code = grpc.StatusCode[request.input]
        if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
            context.set_trailing_metadata((("retry-after", "12"),))
        context.abort(code, f"failing with {code.name}")


@pytest.fixture(scope="module")
def aborting():
    with RunningServer(AbortingServicer()) as server:
        with Client(server.address, max_retries=0, timeout=30) as client:
            yield client


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.UNAUTHENTICATED, minimax_m1.AuthenticationError),
        (grpc.StatusCode.PERMISSION_DENIED, minimax_m1.PermissionDeniedError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, minimax_m1.RateLimitError),
        (grpc.StatusCode.INVALID_ARGUMENT, minimax_m1.InvalidRequestError),
        (grpc.StatusCode.OUT_OF_RANGE, minimax_m1.ContextWindowExceededError),
        (grpc.StatusCode.UNAVAILABLE, minimax_m1.ServiceUnavailableError),
        (grpc.StatusCode.DEADLINE_EXCEEDED, minimax_m1.DeadlineExceededError),
        (grpc.StatusCode.CANCELLED, minimax_m1.RequestCancelledError),
        (grpc.StatusCode.NOT_FOUND, minimax_m1.NotFoundError),
        (grpc.StatusCode.INTERNAL, minimax_m1.InternalServerError),
        (grpc.StatusCode.UNKNOWN, minimax_m1.InternalServerError),
    ],
)
def test_each_status_maps_to_its_class(aborting, code, cls):
    with pytest.raises(minimax_m1.MiniMaxM1Error) as exc:
        aborting.count_tokens(code.name)
    assert type(exc.value) is cls
    assert (exc.value.code, exc.value.message) == (code, f"failing with {code.name}")
    assert str(exc.value) == f"{code.name}: failing with {code.name}"


def test_every_status_gives_a_typed_error(aborting):
    for code in grpc.StatusCode:
        if code is grpc.StatusCode.OK:
            continue
        with pytest.raises(minimax_m1.MiniMaxM1Error):
            aborting.count_tokens(code.name)


def test_context_window_errors_are_invalid_requests():
    # `except InvalidRequestError` also catches the more precise subclasses.
    assert issubclass(minimax_m1.ContextWindowExceededError, minimax_m1.InvalidRequestError)
    assert issubclass(minimax_m1.NotFoundError, minimax_m1.InvalidRequestError)


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ((("retry-after", "3"),), 3.0),
        ((("retry-after", "0.25"),), 0.25),
        ((("Retry-After", b"7"),), 7.0),
        ((("other", "1"),), None),
        ((("retry-after", "soon"),), None),
        ((("retry-after", "-1"),), None),
        ((), None),
        (None, None),
    ],
)
def test_parse_retry_after(metadata, expected):
    assert errors.parse_retry_after(metadata) == expected


def test_rate_limit_error_carries_retry_after(aborting):
    with pytest.raises(minimax_m1.RateLimitError) as exc:
        aborting.count_tokens("RESOURCE_EXHAUSTED")
    assert exc.value.retry_after == 12.0
