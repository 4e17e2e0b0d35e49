"""Per-tenant quotas, with two stores of identical semantics: in-memory and Redis.

Semantics (both stores):
- requests_per_minute and tokens_per_minute count fixed UTC minute windows (epoch seconds // 60).
  A request is admitted only if, after adding it, every counter stays within its limit.
- tokens_per_minute and budget_tokens are charged the request's reservation (an upper bound of
  input tokens + max_output_tokens) at admission; `settle` replaces the reservation with the
  tokens actually used, in the window and period where it was reserved.
- max_concurrent counts calls in flight as leases; a lease expires after `lease_s`, so a crashed
  gateway does not hold slots forever.
- budget_tokens counts per UTC billing period (hour, day or month).
A refusal names the limit and says when to retry: the end of the window or period, or one second
for concurrency. Static limits (max_context, a reservation larger than a limit) are checked by the
gateway before the store, because no retry can help them.

Check-and-charge is atomic: the memory store never awaits inside it (one event loop), the Redis
store runs one Lua script.
"""
from __future__ import annotations

import abc
import asyncio
import calendar
import datetime as dt
import functools
import pathlib
from dataclasses import dataclass
from typing import Any

from minimax_m1.gateway.config import QuotaLimits

CONCURRENCY_RETRY_S = 1.0
WINDOW_S = 60


@dataclass(frozen=True, slots=True)
class Admission:
    """A granted request: what `settle` needs to undo its reservation."""

    tenant: str
    request_id: str
    reserved: int
    window: int
    period: str


@dataclass(frozen=True, slots=True)
class Refusal:
    limit: str  # the QuotaLimits field that refused
    value: int  # its configured value
    retry_after_s: float


def period_bounds(period: str, now: float) -> tuple[str, float]:
    """(key, end time) of the billing period that contains `now` (UTC)."""
    # Every period starts on a UTC hour, so the answer is the same for a whole hour: memoised.
    key, _, end = _period_of_hour(period, int(now // 3600))
    return key, end


@functools.lru_cache(maxsize=64)
def _period_of_hour(period: str, hour: int) -> tuple[str, float, float]:
    return _compute_period(period, hour * 3600.0)


def _compute_period(period: str, now: float) -> tuple[str, float, float]:
    t = dt.datetime.fromtimestamp(now, dt.timezone.utc)
    if period == "hour":
        start = t.replace(minute=0, second=0, microsecond=0)
        end = start + dt.timedelta(hours=1)
    elif period == "day":
        start = t.replace(hour=0, minute=0, second=0, microsecond=0)
        end = start + dt.timedelta(days=1)
    else:
        start = t.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = start + dt.timedelta(days=calendar.monthrange(t.year, t.month)[1])
    return f"{period}:{start.strftime('%Y%m%dT%H')}", start.timestamp(), end.timestamp()


def period_start(period: str, now: float) -> float:
    return _compute_period(period, now)[1]


def _refusal(limit: str, limits: QuotaLimits, now: float, window: int, period_end: float) -> Refusal:
    if limit == "max_concurrent":
        retry = CONCURRENCY_RETRY_S
    elif limit == "budget_tokens":
        retry = period_end - now
    else:
        retry = (window + 1) * WINDOW_S - now
    return Refusal(limit, getattr(limits, limit), max(retry, 0.001))


class QuotaStore(abc.ABC):
    def __init__(self, lease_s: float):
        self.lease_s = lease_s

    @abc.abstractmethod
    async def admit(self, tenant: str, request_id: str, reserve: int, limits: QuotaLimits,
                    now: float) -> Admission | Refusal: ...

    @abc.abstractmethod
    async def settle(self, admission: Admission, used: int) -> None:
        """Free the concurrency slot and replace the reservation by `used` tokens."""

    @abc.abstractmethod
    async def seed_budget(self, tenant: str, period: str, used: int) -> None:
        """Start a period's counter at `used` (from the ledger) unless the store already has one."""

    async def close(self) -> None:
        return None


class MemoryQuotaStore(QuotaStore):
    """One process's quotas: the embedded default."""

    def __init__(self, lease_s: float = 900.0):
        super().__init__(lease_s)
        self._inflight: dict[str, dict[str, float]] = {}  # tenant -> request id -> lease expiry
        self._requests: dict[tuple[str, int], int] = {}  # (tenant, window) -> requests
        self._tokens: dict[tuple[str, int], int] = {}  # (tenant, window) -> tokens
        self._budget: dict[tuple[str, str], int] = {}  # (tenant, period key) -> tokens
        self._last_window = 0

    def _prune(self, window: int) -> None:
        # Windows older than the previous one can no longer be settled into (as Redis' 120 s TTL).
        if window != self._last_window:
            self._last_window = window
            for table in (self._requests, self._tokens):
                for key in [k for k in table if k[1] < window - 1]:
                    del table[key]

    async def admit(self, tenant: str, request_id: str, reserve: int, limits: QuotaLimits,
                    now: float) -> Admission | Refusal:
        window = int(now // WINDOW_S)
        period, period_end = period_bounds(limits.budget_period, now)
        self._prune(window)
        inflight = self._inflight.setdefault(tenant, {})
        for rid in [r for r, exp in inflight.items() if exp <= now]:
            del inflight[rid]
        wkey, pkey = (tenant, window), (tenant, period)
        refused = None
        if limits.max_concurrent and len(inflight) >= limits.max_concurrent:
            refused = "max_concurrent"
        elif limits.requests_per_minute and self._requests.get(wkey, 0) + 1 > limits.requests_per_minute:
            refused = "requests_per_minute"
        elif limits.tokens_per_minute and self._tokens.get(wkey, 0) + reserve > limits.tokens_per_minute:
            refused = "tokens_per_minute"
        elif limits.budget_tokens and self._budget.get(pkey, 0) + reserve > limits.budget_tokens:
            refused = "budget_tokens"
        if refused:
            return _refusal(refused, limits, now, window, period_end)
        inflight[request_id] = now + self.lease_s
        self._requests[wkey] = self._requests.get(wkey, 0) + 1
        self._tokens[wkey] = self._tokens.get(wkey, 0) + reserve
        self._budget[pkey] = self._budget.get(pkey, 0) + reserve
        return Admission(tenant, request_id, reserve, window, period)

    async def settle(self, admission: Admission, used: int) -> None:
        self._inflight.get(admission.tenant, {}).pop(admission.request_id, None)
        delta = used - admission.reserved
        wkey, pkey = (admission.tenant, admission.window), (admission.tenant, admission.period)
        if wkey in self._tokens:
            self._tokens[wkey] += delta
        if pkey in self._budget:
            self._budget[pkey] += delta

    async def seed_budget(self, tenant: str, period: str, used: int) -> None:
        self._budget.setdefault((tenant, period), used)

    def usage(self, tenant: str, now: float, period: str = "month") -> dict[str, int]:
        """Current counters, for tests and debugging."""
        window = int(now // WINDOW_S)
        return {"in_flight": len(self._inflight.get(tenant, {})),
                "requests": self._requests.get((tenant, window), 0),
                "tokens": self._tokens.get((tenant, window), 0),
                "budget": self._budget.get((tenant, period_bounds(period, now)[0]), 0)}


_LUA_DIR = pathlib.Path(__file__).parent


class RedisQuotaStore(QuotaStore):
    """Quotas shared by gateway replicas. Keys share the `{tenant}` hash tag (Redis Cluster safe)."""

    def __init__(self, url: str, lease_s: float = 900.0, prefix: str = "mm1:quota"):
        import redis.asyncio as aioredis  # imported here: the memory store needs no redis package

        super().__init__(lease_s)
        self._redis = aioredis.Redis.from_url(url)
        self._prefix = prefix
        self._admit = self._redis.register_script((_LUA_DIR / "quota_admit.lua").read_text())
        self._settle = self._redis.register_script((_LUA_DIR / "quota_settle.lua").read_text())

    def _keys(self, tenant: str, window: int, period: str) -> list[str]:
        base = f"{self._prefix}:{{{tenant}}}"
        return [f"{base}:inflight", f"{base}:rpm:{window}", f"{base}:tpm:{window}", f"{base}:budget:{period}"]

    async def admit(self, tenant: str, request_id: str, reserve: int, limits: QuotaLimits,
                    now: float) -> Admission | Refusal:
        window = int(now // WINDOW_S)
        period, period_end = period_bounds(limits.budget_period, now)
        budget_ttl = int(period_end - now) + 86400  # outlives the period, so settle still finds it
        script = asyncio.ensure_future(self._admit(
            keys=self._keys(tenant, window, period),
            args=[repr(now), request_id, repr(now + self.lease_s), reserve, limits.max_concurrent,
                  limits.requests_per_minute, limits.tokens_per_minute, limits.budget_tokens,
                  2 * WINDOW_S, budget_ttl, int(self.lease_s) + 1]))
        try:
            result: Any = await asyncio.shield(script)
        except asyncio.CancelledError:
            # The caller went away while the script ran: give back what it may have charged.
            if await script in (b"ok", "ok"):
                await self.settle(Admission(tenant, request_id, reserve, window, period), 0)
            raise
        refused = result.decode() if isinstance(result, bytes) else str(result)
        if refused != "ok":
            return _refusal(refused, limits, now, window, period_end)
        return Admission(tenant, request_id, reserve, window, period)

    async def settle(self, admission: Admission, used: int) -> None:
        keys = self._keys(admission.tenant, admission.window, admission.period)
        await self._settle(keys=[keys[0], keys[2], keys[3]], args=[admission.request_id, used - admission.reserved])

    async def seed_budget(self, tenant: str, period: str, used: int) -> None:
        key = self._keys(tenant, 0, period)[3]
        await self._redis.set(key, used, nx=True, ex=40 * 86400)

    async def close(self) -> None:
        await self._redis.aclose()


def build_store(store: str, redis_url: str | None, lease_s: float) -> QuotaStore:
    if store == "redis":
        if not redis_url:
            raise ValueError("quotas.redis_url: required when store is redis")
        return RedisQuotaStore(redis_url, lease_s)
    return MemoryQuotaStore(lease_s)
