"""The one table from engine errors to gRPC status codes."""
from __future__ import annotations

import grpc
import pytest

from minimax_m1.engine import errors


@pytest.mark.parametrize("exc, code", [
    (errors.InvalidRequestError("max_output_tokens must be >= 1"), grpc.StatusCode.INVALID_ARGUMENT),
    (errors.ContextWindowExceededError("input has 9 tokens"), grpc.StatusCode.OUT_OF_RANGE),
    (errors.RequestCancelledError("gone"), grpc.StatusCode.CANCELLED),
    (errors.DeadlineExceededError("late"), grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.EngineDeadError("worker lost"), grpc.StatusCode.UNAVAILABLE),
])
def test_each_error_maps_to_its_code_with_its_message(exc, code):
    assert errors.grpc_status(exc) == (code, str(exc))


def test_unknown_errors_are_internal_without_details():
    code, message = errors.grpc_status(KeyError("secret internals"))
    assert code == grpc.StatusCode.INTERNAL and "secret" not in message


def test_two_tiers():
    assert issubclass(errors.InvalidRequestError, errors.EngineRequestError)
    assert not issubclass(errors.EngineDeadError, errors.EngineRequestError)
