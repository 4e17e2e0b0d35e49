"""Where the embedded default model lives.

The demo model (trained by `minimax-m1 train-demo`, release layout, bf16) is committed under
model_shards/demo_model/ and installed with the package. If it is absent (a trimmed install),
a tiny random checkpoint is made once under the user cache so local commands still run.
"""
from __future__ import annotations

import os
import sys

DEMO_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo_model")


def _cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "minimax-m1", "tiny-random")


def default_model_path() -> str:
    if os.path.isfile(os.path.join(DEMO_DIR, "config.json")):
        return DEMO_DIR
    fallback = _cache_dir()
    if not os.path.isfile(os.path.join(fallback, "config.json")):
        from minimax_m1.model_shards.tiny import make_checkpoint

        print(f"demo model not found at {DEMO_DIR}; making a tiny random checkpoint at {fallback}", file=sys.stderr)
        make_checkpoint(fallback, seed=0)
    return fallback
