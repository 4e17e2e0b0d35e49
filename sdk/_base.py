"""What `Client` and `AsyncClient` share: settings, request building, metadata and retry policy.

The twins differ only in how they wait (time.sleep vs asyncio.sleep) and in the grpc channel
flavour they open; everything else is decided here, once.
"""
from __future__ import annotations

import os
import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from minimax_m1 import _constants as C
from minimax_m1._generated import generation_pb2 as pb
from minimax_m1.errors import RETRYABLE_STATUSES, InvalidRequestError, MiniMaxM1Error


class _NotGiven:
    """Marks an argument the caller left out, where None is a meaningful value."""

    _instance: _NotGiven | None = None

    def __new__(cls) -> _NotGiven:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NOT_GIVEN"

    def __bool__(self) -> bool:
        return False


NOT_GIVEN = _NotGiven()


@dataclass(frozen=True, slots=True)
class Target:
    """Where to connect and whether to use TLS, resolved from the endpoint string."""

    address: str
    tls: bool


def resolve_target(endpoint: str, tls: bool | None) -> Target:
    """Parse `endpoint` ("host:port", "grpc://host:port", "grpcs://host:port", "https://...").

    `grpcs://` and `https://` mean TLS, `grpc://` and `http://` mean plaintext. Without a
    scheme, loopback hosts get plaintext and every other host TLS. An explicit `tls` wins.
    """
    if not endpoint or not endpoint.strip():
        raise ValueError("endpoint must not be empty")
    endpoint = endpoint.strip()
    scheme, sep, rest = endpoint.partition("://")
    if sep:
        schemes = {"grpcs": True, "https": True, "grpc": False, "http": False}
        if scheme.lower() not in schemes:
            raise ValueError(f"endpoint scheme {scheme!r} is not one of {sorted(schemes)}")
        address, inferred = rest.rstrip("/"), schemes[scheme.lower()]
    else:
        address = endpoint
        inferred = _host(address) not in C.LOOPBACK_HOSTS and not address.startswith("unix:")
    if not address:
        raise ValueError(f"endpoint {endpoint!r} names no host")
    return Target(address, inferred if tls is None else tls)


def _host(address: str) -> str:
    if address.startswith("["):  # [::1]:443
        return address[: address.find("]") + 1]
    return address.rsplit(":", 1)[0] if address.count(":") == 1 else address


class BaseClient:
    """Settings and policy shared by the sync and async clients.

    endpoint: "host:port" or with a scheme (grpc://, grpcs://, https://); default from
        MINIMAX_M1_ENDPOINT, else localhost:50051. Loopback hosts without a scheme use plaintext,
        all others TLS; `tls` overrides, `root_certificates` (PEM bytes) trusts a private CA.
    api_key: sent as `authorization: Bearer <key>`; default from MINIMAX_M1_API_KEY.
    timeout: seconds for each call, retries included (None: no deadline); default 600.
    max_retries: retries on UNAVAILABLE / RESOURCE_EXHAUSTED; default 2.
    auto_request_id: give every generate call a fresh request id, which makes it retryable.
    model: default model name; empty means the endpoint's default.
    """

    def __init__(
        self,
        endpoint: str | None = None,
        api_key: str | None = None,
        *,
        tls: bool | None = None,
        root_certificates: bytes | None = None,
        timeout: float | None | _NotGiven = NOT_GIVEN,
        max_retries: int = C.DEFAULT_MAX_RETRIES,
        auto_request_id: bool = False,
        model: str = "",
    ) -> None:
        # Constructor arguments win over the environment; these two reads are the only ones.
        endpoint = endpoint or os.environ.get(C.ENDPOINT_ENV) or C.DEFAULT_ENDPOINT
        self.api_key = api_key if api_key is not None else os.environ.get(C.API_KEY_ENV)
        if self.api_key and (not self.api_key.isprintable() or " " in self.api_key):
            raise ValueError("api_key must be printable characters without spaces")
        if root_certificates is not None and tls is None:
            tls = True
        self.target = resolve_target(endpoint, tls)
        self.endpoint = endpoint
        self._root_certificates = root_certificates
        self.timeout = C.DEFAULT_TIMEOUT if timeout is NOT_GIVEN else timeout
        if self.timeout is not None and self.timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds or None, got {self.timeout}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.max_retries = max_retries
        # A request id makes a generate call idempotent (the gateway bills it once), hence
        # retryable; with auto_request_id every generate call gets one.
        self.auto_request_id = auto_request_id
        self.model = model
        self._metadata: tuple[tuple[str, str], ...] = (
            ((C.AUTHORIZATION_METADATA_KEY, f"Bearer {self.api_key}"),) if self.api_key else ()
        )
        self._open()

    def _open(self) -> None:
        """Open the channel (the twins differ in its flavour and in when they open it)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        tls = "tls" if self.target.tls else "plaintext"
        return f"{type(self).__name__}({self.target.address!r}, {tls})"

    # -- channel ---------------------------------------------------------------------------

    def _channel_options(self) -> list[tuple[str, object]]:
        return [("grpc.primary_user_agent", f"{C.USER_AGENT}/{C.VERSION}")]

    def _channel_credentials(self) -> grpc.ChannelCredentials | None:
        if not self.target.tls:
            return None
        return grpc.ssl_channel_credentials(root_certificates=self._root_certificates)

    # -- requests --------------------------------------------------------------------------

    def _generate_request(
        self,
        input: str,
        *,
        model: str | None,
        max_output_tokens: int,
        context_window: int | None,
        expert_threshold: float | None,
        thinking_budget: int | None,
        temperature: float | None,
        top_p: float | None,
        top_k: int | None,
        seed: int | None,
        stop: str | Sequence[str] | None,
        stop_token_ids: Sequence[int] | None,
        return_routing_log: bool,
        request_id: str | None,
    ) -> pb.GenerateRequest:
        sampling = {
            name: value
            for name, value in (
                ("temperature", temperature),
                ("top_p", top_p),
                ("top_k", top_k),
                ("seed", seed),
            )
            if value is not None
        }
        if request_id is None and self.auto_request_id:
            request_id = uuid.uuid4().hex
        if isinstance(stop, str):
            stop = [stop]
        try:
            request = pb.GenerateRequest(
                model=self.model if model is None else model,
                input=input,
                max_output_tokens=max_output_tokens,
                context_window=context_window or 0,
                sampling=pb.SamplingParams(**sampling),
                stop=list(stop or ()),
                stop_token_ids=list(stop_token_ids or ()),
                return_routing_log=return_routing_log,
                request_id=request_id or "",
            )
            if expert_threshold is not None:
                request.expert_threshold = expert_threshold
            if thinking_budget is not None:
                request.thinking_budget = thinking_budget
        except (TypeError, ValueError) as exc:
            # Wrong types or values outside a field's range never reach the wire.
            raise InvalidRequestError(f"invalid request: {exc}", request_id=request_id) from None
        return request

    def _count_tokens_request(self, input: str, model: str | None) -> pb.CountTokensRequest:
        try:
            return pb.CountTokensRequest(model=self.model if model is None else model, input=input)
        except (TypeError, ValueError) as exc:
            raise InvalidRequestError(f"invalid request: {exc}") from None

    # -- deadlines and retries -------------------------------------------------------------

    def _deadline(self, timeout: float | None | _NotGiven) -> float | None:
        """Monotonic time by which the whole call, retries included, must be done."""
        timeout = self.timeout if timeout is NOT_GIVEN else timeout
        if timeout is None:
            return None
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds or None, got {timeout}")
        return time.monotonic() + timeout

    @staticmethod
    def _remaining(deadline: float | None) -> float | None:
        # A tiny positive floor: grpc turns a non-positive timeout into an immediate
        # DEADLINE_EXCEEDED, which is what an exhausted deadline should produce anyway.
        return None if deadline is None else max(deadline - time.monotonic(), 1e-3)

    def _retries_for(self, max_retries: int | None | _NotGiven, idempotent: bool) -> int:
        if not idempotent:
            return 0
        retries = self.max_retries if max_retries is NOT_GIVEN or max_retries is None else max_retries
        if retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {retries}")
        return retries

    @staticmethod
    def _retry_delay(
        error: MiniMaxM1Error, attempt: int, retries: int, deadline: float | None
    ) -> float | None:
        """Seconds to wait before retry number `attempt + 1`, or None to give up and raise."""
        if attempt >= retries or error.code not in RETRYABLE_STATUSES:
            return None
        if error.retry_after is not None and 0 <= error.retry_after <= C.MAX_RETRY_AFTER:
            delay = error.retry_after
        else:
            backoff = min(C.INITIAL_RETRY_DELAY * 2**attempt, C.MAX_RETRY_DELAY)
            delay = backoff * (1 - C.RETRY_JITTER * random.random())
        if deadline is not None and time.monotonic() + delay >= deadline:
            return None  # the retry could not finish in time; the caller sees the real cause
        return delay
