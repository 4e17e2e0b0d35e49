"""Tiny 8-layer, 32-expert checkpoints shared by the sharding tests, and the single-process reference."""
from __future__ import annotations

import pytest

from tests.sharded.drive import PROMPTS, cache_shape_for, greedy

NEW_TOKENS = 5


@pytest.fixture(scope="session")
def release_ckpt(tmp_path_factory) -> str:
    """Release layout, split into several safetensors files with an index (as the 456B release is)."""
    from minimax_m1.model_shards.tiny import make_checkpoint

    path = tmp_path_factory.mktemp("release_ckpt")
    make_checkpoint(str(path), layout="release", seed=3, max_shard_bytes=400_000)
    return str(path)


@pytest.fixture(scope="session")
def transformers_ckpt(tmp_path_factory) -> str:
    """transformers' layout: experts fused as [E, 2I, h] / [E, h, I] tensors."""
    from minimax_m1.model_shards.tiny import make_checkpoint

    path = tmp_path_factory.mktemp("transformers_ckpt")
    make_checkpoint(str(path), layout="transformers", seed=4)
    return str(path)


@pytest.fixture(scope="session")
def cache_shape():
    return cache_shape_for(PROMPTS, NEW_TOKENS)


def reference_generation(path: str, cache_shape):
    from minimax_m1.engine.instance import InProcessModelInstance

    return greedy(InProcessModelInstance.from_pretrained(path, cache_shape, device="cpu").step, new_tokens=NEW_TOKENS)


@pytest.fixture(scope="session")
def release_reference(release_ckpt, cache_shape):
    return reference_generation(release_ckpt, cache_shape)
