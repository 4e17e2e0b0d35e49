"""Requests as the engine sees them: validated parameters, and the Sequence that carries one
request through scheduling (its tokens, its slot and KV blocks, its sampler and stop state).
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

import torch

from minimax_m1.engine.errors import InvalidRequestError
from minimax_m1.model_shards.sampling import SamplingParams


class FinishReason(enum.IntEnum):
    """Same numbers as minimax.m1.v1.FinishReason."""

    STOP = 1  # end-of-sequence token, stop token or stop string
    LENGTH = 2  # max_output_tokens reached
    CONTEXT_WINDOW = 3  # input + output reached the context window
    CANCELLED = 4
    ERROR = 5


@dataclass(frozen=True, slots=True)
class RequestParams:
    max_output_tokens: int = 16
    context_window: int = 0  # cap on input + output tokens; 0 = the model's (and the cache's) limit
    expert_threshold: float | None = None  # dynamic top-p routing in [0, 1]; None = exact top-k
    thinking_budget: int = 0  # cap on tokens inside <think>...</think>; 0 = no cap
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    return_routing_log: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.max_output_tokens, int) or self.max_output_tokens < 1:
            raise InvalidRequestError(f"max_output_tokens must be >= 1, got {self.max_output_tokens!r}")
        if self.context_window < 0:
            raise InvalidRequestError(f"context_window must be >= 0, got {self.context_window}")
        t = self.expert_threshold
        if t is not None and not (0.0 <= t <= 1.0):  # also rejects NaN
            raise InvalidRequestError(f"expert_threshold must be in [0, 1], got {t}")
        if self.thinking_budget < 0:
            raise InvalidRequestError(f"thinking_budget must be >= 0, got {self.thinking_budget}")
        if not (0.0 <= self.temperature <= 2.0):
            raise InvalidRequestError(f"sampling.temperature must be in [0, 2], got {self.temperature}")
        if not (0.0 < self.top_p <= 1.0):
            raise InvalidRequestError(f"sampling.top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise InvalidRequestError(f"sampling.top_k must be >= 0, got {self.top_k}")
        if any(not s for s in self.stop):
            raise InvalidRequestError("stop strings must not be empty")
        if any(t < 0 for t in self.stop_token_ids):
            raise InvalidRequestError("stop_token_ids must be >= 0")

    @property
    def sampling(self) -> SamplingParams:
        return SamplingParams(self.temperature, self.top_p, self.top_k, self.seed)


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    """One request inside the engine. Tokens [0, num_computed) are in the cache; the rest are fed
    by the next steps (a prompt, the last sampled token, or everything after a preemption)."""

    request_id: str
    prompt_ids: list[int]
    params: RequestParams
    arrival: int  # admission order; preemption and re-admission keep it, so nobody is overtaken
    max_total_tokens: int  # the effective context window (request, model and cache limits)
    output_ids: list[int] = field(default_factory=list)
    num_computed: int = 0
    # Tokens whose expert activations were already counted: a recompute after preemption runs up
    # to here again without counting twice.
    num_counted: int = 0
    slot: int | None = None
    blocks: list[int] = field(default_factory=list)
    status: Status = Status.WAITING
    finish_reason: FinishReason | None = None
    generator: torch.Generator | None = None
    thinking: bool = False
    thinking_tokens: int = 0
    expert_activations: int = 0
    routing: torch.Tensor | None = None  # [L, E] int64 activation counts, when requested
    num_preemptions: int = 0

    def __post_init__(self) -> None:
        self.generator = self.params.sampling.make_generator()

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    def token_slice(self, start: int, end: int) -> list[int]:
        p = len(self.prompt_ids)
        if end <= p:
            return self.prompt_ids[start:end]
        if start >= p:
            return self.output_ids[start - p:end - p]
        return self.prompt_ids[start:] + self.output_ids[:end - p]

    @property
    def expert_threshold_value(self) -> float:
        t = self.params.expert_threshold
        return math.nan if t is None else t

    @property
    def finished(self) -> bool:
        return self.status is Status.FINISHED


__all__ = ["FinishReason", "RequestParams", "Sequence", "Status"]
