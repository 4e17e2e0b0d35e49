"""What the client commands (generate, count-tokens, models) share: connection options, building
an SDK client from them, and the one table from SDK errors to exit codes.

Only the SDK is imported, so these commands work in an install without the [serve] extra.
"""
from __future__ import annotations

import argparse
import contextlib
import pathlib
from collections.abc import Iterator

from minimax_m1 import errors
from minimax_m1.cli.common import (
    EXIT_AUTH,
    EXIT_ERROR,
    EXIT_INVALID_REQUEST,
    EXIT_RATE_LIMITED,
    EXIT_TIMEOUT,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    CliError,
)
from minimax_m1.client import Client

# SDK error class -> exit code; the first matching class (in order) wins, so subclasses first.
EXIT_CODES: tuple[tuple[type[errors.MiniMaxM1Error], int], ...] = (
    (errors.AuthenticationError, EXIT_AUTH),
    (errors.PermissionDeniedError, EXIT_AUTH),
    (errors.RateLimitError, EXIT_RATE_LIMITED),
    (errors.InvalidRequestError, EXIT_INVALID_REQUEST),  # context window, unknown model too
    (errors.ServiceUnavailableError, EXIT_UNAVAILABLE),
    (errors.DeadlineExceededError, EXIT_TIMEOUT),
)


def exit_code_for(error: errors.MiniMaxM1Error) -> int:
    for cls, code in EXIT_CODES:
        if isinstance(error, cls):
            return code
    return EXIT_ERROR


def add_client_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--endpoint",
        help="gateway address: host:port, grpc://host:port (plaintext) or grpcs://host:port (TLS); "
        "default $MINIMAX_M1_ENDPOINT, else localhost:50051",
    )
    group.add_argument(
        "--api-key",
        help="API key; prefer $MINIMAX_M1_API_KEY, which other users cannot see in the process list",
    )
    tls = group.add_mutually_exclusive_group()
    tls.add_argument(
        "--tls", dest="tls", action="store_true", default=None,
        help="use TLS (the default for non-loopback hosts given without a scheme)",
    )  # fmt: skip
    tls.add_argument("--plaintext", dest="tls", action="store_false", help="do not use TLS")
    group.add_argument("--ca-cert", type=pathlib.Path, help="PEM file of the CA that signed the server certificate")
    group.add_argument("--timeout", type=float, help="seconds for the whole call, retries included (default 600)")
    group.add_argument(
        "--max-retries", type=int,
        help="retries on UNAVAILABLE / RESOURCE_EXHAUSTED (default 2; generate retries only with a request id)",
    )  # fmt: skip


def make_client(args: argparse.Namespace, **kwargs) -> Client:
    options = dict(kwargs)
    if args.ca_cert is not None:
        try:
            options["root_certificates"] = args.ca_cert.read_bytes()
        except OSError as exc:
            raise CliError(f"--ca-cert: cannot read {args.ca_cert}: {exc.strerror}", EXIT_USAGE) from None
    if args.timeout is not None:
        options["timeout"] = args.timeout
    if args.max_retries is not None:
        options["max_retries"] = args.max_retries
    try:
        return Client(args.endpoint, args.api_key, tls=args.tls, **options)
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None


@contextlib.contextmanager
def sdk_errors() -> Iterator[None]:
    """Turn SDK errors into one-line CLI errors with the exit code of their kind."""
    try:
        yield
    except errors.MiniMaxM1Error as exc:
        message = str(exc)
        if exc.retry_after is not None:
            message += f" (retry after {exc.retry_after:g} s)"
        if exc.request_id:
            message += f" [request id {exc.request_id}]"
        raise CliError(message, exit_code_for(exc)) from None
