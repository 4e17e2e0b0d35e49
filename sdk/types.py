"""Result types returned by `Client` and `AsyncClient`: plain frozen dataclasses, no protobuf."""
from __future__ import annotations

import enum
from dataclasses import dataclass

from minimax_m1._generated import generation_pb2 as pb


class FinishReason(str, enum.Enum):
    """Why generation ended."""

    STOP = "stop"  # end-of-sequence token, stop string or stop token
    LENGTH = "length"  # max_output_tokens reached
    CONTEXT_WINDOW = "context_window"  # context_window reached
    CANCELLED = "cancelled"
    ERROR = "error"

    def __str__(self) -> str:
        return self.value


_FINISH_REASONS: dict[int, FinishReason] = {
    pb.FINISH_REASON_STOP: FinishReason.STOP,
    pb.FINISH_REASON_LENGTH: FinishReason.LENGTH,
    pb.FINISH_REASON_CONTEXT_WINDOW: FinishReason.CONTEXT_WINDOW,
    pb.FINISH_REASON_CANCELLED: FinishReason.CANCELLED,
    pb.FINISH_REASON_ERROR: FinishReason.ERROR,
}


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    # Total (token, expert) activations over all MoE layers, prompt and output.
    expert_activations: int = 0

    @classmethod
    def from_proto(cls, usage: pb.Usage) -> Usage:
        return cls(usage.input_tokens, usage.output_tokens, usage.expert_activations)


@dataclass(frozen=True, slots=True)
class LayerRouting:
    layer: int
    # Activation count per expert; index = expert id.
    expert_counts: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class GenerateResult:
    text: str
    finish_reason: FinishReason | None
    usage: Usage
    request_id: str
    model: str = ""
    # Expert activations per layer; None unless the call set return_routing_log.
    routing_log: tuple[LayerRouting, ...] | None = None


@dataclass(frozen=True, slots=True)
class StreamChunk:
    """One message of a stream: the text since the previous chunk and the usage so far.

    `finish_reason` is set on the last chunk only, where `usage` is final and `routing_log` is
    present if requested.
    """

    text_delta: str
    usage: Usage
    request_id: str
    finish_reason: FinishReason | None = None
    routing_log: tuple[LayerRouting, ...] | None = None


@dataclass(frozen=True, slots=True)
class ModelInfo:
    id: str
    max_context: int
    num_experts: int
    experts_per_token: int


def _routing_log(message, requested: bool) -> tuple[LayerRouting, ...] | None:
    if not requested:
        return None
    return tuple(
        LayerRouting(layer.layer, tuple(layer.expert_counts)) for layer in message.routing_log.layers
    )


def result_from_proto(response: pb.GenerateResponse, routing_requested: bool) -> GenerateResult:
    return GenerateResult(
        text=response.text,
        finish_reason=_FINISH_REASONS.get(response.finish_reason),
        usage=Usage.from_proto(response.usage),
        request_id=response.request_id,
        model=response.model,
        routing_log=_routing_log(response, routing_requested),
    )


def chunk_from_proto(message: pb.GenerateStreamResponse, routing_requested: bool) -> StreamChunk:
    finish_reason = _FINISH_REASONS.get(message.finish_reason)
    return StreamChunk(
        text_delta=message.text_delta,
        usage=Usage.from_proto(message.usage),
        request_id=message.request_id,
        finish_reason=finish_reason,
        routing_log=_routing_log(message, routing_requested and finish_reason is not None),
    )


def model_from_proto(model: pb.ModelInfo) -> ModelInfo:
    return ModelInfo(model.id, model.max_context, model.num_experts, model.experts_per_token)
