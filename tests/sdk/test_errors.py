"""The status -> exception table and retry-after parsing."""
from __future__ import annotations

import grpc
import pytest

import minimax_m1
from minimax_m1 import errors


class _FakeRpcError(grpc.RpcError):
    """A stand-in for a failed call's error object: only what from_rpc_error reads."""

    def __init__(self, code, details, trailing=()):
        self._code, self._details, self._trailing = code, details, trailing

    def code(self):
        return self._code

    def details(self):
        return self._details

    def trailing_metadata(self):
        return self._trailing


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
def test_each_status_maps_to_its_class(code, cls):
    error = errors.from_rpc_error(_FakeRpcError(code, "why"), request_id="r1")
    assert type(error) is cls
    assert isinstance(error, minimax_m1.MiniMaxM1Error)
    assert (error.code, error.message, error.request_id) == (code, "why", "r1")
    assert str(error) == f"{code.name}: why"


def test_every_status_gives_a_typed_error():
    for code in grpc.StatusCode:
        if code is grpc.StatusCode.OK:
            continue
        assert isinstance(errors.from_rpc_error(_FakeRpcError(code, "")), minimax_m1.MiniMaxM1Error)


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


def test_rate_limit_error_carries_retry_after():
    exc = _FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down", (("retry-after", "12"),))
    error = errors.from_rpc_error(exc)
    assert isinstance(error, minimax_m1.RateLimitError) and error.retry_after == 12.0
