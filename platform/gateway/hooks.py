"""Billing hooks: sinks that receive closed usage records from the ledger's outbox.

The hook interface (implement it for a custom sink and register it with `start_gateway(..., hooks=)`):

    class BillingHook(Protocol):
        name: str                                   # unique; outbox rows are kept per hook name
        async def deliver(self, records: Sequence[UsageRecord]) -> None
            # Raise to have the whole batch retried later with exponential backoff.
            # Delivery is at-least-once: a crash after the sink accepted a batch but before the
            # ledger marked it delivered sends it again. Deduplicate on record.record_id, which is
            # unique and stable; the webhook hook sends it as the Idempotency-Key.
        async def aclose(self) -> None

Two hooks ship: `WebhookHook` (JSON POST with retries) and `OtelMetricsHook` (OpenTelemetry
counters following the gen_ai conventions where they exist).
"""
from __future__ import annotations

import asyncio
import http.client
import json
import logging
import ssl
import urllib.parse
from typing import Any, Protocol, Sequence

from minimax_m1.gateway.config import HookConfig
from minimax_m1.gateway.ledger import Ledger, UsageRecord

log = logging.getLogger(__name__)


class BillingHook(Protocol):
    name: str

    async def deliver(self, records: Sequence[UsageRecord]) -> None: ...

    async def aclose(self) -> None: ...


class WebhookError(Exception):
    pass


class WebhookHook:
    """POSTs `{"records": [UsageRecord...]}` as JSON; any 2xx means accepted.

    Headers: Content-Type: application/json, Idempotency-Key: the record ids joined by commas
    (one id when batch_size is 1), plus the configured headers (e.g. Authorization).
    """

    def __init__(self, config: HookConfig):
        self.name = config.name
        self._config = config
        url = urllib.parse.urlsplit(config.url or "")
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"billing.hooks.url: must be an http(s) URL, got {config.url!r}")
        self._url = url

    def _post(self, body: bytes, idempotency_key: str) -> None:
        url = self._url
        conn: http.client.HTTPConnection
        if url.scheme == "https":
            conn = http.client.HTTPSConnection(url.hostname, url.port, timeout=self._config.timeout_s,
                                               context=ssl.create_default_context())
        else:
            conn = http.client.HTTPConnection(url.hostname, url.port, timeout=self._config.timeout_s)
        try:
            headers = {"Content-Type": "application/json", "Idempotency-Key": idempotency_key,
                       **dict(self._config.headers)}
            conn.request("POST", url.path or "/", body=body, headers=headers)
            resp = conn.getresponse()
            resp.read()
            if not 200 <= resp.status < 300:
                raise WebhookError(f"webhook {self.name} answered HTTP {resp.status}")
        finally:
            conn.close()

    async def deliver(self, records: Sequence[UsageRecord]) -> None:
        body = json.dumps({"records": [r.to_json() for r in records]}).encode()
        # http.client blocks; delivery is off the request path, so a worker thread is fine.
        await asyncio.to_thread(self._post, body, ",".join(r.record_id for r in records))

    async def aclose(self) -> None:
        return None


class OtelMetricsHook:
    """Counts billed usage as OpenTelemetry metrics.

    - gen_ai.client.token.usage (histogram, {token}; gen_ai.token.type = input | output)
    - minimax_m1.billing.requests (counter; status)
    - minimax_m1.billing.expert_activations (counter)
    - minimax_m1.billing.compute_time (counter, s)
    Attributes on all: tenant, gen_ai.request.model. Uses the global MeterProvider unless given one.
    """

    def __init__(self, config: HookConfig, meter_provider: Any = None):
        from opentelemetry import metrics

        from minimax_m1.telemetry import names

        self.name = config.name
        provider = meter_provider or metrics.get_meter_provider()
        meter = provider.get_meter("minimax_m1.gateway.billing")
        self._tokens = names.create(meter, names.TOKEN_USAGE)
        # counters are Tallies: summed here, read when OpenTelemetry collects (names.Tally)
        self._requests = names.create(meter, names.BILLING_REQUESTS)
        self._experts = names.create(meter, names.BILLING_EXPERT_ACTIVATIONS)
        self._compute = names.create(meter, names.BILLING_COMPUTE_TIME)

    async def deliver(self, records: Sequence[UsageRecord]) -> None:
        for r in records:
            attrs = {"tenant": r.tenant, "gen_ai.request.model": r.model}
            self._tokens.record(r.input_tokens, {**attrs, "gen_ai.token.type": "input"})
            self._tokens.record(r.output_tokens, {**attrs, "gen_ai.token.type": "output"})
            self._requests.add(1, {**attrs, "status": r.status})
            self._experts.add(r.expert_activations, attrs)
            self._compute.add(r.compute_ms / 1000.0, attrs)

    async def aclose(self) -> None:
        return None


def build_hook(config: HookConfig, meter_provider: Any = None) -> BillingHook:
    if config.kind == "webhook":
        return WebhookHook(config)
    return OtelMetricsHook(config, meter_provider)


class OutboxDelivery:
    """One task per hook: claim due outbox rows, deliver them, mark them or back off."""

    def __init__(self, ledger: Ledger, hook: BillingHook, batch_size: int = 100, poll_s: float = 0.2,
                 backoff_base_s: float = 0.5, backoff_max_s: float = 60.0, lease_s: float = 60.0):
        self._ledger = ledger
        self.hook = hook
        self._batch_size = batch_size
        self._poll_s = poll_s
        self._backoff = (backoff_base_s, backoff_max_s)
        self._lease_s = lease_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.delivered = 0
        self.failures = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"outbox-{self.hook.name}")

    def notify(self) -> None:
        """A record was queued: deliver soon rather than at the next poll."""
        self._wake.set()

    async def drain_once(self) -> int:
        """Deliver one batch that is due; returns how many records were delivered."""
        items = await self._ledger.claim(self.hook.name, self._batch_size, self._lease_s)
        if not items:
            return 0
        try:
            await self.hook.deliver([i.record for i in items])
        except Exception as exc:  # any sink failure means: retry this batch later
            self.failures += 1
            delay = await self._ledger.failed(items, f"{type(exc).__name__}: {exc}", *self._backoff)
            log.warning("billing hook %s failed (%s); retry in %.2fs", self.hook.name, exc, delay)
            return 0
        await self._ledger.delivered([i.outbox_id for i in items])
        self.delivered += len(items)
        return len(items)

    async def _run(self) -> None:
        while True:
            self._wake.clear()  # before draining, so a notify during the drain is not lost
            try:
                if await self.drain_once() >= self._batch_size:
                    continue  # more may be due right away
            except asyncio.CancelledError:
                raise
            except Exception:  # the database hiccuped; keep the loop alive
                log.exception("billing outbox for %s", self.hook.name)
            try:
                await asyncio.wait_for(self._wake.wait(), self._poll_s)
            except asyncio.TimeoutError:
                pass

    async def stop(self, flush_timeout_s: float = 2.0) -> None:
        """Stop the loop after one last attempt to deliver what is due."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        try:
            await asyncio.wait_for(self._flush(), flush_timeout_s)
        except (asyncio.TimeoutError, Exception):
            pass  # left in the outbox: the next start delivers it
        await self.hook.aclose()

    async def _flush(self) -> None:
        while await self.drain_once():
            pass
