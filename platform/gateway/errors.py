"""Every status the gateway returns, in one table.

A failure inside the gateway raises `GatewayError(reason, message)`. An upstream failure is turned
into a reason by the same table (its right-hand column), so a client sees one vocabulary whether
the gateway or the engine refused the request.
"""
from __future__ import annotations

import enum
import math

import grpc

Code = grpc.StatusCode


class Reason(enum.Enum):
    UNAUTHENTICATED = "unauthenticated"  # missing or unknown API key
    PERMISSION_DENIED = "permission_denied"  # revoked key, model not allowed for the key
    INVALID_ARGUMENT = "invalid_argument"  # malformed request or field
    OUT_OF_RANGE = "out_of_range"  # a number outside its allowed range
    QUOTA = "quota"  # tenant quota refused; carries retry-after
    OVERLOADED = "overloaded"  # upstream refused for capacity; carries retry-after
    UNAVAILABLE = "unavailable"  # upstream unreachable or not serving the application
    DEADLINE_EXCEEDED = "deadline_exceeded"
    CANCELLED = "cancelled"
    INTERNAL = "internal"  # a bug; the message never carries a traceback


# reason -> (status code sent to the client, upstream status codes that map to this reason)
TABLE: dict[Reason, tuple[Code, tuple[Code, ...]]] = {
    Reason.UNAUTHENTICATED: (Code.UNAUTHENTICATED, ()),
    Reason.PERMISSION_DENIED: (Code.PERMISSION_DENIED, ()),
    Reason.INVALID_ARGUMENT: (Code.INVALID_ARGUMENT, (Code.INVALID_ARGUMENT, Code.FAILED_PRECONDITION)),
    Reason.OUT_OF_RANGE: (Code.OUT_OF_RANGE, (Code.OUT_OF_RANGE,)),
    Reason.QUOTA: (Code.RESOURCE_EXHAUSTED, ()),
    Reason.OVERLOADED: (Code.RESOURCE_EXHAUSTED, (Code.RESOURCE_EXHAUSTED,)),
    # Ray Serve's proxy answers NOT_FOUND / UNIMPLEMENTED while the application is not deployed.
    Reason.UNAVAILABLE: (Code.UNAVAILABLE, (Code.UNAVAILABLE, Code.NOT_FOUND, Code.UNIMPLEMENTED)),
    Reason.DEADLINE_EXCEEDED: (Code.DEADLINE_EXCEEDED, (Code.DEADLINE_EXCEEDED,)),
    Reason.CANCELLED: (Code.CANCELLED, (Code.CANCELLED, Code.ABORTED)),
    Reason.INTERNAL: (Code.INTERNAL, (Code.UNKNOWN, Code.INTERNAL, Code.DATA_LOSS, Code.ALREADY_EXISTS,
                                       Code.UNAUTHENTICATED, Code.PERMISSION_DENIED)),
}

_FROM_UPSTREAM: dict[Code, Reason] = {code: reason for reason, (_, ups) in TABLE.items() for code in ups}

# Retry hint for upstream overload, which says nothing more precise.
OVERLOAD_RETRY_AFTER_S = 1.0


class GatewayError(Exception):
    """A request-level failure with its client-facing message."""

    def __init__(self, reason: Reason, message: str, retry_after_s: float | None = None):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retry_after_s = retry_after_s

    @property
    def code(self) -> Code:
        return TABLE[self.reason][0]

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        if self.retry_after_s is None:
            return ()
        # Whole seconds, rounded up, as HTTP's Retry-After; never 0 so clients do back off.
        return (("retry-after", str(max(1, math.ceil(self.retry_after_s)))),)

    @classmethod
    def from_upstream(cls, code: Code, details: str, target: str) -> "GatewayError":
        reason = _FROM_UPSTREAM.get(code, Reason.INTERNAL)
        if reason is Reason.UNAVAILABLE:
            return cls(reason, f"upstream {target} is unavailable ({code.name}): {details}")
        if reason is Reason.OVERLOADED:
            return cls(reason, f"upstream is overloaded: {details}", OVERLOAD_RETRY_AFTER_S)
        if reason is Reason.INTERNAL:
            return cls(reason, f"upstream failed ({code.name}): {details}")
        return cls(reason, details or f"upstream returned {code.name}")
