"""The gRPC gateway in front of the engine: API keys, validation, quotas, billing (DESIGN.md section 5).

Public entry points (stable):
    minimax_m1.gateway.config.GatewayConfig           the validated configuration
    minimax_m1.gateway.server.start_gateway(config)   -> handle (handle.port, await handle.stop(grace))
    minimax_m1.gateway.keys.ensure_local_key(store, env_key) -> key to print once, or None
    python -m minimax_m1.gateway --config FILE        the gateway as a process
Nothing here imports torch or ray.
"""
