"""Shared pieces of the CLI: exit codes and the one-line error type."""
from __future__ import annotations

import sys

EXIT_OK = 0
EXIT_ERROR = 1  # the operation failed (bad checkpoint, server error, ...)
EXIT_USAGE = 2  # bad command line
EXIT_UNAVAILABLE = 3  # the server could not be reached
EXIT_AUTH = 4  # the API key was refused (unauthenticated or not permitted)
EXIT_RATE_LIMITED = 5  # a quota is used up; try again later
EXIT_INVALID_REQUEST = 6  # the server rejected the request's parameters
EXIT_TIMEOUT = 7  # the call's deadline passed


class CliError(Exception):
    """An expected failure: printed as one line `error: ...`, no traceback."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR):
        super().__init__(message)
        self.exit_code = exit_code


def progress(message: str) -> None:
    """Progress for long operations goes to stderr, so stdout stays machine-readable."""
    print(message, file=sys.stderr, flush=True)
