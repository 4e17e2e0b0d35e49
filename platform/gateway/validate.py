"""Request validation: every field checked, every message names the field and its allowed range.

Numbers outside their range are OUT_OF_RANGE; malformed values are INVALID_ARGUMENT.
"""
from __future__ import annotations

import math
import re
import uuid

from google.protobuf.message import DecodeError

from minimax_m1._generated import generation_pb2 as pb
from minimax_m1.gateway.config import QuotaLimits
from minimax_m1.gateway.errors import GatewayError, Reason

MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256
MAX_STOP_TOKEN_IDS = 64
MAX_TOP_K = 1 << 20
# Tokens a tokenizer may add beyond one per byte (BOS, a SentencePiece dummy prefix, ...).
ESTIMATE_MARGIN_TOKENS = 4
_REQUEST_ID = re.compile(r"[\x21-\x22\x24-\x7e]{1,128}")  # printable ASCII, no space, no '#'


def parse(message_type: type, raw: bytes):
    """Parse raw request bytes; garbage and invalid UTF-8 become INVALID_ARGUMENT, not INTERNAL."""
    msg = message_type()
    try:
        msg.ParseFromString(raw)
    except (DecodeError, ValueError, RuntimeError) as exc:
        detail = "a string field is not valid UTF-8" if "utf-8" in str(exc).lower() else "malformed protobuf"
        raise GatewayError(Reason.INVALID_ARGUMENT,
                           f"request is not a valid {message_type.DESCRIPTOR.full_name}: {detail}") from None
    return msg


def _out_of_range(field: str, value: object, allowed: str, why: str = "") -> GatewayError:
    suffix = f" ({why})" if why else ""
    return GatewayError(Reason.OUT_OF_RANGE, f"{field}={value} is out of range: allowed {allowed}{suffix}")


def _check_int(field: str, value: int, low: int, high: int, why: str = "") -> None:
    if not low <= value <= high:
        raise _out_of_range(field, value, f"[{low}, {high}]", why)


def _check_float(field: str, value: float, low: float, high: float, low_open: bool = False) -> None:
    ok = not math.isnan(value) and (low < value if low_open else low <= value) and value <= high
    if not ok:
        raise _out_of_range(field, value, f"{'(' if low_open else '['}{low:g}, {high:g}]")


def resolve_model(name: str, models: dict[str, pb.ModelInfo]) -> pb.ModelInfo:
    if not models:
        raise GatewayError(Reason.UNAVAILABLE, "upstream serves no models yet")
    if not name:
        return next(iter(models.values()))
    info = models.get(name)
    if info is None:
        raise GatewayError(Reason.INVALID_ARGUMENT,
                           f"model: {name!r} is not served here; available: {', '.join(models)}")
    return info


def check_input(text: str, max_input_bytes: int) -> int:
    """Returns the input's UTF-8 size."""
    size = len(text.encode("utf-8"))
    if size == 0:
        raise GatewayError(Reason.INVALID_ARGUMENT, "input: must not be empty")
    _check_int("input", size, 1, max_input_bytes, "UTF-8 bytes")
    return size


def validate_generate(req: pb.GenerateRequest, model: pb.ModelInfo, limits: QuotaLimits, max_input_bytes: int) -> int:
    """Check every field of a GenerateRequest in place; fills request_id and the effective
    context_window. Returns the input's UTF-8 size."""
    size = check_input(req.input, max_input_bytes)
    model_ctx = model.max_context or (1 << 31) - 1
    tenant_ctx = limits.max_context or model_ctx
    max_ctx = min(model_ctx, tenant_ctx)
    why = "tenant max_context" if tenant_ctx < model_ctx else f"max context of {model.id}"
    _check_int("max_output_tokens", req.max_output_tokens, 1, max_ctx, why)
    _check_int("context_window", req.context_window, 0, max_ctx, f"0 means {max_ctx}; {why}")
    # The upstream enforces the cap on input + output exactly, with the real token count.
    req.context_window = req.context_window or (tenant_ctx if limits.max_context else 0)
    if req.HasField("expert_threshold"):
        _check_float("expert_threshold", req.expert_threshold, 0.0, 1.0)
    if req.HasField("thinking_budget"):
        _check_int("thinking_budget", req.thinking_budget, 0, max_ctx, why)
    s = req.sampling
    if s.HasField("temperature"):
        _check_float("sampling.temperature", s.temperature, 0.0, 2.0)
    if s.HasField("top_p"):
        _check_float("sampling.top_p", s.top_p, 0.0, 1.0, low_open=True)
    if s.HasField("top_k"):
        _check_int("sampling.top_k", s.top_k, 0, MAX_TOP_K)
    _check_int("stop (count)", len(req.stop), 0, MAX_STOP_STRINGS)
    for i, stop in enumerate(req.stop):
        if not stop:
            raise GatewayError(Reason.INVALID_ARGUMENT, f"stop[{i}]: must not be empty")
        _check_int(f"stop[{i}] (length)", len(stop), 1, MAX_STOP_CHARS, "characters")
    _check_int("stop_token_ids (count)", len(req.stop_token_ids), 0, MAX_STOP_TOKEN_IDS)
    if req.request_id:
        if not _REQUEST_ID.fullmatch(req.request_id):
            raise GatewayError(Reason.INVALID_ARGUMENT,
                               "request_id: must be 1-128 printable ASCII characters without spaces or '#'")
    else:
        req.request_id = uuid.uuid4().hex
    return size


def estimate_input_tokens(utf8_bytes: int) -> int:
    """Upper bound of the input's tokens for a byte-level tokenizer: one token per byte at most."""
    return utf8_bytes + ESTIMATE_MARGIN_TOKENS
