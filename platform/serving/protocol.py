"""Between the public proto (minimax.m1.v1) and the engine's types; nothing else."""
from __future__ import annotations

from minimax_m1._generated import generation_pb2 as pb
from minimax_m1.engine.engine import RequestOutput
from minimax_m1.engine.request import RequestParams


def params_from_proto(req: pb.GenerateRequest) -> RequestParams:
    """RequestParams from a GenerateRequest; raises InvalidRequestError naming the field."""
    s = req.sampling
    return RequestParams(
        max_output_tokens=req.max_output_tokens,
        context_window=req.context_window,
        expert_threshold=req.expert_threshold if req.HasField("expert_threshold") else None,
        thinking_budget=req.thinking_budget if req.HasField("thinking_budget") else 0,
        temperature=s.temperature if s.HasField("temperature") else 0.0,
        top_p=s.top_p if s.HasField("top_p") else 1.0,
        top_k=s.top_k if s.HasField("top_k") else 0,
        seed=s.seed if s.HasField("seed") else None,
        stop=tuple(req.stop),
        stop_token_ids=tuple(req.stop_token_ids),
        return_routing_log=req.return_routing_log,
    )


def usage(out: RequestOutput) -> pb.Usage:
    return pb.Usage(input_tokens=out.input_tokens, output_tokens=out.output_tokens,
                    expert_activations=out.expert_activations)


def routing_log(out: RequestOutput) -> pb.RoutingLog | None:
    if out.routing is None:
        return None
    return pb.RoutingLog(layers=[pb.LayerRouting(layer=i, expert_counts=row) for i, row in enumerate(out.routing)])


def stream_message(request_id: str, out: RequestOutput) -> pb.GenerateStreamResponse:
    msg = pb.GenerateStreamResponse(request_id=request_id, text_delta=out.text_delta, usage=usage(out))
    if out.finished:
        msg.finish_reason = int(out.finish_reason)
        log = routing_log(out)
        if log is not None:
            msg.routing_log.CopyFrom(log)
    return msg


def unary_response(request_id: str, model: str, text: str, last: RequestOutput) -> pb.GenerateResponse:
    msg = pb.GenerateResponse(request_id=request_id, model=model, text=text,
                              finish_reason=int(last.finish_reason), usage=usage(last))
    log = routing_log(last)
    if log is not None:
        msg.routing_log.CopyFrom(log)
    return msg
