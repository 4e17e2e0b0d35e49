"""MiniMax-M1 platform: the SDK, plus lazy access to the model classes.

`import minimax_m1` imports neither torch nor ray. The model classes are resolved on first
attribute access (PEP 562), so SDK users never pay for them.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from minimax_m1._constants import VERSION as __version__
from minimax_m1.client import AsyncClient, AsyncStream, Client, Stream
from minimax_m1.errors import (
    AuthenticationError,
    ContextWindowExceededError,
    DeadlineExceededError,
    InternalServerError,
    InvalidRequestError,
    MiniMaxM1Error,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RequestCancelledError,
    ServiceUnavailableError,
)
from minimax_m1.types import (
    FinishReason,
    GenerateResult,
    LayerRouting,
    ModelInfo,
    StreamChunk,
    Usage,
)

__all__ = [
    "AsyncClient",
    "AsyncStream",
    "AuthenticationError",
    "Client",
    "ContextWindowExceededError",
    "DeadlineExceededError",
    "FinishReason",
    "GenerateResult",
    "InternalServerError",
    "InvalidRequestError",
    "LayerRouting",
    "MiniMaxM1Error",
    "ModelInfo",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "RequestCancelledError",
    "ServiceUnavailableError",
    "Stream",
    "StreamChunk",
    "Usage",
    "MiniMaxM1ForCausalLM",
    "MiniMaxM1Config",
    "MiniMaxM1Tokenizer",
]

# name -> module that defines it; imported on first access.
_LAZY: dict[str, str] = {
    "MiniMaxM1ForCausalLM": "minimax_m1.model_shards.model",
    "MiniMaxM1Config": "minimax_m1.model_shards.config",
    "MiniMaxM1Tokenizer": "minimax_m1.model_shards.tokenizer",
}

if TYPE_CHECKING:  # pragma: no cover
    from minimax_m1.model_shards.config import MiniMaxM1Config
    from minimax_m1.model_shards.model import MiniMaxM1ForCausalLM
    from minimax_m1.model_shards.tokenizer import MiniMaxM1Tokenizer


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'minimax_m1' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))
