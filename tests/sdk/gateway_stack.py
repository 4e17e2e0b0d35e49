"""The real gateway (minimax_m1.gateway) in front of a real upstream server, for SDK tests.

The gateway is a grpc.aio server; it runs here in its own event loop on a background thread, so
sync and async SDK tests alike reach it over a 127.0.0.1 socket. Its ledger is SQLite in a temp dir.
"""
from __future__ import annotations

import asyncio
import pathlib
import threading

from minimax_m1.gateway.config import (
    BillingConfig,
    GatewayConfig,
    QuotaConfig,
    QuotaLimits,
    TlsConfig,
    UpstreamConfig,
)
from minimax_m1.gateway.ledger import UsageRecord
from minimax_m1.gateway.server import start_gateway


class GatewayStack:
    def __init__(
        self,
        upstream_address: str,
        data_dir: pathlib.Path,
        tenants: tuple[tuple[str, QuotaLimits], ...] = (),
        tls: TlsConfig | None = None,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="gateway-loop", daemon=True)
        self._thread.start()
        config = GatewayConfig(
            host="127.0.0.1",
            port=0,
            upstream=UpstreamConfig(target=upstream_address, models_cache_s=60.0),
            quotas=QuotaConfig(tenants=tenants),
            billing=BillingConfig(database=f"sqlite:///{data_dir / 'gateway.sqlite3'}"),
            tls=tls,
            auth_cache_s=0.0,  # a revocation takes effect at once
        )
        try:
            self.handle = self.run(start_gateway(config))
        except BaseException:
            self._stop_loop()
            raise
        self.port = self.handle.port
        self.address = f"127.0.0.1:{self.port}"

    def run(self, coro, timeout: float = 60.0):
        """Run a coroutine on the gateway's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def create_key(self, tenant: str = "acme", models: tuple[str, ...] = ()):
        return self.run(self.handle.keys.create(tenant, models=models))

    def revoke(self, key_id: str) -> None:
        assert self.run(self.handle.keys.revoke(key_id))

    def records(self, tenant: str | None = None) -> list[UsageRecord]:
        return self.run(self.handle.ledger.records(tenant))

    def stop(self) -> None:
        try:
            self.run(self.handle.stop(0))
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()
