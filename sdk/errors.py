"""Typed errors: one class per gRPC status, all under `MiniMaxM1Error`.

A failed unary call, a failed stream (before or after its first chunk) and a failed retry all
raise the same class for the same status, so callers write one `except` per situation.
"""
from __future__ import annotations

import grpc

from minimax_m1._constants import RETRY_AFTER_METADATA_KEY


class MiniMaxM1Error(Exception):
    """Base of every error the SDK raises.

    `code` is the gRPC status (None when the SDK rejected the call before sending it),
    `message` the server's readable detail, `request_id` the id the call was sent with, and
    `retry_after` the seconds the server asked us to wait (its `retry-after` metadata), if any.
    """

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.request_id = request_id
        self.retry_after = retry_after

    def __str__(self) -> str:
        status = f"{self.code.name}: " if self.code is not None else ""
        return f"{status}{self.message}"


class AuthenticationError(MiniMaxM1Error):
    """UNAUTHENTICATED: the API key is missing, unknown or revoked."""


class PermissionDeniedError(MiniMaxM1Error):
    """PERMISSION_DENIED: the key is valid but may not do this (model, tenant, ...)."""


class RateLimitError(MiniMaxM1Error):
    """RESOURCE_EXHAUSTED: a quota is used up. `retry_after` is the server's hint in seconds."""


class InvalidRequestError(MiniMaxM1Error):
    """INVALID_ARGUMENT / FAILED_PRECONDITION: fix the request before sending it again."""


class ContextWindowExceededError(InvalidRequestError):
    """OUT_OF_RANGE: input plus output would not fit the context window.

    The gateway uses OUT_OF_RANGE for every number outside its allowed range (max_output_tokens
    above the context, temperature above 2, ...); the message names the field.
    """


class NotFoundError(InvalidRequestError):
    """NOT_FOUND: for example an unknown model name."""


class ServiceUnavailableError(MiniMaxM1Error):
    """UNAVAILABLE: the endpoint cannot be reached or is shedding load; safe to retry."""


class DeadlineExceededError(MiniMaxM1Error):
    """DEADLINE_EXCEEDED: the call's timeout passed before it finished."""


class RequestCancelledError(MiniMaxM1Error):
    """CANCELLED: the call was cancelled (by this client or by the server)."""


class InternalServerError(MiniMaxM1Error):
    """INTERNAL, UNKNOWN, DATA_LOSS, UNIMPLEMENTED, ...: a fault on the server's side."""


# The one table from status to exception class. Codes absent here map to InternalServerError.
STATUS_TO_ERROR: dict[grpc.StatusCode, type[MiniMaxM1Error]] = {
    grpc.StatusCode.UNAUTHENTICATED: AuthenticationError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: RateLimitError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequestError,
    grpc.StatusCode.FAILED_PRECONDITION: InvalidRequestError,
    grpc.StatusCode.OUT_OF_RANGE: ContextWindowExceededError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.UNAVAILABLE: ServiceUnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.CANCELLED: RequestCancelledError,
}

# Statuses a retry can cure: the server was not there, or asked us to come back later.
RETRYABLE_STATUSES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})


def parse_retry_after(metadata) -> float | None:
    """The `retry-after` value in seconds from (trailing) metadata, or None if absent or bad."""
    for key, value in metadata or ():
        if key.lower() != RETRY_AFTER_METADATA_KEY:
            continue
        try:
            seconds = float(value.decode() if isinstance(value, bytes) else value)
        except ValueError:
            return None
        return seconds if seconds >= 0 else None
    return None


def from_rpc_error(exc: grpc.RpcError, request_id: str | None = None) -> MiniMaxM1Error:
    """Convert a failed sync or asyncio gRPC call into its typed error."""
    code = exc.code()
    message = exc.details() or (code.name if code is not None else "unknown error")
    cls = STATUS_TO_ERROR.get(code, InternalServerError)
    retry_after = parse_retry_after(exc.trailing_metadata())
    return cls(message, code=code, request_id=request_id, retry_after=retry_after)
