"""OpenTelemetry traces and metrics for the gateway and the engine (see docs/telemetry.md).

    from minimax_m1.telemetry import TelemetryConfig, setup_telemetry
    telemetry = setup_telemetry(TelemetryConfig.from_env("gateway", prometheus_port=9464))

Hooks: `gateway_telemetry()` (minimax_m1.telemetry.gateway) and `instrument_engine()`
(minimax_m1.telemetry.engine); W3C trace context helpers in minimax_m1.telemetry.propagation.
Importing this package imports no torch and no gRPC server code.
"""
from minimax_m1.telemetry.config import TelemetryConfig
from minimax_m1.telemetry.propagation import extract_context, inject_metadata, with_trace_context
from minimax_m1.telemetry.setup import Telemetry, current, ensure_telemetry, install, setup_telemetry

__all__ = ["TelemetryConfig", "Telemetry", "setup_telemetry", "ensure_telemetry", "current", "install",
           "inject_metadata", "with_trace_context", "extract_context"]
