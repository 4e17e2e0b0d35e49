"""MiniMax-M1 platform: the SDK, plus lazy access to the model classes.

`import minimax_m1` imports neither torch nor ray. The model classes are resolved on first
attribute access (PEP 562), so SDK users never pay for them.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

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
