"""Engine errors in two tiers, and the one table that maps them to gRPC status codes.

- Per-request (EngineRequestError): bad input, a context window the input already exceeds, a
  cancelled request, a passed deadline. The engine keeps serving everyone else.
- Instance-dead (EngineDeadError): the model instance lost a worker or its state. Every in-flight
  request fails with it, the health check fails, and Ray Serve replaces the replica.
"""
from __future__ import annotations

import grpc


class EngineRequestError(Exception):
    """One request failed; the engine is fine."""


class InvalidRequestError(EngineRequestError, ValueError):
    """A request parameter is out of range; the message names the field."""


class ContextWindowExceededError(EngineRequestError):
    """The input alone does not fit the request's context window (or the instance's cache)."""


class RequestCancelledError(EngineRequestError):
    """The client went away or the request was aborted."""


class DeadlineExceededError(EngineRequestError):
    """The request's deadline passed before it finished."""


class EngineDeadError(Exception):
    """The model instance is dead: nothing can be served until the replica is replaced."""


# The one table: error class -> gRPC status code. Lookup walks the MRO, so subclasses inherit.
GRPC_STATUS: dict[type[BaseException], grpc.StatusCode] = {
    InvalidRequestError: grpc.StatusCode.INVALID_ARGUMENT,
    ContextWindowExceededError: grpc.StatusCode.OUT_OF_RANGE,
    RequestCancelledError: grpc.StatusCode.CANCELLED,
    DeadlineExceededError: grpc.StatusCode.DEADLINE_EXCEEDED,
    EngineDeadError: grpc.StatusCode.UNAVAILABLE,
}


def grpc_status(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and message a client sees for `exc`; anything unknown is INTERNAL with a
    generic message (a traceback never reaches a client)."""
    for cls in type(exc).__mro__:
        code = GRPC_STATUS.get(cls)
        if code is not None:
            return code, str(exc) or cls.__name__
    return grpc.StatusCode.INTERNAL, f"internal error in the engine ({type(exc).__name__})"


__all__ = ["EngineRequestError", "InvalidRequestError", "ContextWindowExceededError", "RequestCancelledError",
           "DeadlineExceededError", "EngineDeadError", "GRPC_STATUS", "grpc_status"]
