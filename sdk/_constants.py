"""Every default of the SDK, in one place."""
from __future__ import annotations

VERSION = "0.1.0"

# Environment variables; a constructor argument always wins over them.
API_KEY_ENV = "MINIMAX_M1_API_KEY"
ENDPOINT_ENV = "MINIMAX_M1_ENDPOINT"

# The gateway's default listen address (python -m minimax_m1.gateway).
DEFAULT_ENDPOINT = "localhost:50051"

# Seconds for one call, all of its retries included. None means no deadline.
DEFAULT_TIMEOUT: float | None = 600.0

DEFAULT_MAX_OUTPUT_TOKENS = 256

# Retries on UNAVAILABLE and RESOURCE_EXHAUSTED: backoff min(INITIAL * 2**n, MAX) s, times a
# jitter factor drawn from [1 - JITTER, 1]; a server's retry-after wins when it lies in
# [0, MAX_RETRY_AFTER] s.
DEFAULT_MAX_RETRIES = 2
INITIAL_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 8.0
RETRY_JITTER = 0.25
MAX_RETRY_AFTER = 60.0

# Trailing metadata key carrying the seconds a client should wait before retrying.
RETRY_AFTER_METADATA_KEY = "retry-after"
AUTHORIZATION_METADATA_KEY = "authorization"

# Hosts that get plaintext when the endpoint names no scheme; every other host gets TLS.
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})

USER_AGENT = "minimax-m1-python"  # sent as grpc.primary_user_agent, with VERSION
