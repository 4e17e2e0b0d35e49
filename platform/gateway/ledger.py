"""The billing ledger: one usage record per request, written durably before anything is billed out.

Life of a record (record_id is the request id; a retry that reuses a request id becomes
`<request_id>#2`, `#3`, ... so every attempt is billed once and only once):

    open      at admission, before the request goes upstream (is_open = 1)
    progress  during a stream, before output reaches the client
    close     when the call ends, with its status; the same transaction queues one outbox row per
              hook. A crash between open and close leaves an open record; `recover` closes it for
              the usage recorded so far (status INTERRUPTED) and queues it, exactly once.

The outbox is drained by `minimax_m1.gateway.hooks.OutboxDelivery` with `claim` / `delivered` /
`failed`. Claims expire, so a replica that dies mid-delivery does not strand its rows.
"""
from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass
from typing import Any, Sequence

from minimax_m1.gateway.storage import Backend

INTERRUPTED = "INTERRUPTED"  # status of records closed by recovery after a crash


@dataclass(frozen=True, slots=True)
class UsageRecord:
    record_id: str
    request_id: str
    tenant: str
    key_id: str
    model: str
    input_tokens: int
    output_tokens: int
    expert_activations: int
    compute_ms: float  # wall time from admission to the end of the call
    status: str  # gRPC status code name, or INTERRUPTED
    started_at: float  # unix seconds
    ended_at: float | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


_RECORD_COLUMNS = ("record_id, request_id, tenant, key_id, model, input_tokens, output_tokens, "
                   "expert_activations, compute_ms, status, started_at, ended_at")


@dataclass(frozen=True, slots=True)
class OutboxItem:
    outbox_id: int
    attempts: int
    record: UsageRecord


@dataclass(frozen=True, slots=True)
class UsageSummary:
    tenant: str
    model: str
    requests: int
    input_tokens: int
    output_tokens: int
    expert_activations: int
    compute_s: float


class Ledger:
    def __init__(self, db: Backend, instance_id: str, hooks: Sequence[str]):
        self._db = db
        self.instance_id = instance_id
        self.hooks = tuple(hooks)
        self._skip_locked = " FOR UPDATE SKIP LOCKED" if db.dialect == "postgres" else ""

    async def open(self, request_id: str, tenant: str, key_id: str, model: str, reserved_tokens: int,
                   now: float | None = None) -> str:
        """Insert an open record; returns its record id."""
        now = time.time() if now is None else now
        sql = ("INSERT INTO usage_records (record_id, request_id, tenant, key_id, model, reserved_tokens, "
               "instance_id, started_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
               "ON CONFLICT (record_id) DO NOTHING RETURNING record_id")
        record_id, attempt = request_id, 1
        while True:
            (rows,) = await self._db.write([(sql, (record_id, request_id, tenant, key_id, model, reserved_tokens,
                                                   self.instance_id, now, now))])
            if rows:
                return record_id
            if attempt == 1:  # a retry with a used request id: continue after the attempts so far
                attempt = (await self._db.execute("SELECT COUNT(*) FROM usage_records WHERE request_id = ?",
                                                  (request_id,)))[0][0]
            attempt += 1
            record_id = f"{request_id}#{attempt}"

    async def progress(self, record_id: str, input_tokens: int, output_tokens: int, expert_activations: int) -> None:
        await self._db.write([(
            "UPDATE usage_records SET input_tokens = ?, output_tokens = ?, expert_activations = ?, updated_at = ? "
            "WHERE record_id = ? AND is_open = 1",
            (input_tokens, output_tokens, expert_activations, time.time(), record_id))])

    async def close(self, record_id: str, status: str, input_tokens: int, output_tokens: int,
                    expert_activations: int, compute_ms: float) -> bool:
        """Close an open record and queue it for every hook; False if it was already closed."""
        now = time.time()
        # One atomic write: close the record, then queue it per hook. The outbox rows are guarded
        # by the record being closed and unique per (record, hook), so a repeated close adds none.
        statements = [(
            "UPDATE usage_records SET input_tokens = ?, output_tokens = ?, expert_activations = ?, compute_ms = ?, "
            "status = ?, is_open = 0, updated_at = ?, ended_at = ? WHERE record_id = ? AND is_open = 1 "
            "RETURNING record_id",
            (input_tokens, output_tokens, expert_activations, compute_ms, status, now, now, record_id))]
        statements += [(
            "INSERT INTO billing_outbox (record_id, hook, next_attempt_at) SELECT ?, ?, ? WHERE EXISTS "
            "(SELECT 1 FROM usage_records WHERE record_id = ? AND is_open = 0) ON CONFLICT (record_id, hook) DO NOTHING",
            (record_id, hook, now, record_id)) for hook in self.hooks]
        rows = (await self._db.write(statements))[0]
        return bool(rows)

    async def recover(self, stale_after_s: float) -> list[str]:
        """Close this instance's open records, and any replica's that went stale; queue them."""
        now = time.time()
        async with self._db.transaction() as tx:
            rows = await tx.execute(
                "UPDATE usage_records SET status = ?, is_open = 0, ended_at = updated_at, "
                "compute_ms = (updated_at - started_at) * 1000.0 "
                "WHERE is_open = 1 AND (instance_id = ? OR updated_at < ?) RETURNING record_id",
                (INTERRUPTED, self.instance_id, now - stale_after_s))
            ids = [r[0] for r in rows]
            if ids and self.hooks:
                await tx.executemany(
                    "INSERT INTO billing_outbox (record_id, hook, next_attempt_at) VALUES (?, ?, ?) "
                    "ON CONFLICT (record_id, hook) DO NOTHING", [(i, h, now) for i in ids for h in self.hooks])
        return ids

    async def get(self, record_id: str) -> UsageRecord | None:
        rows = await self._db.execute(f"SELECT {_RECORD_COLUMNS} FROM usage_records WHERE record_id = ?", (record_id,))
        return UsageRecord(*rows[0]) if rows else None

    async def records(self, tenant: str | None = None, since: float = 0.0, until: float = float("inf"),
                      limit: int = 1000) -> list[UsageRecord]:
        sql = f"SELECT {_RECORD_COLUMNS} FROM usage_records WHERE started_at >= ? AND started_at < ?"
        params: list[Any] = [since, min(until, 1e18)]
        if tenant is not None:
            sql += " AND tenant = ?"
            params.append(tenant)
        rows = await self._db.execute(sql + " ORDER BY started_at LIMIT ?", (*params, limit))
        return [UsageRecord(*r) for r in rows]

    async def summary(self, tenant: str | None = None, since: float = 0.0, until: float = float("inf")) -> list[UsageSummary]:
        sql = ("SELECT tenant, model, COUNT(*), COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0), "
               "COALESCE(SUM(expert_activations), 0), COALESCE(SUM(compute_ms), 0) FROM usage_records "
               "WHERE started_at >= ? AND started_at < ?")
        params: list[Any] = [since, min(until, 1e18)]
        if tenant is not None:
            sql += " AND tenant = ?"
            params.append(tenant)
        rows = await self._db.execute(sql + " GROUP BY tenant, model ORDER BY tenant, model", params)
        return [UsageSummary(t, m, int(n), int(i), int(o), int(e), float(c) / 1000.0) for t, m, n, i, o, e, c in rows]

    async def tokens_since(self, since: float) -> dict[str, int]:
        """Tokens used per tenant since `since`, counting open records' reservations (seeds budgets)."""
        rows = await self._db.execute(
            "SELECT tenant, COALESCE(SUM(CASE WHEN is_open = 1 THEN reserved_tokens ELSE input_tokens + output_tokens END), 0) "
            "FROM usage_records WHERE started_at >= ? GROUP BY tenant", (since,))
        return {t: int(n) for t, n in rows}

    # -- outbox ---------------------------------------------------------------------------------

    async def claim(self, hook: str, limit: int, lease_s: float) -> list[OutboxItem]:
        now = time.time()
        async with self._db.transaction() as tx:
            claimed = await tx.execute(
                "UPDATE billing_outbox SET claimed_until = ? WHERE id IN (SELECT id FROM billing_outbox "
                "WHERE hook = ? AND delivered_at IS NULL AND next_attempt_at <= ? "
                f"AND (claimed_until IS NULL OR claimed_until < ?) ORDER BY id LIMIT ?{self._skip_locked}) "
                "RETURNING id, record_id, attempts",
                (now + lease_s, hook, now, now, limit))
            if not claimed:
                return []
            marks = ", ".join("?" for _ in claimed)
            rows = await tx.execute(f"SELECT {_RECORD_COLUMNS} FROM usage_records WHERE record_id IN ({marks})",
                                    [c[1] for c in claimed])
        by_id = {r[0]: UsageRecord(*r) for r in rows}
        return sorted((OutboxItem(i, a, by_id[rid]) for i, rid, a in claimed), key=lambda item: item.outbox_id)

    async def delivered(self, outbox_ids: Sequence[int]) -> None:
        marks = ", ".join("?" for _ in outbox_ids)
        await self._db.execute(f"UPDATE billing_outbox SET delivered_at = ?, claimed_until = NULL WHERE id IN ({marks})",
                               (time.time(), *outbox_ids))

    async def failed(self, items: Sequence[OutboxItem], error: str, backoff_base_s: float, backoff_max_s: float) -> float:
        """Schedule a retry with exponential backoff and jitter; returns the delay used."""
        attempts = max(i.attempts for i in items) + 1
        delay = min(backoff_base_s * 2 ** (attempts - 1), backoff_max_s) * random.uniform(0.5, 1.0)
        marks = ", ".join("?" for _ in items)
        await self._db.execute(
            "UPDATE billing_outbox SET attempts = attempts + 1, next_attempt_at = ?, claimed_until = NULL, "
            f"last_error = ? WHERE id IN ({marks})", (time.time() + delay, error[:500], *(i.outbox_id for i in items)))
        return delay

    async def outbox_pending(self, hook: str | None = None) -> int:
        if hook is None:
            rows = await self._db.execute("SELECT COUNT(*) FROM billing_outbox WHERE delivered_at IS NULL")
        else:
            rows = await self._db.execute("SELECT COUNT(*) FROM billing_outbox WHERE delivered_at IS NULL AND hook = ?", (hook,))
        return int(rows[0][0])
