"""The gateway's database: SQLite for the embedded default, PostgreSQL in a cluster.

One SQL code base serves both. Statements are written with `?` placeholders; the PostgreSQL
backend rewrites them to `%s`. Both backends expose the same small async surface:

    rows = await db.execute(sql, params)          # one statement, committed
    rows_per_stmt = await db.write([(sql, params), ...])   # atomic; committed when it returns
    async with db.transaction() as tx:            # several statements, one commit
        rows = await tx.execute(sql, params)
        await tx.executemany(sql, seq_of_params)

`write` is the hot path (a record per request, progress per stream message). On SQLite it is a
group commit: every write queued in one event-loop iteration shares one transaction, so the
commit cost is paid once per batch instead of once per request; each caller resumes only after
the commit.

SQLite runs in the event loop's thread: a local WAL-mode write costs tens of microseconds, less
than a hop to a worker thread. `synchronous=NORMAL` makes every commit survive a process crash
(SIGKILL), which is what the ledger promises; set `durability="full"` for power loss too.
Nothing may await anything else inside a SQLite transaction (the connection is shared).
"""
from __future__ import annotations

import asyncio
import contextlib
import pathlib
import sqlite3
from typing import Any, AsyncIterator, Sequence

Params = Sequence[Any]

SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    key_id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    models TEXT NOT NULL DEFAULT '',
    created_at DOUBLE PRECISION NOT NULL,
    revoked_at DOUBLE PRECISION
);
CREATE TABLE IF NOT EXISTS usage_records (
    record_id TEXT PRIMARY KEY,
    request_id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    key_id TEXT NOT NULL,
    model TEXT NOT NULL,
    input_tokens BIGINT NOT NULL DEFAULT 0,
    output_tokens BIGINT NOT NULL DEFAULT 0,
    expert_activations BIGINT NOT NULL DEFAULT 0,
    reserved_tokens BIGINT NOT NULL DEFAULT 0,
    compute_ms DOUBLE PRECISION NOT NULL DEFAULT 0,
    status TEXT NOT NULL DEFAULT 'OPEN',
    is_open INTEGER NOT NULL DEFAULT 1,
    instance_id TEXT NOT NULL,
    started_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    ended_at DOUBLE PRECISION
);
CREATE INDEX IF NOT EXISTS usage_open ON usage_records (instance_id) WHERE is_open = 1;
CREATE INDEX IF NOT EXISTS usage_tenant_time ON usage_records (tenant, started_at);
CREATE INDEX IF NOT EXISTS usage_request ON usage_records (request_id);
CREATE TABLE IF NOT EXISTS billing_outbox (
    id {serial},
    record_id TEXT NOT NULL,
    hook TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at DOUBLE PRECISION NOT NULL,
    claimed_until DOUBLE PRECISION,
    delivered_at DOUBLE PRECISION,
    last_error TEXT,
    UNIQUE (record_id, hook)
);
CREATE INDEX IF NOT EXISTS outbox_pending ON billing_outbox (hook, next_attempt_at) WHERE delivered_at IS NULL;
"""

SERIAL = {"sqlite": "INTEGER PRIMARY KEY AUTOINCREMENT", "postgres": "BIGSERIAL PRIMARY KEY"}


class SqliteBackend:
    dialect = "sqlite"

    def __init__(self, path: str, durability: str = "normal"):
        pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute(f"PRAGMA synchronous={'FULL' if durability == 'full' else 'NORMAL'}")
        self._conn.execute("PRAGMA busy_timeout=5000")
        self._in_tx = False
        self._pending: list[tuple[Sequence[tuple[str, Params]], asyncio.Future]] = []
        self._flush_scheduled = False

    async def migrate(self) -> None:
        self._conn.executescript(SCHEMA.format(serial=SERIAL[self.dialect]))

    async def write(self, statements: Sequence[tuple[str, Params]]) -> list[list[tuple]]:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._pending.append((statements, fut))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return await fut

    def _flush(self) -> None:
        if not self._pending:  # already flushed by close()
            self._flush_scheduled = False
            return
        if self._in_tx:  # a transaction() body is between statements; commit after it
            asyncio.get_running_loop().call_soon(self._flush)
            return
        ops, self._pending, self._flush_scheduled = self._pending, [], False
        conn = self._conn
        results: list[tuple[asyncio.Future, Any, BaseException | None]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for statements, fut in ops:
                # A failing statement leaves SQLite's transaction intact; a failing multi-statement
                # write is rolled back to its savepoint so it stays all-or-nothing.
                multi = len(statements) > 1
                if multi:
                    conn.execute("SAVEPOINT w")
                try:
                    rows = [conn.execute(sql, params).fetchall() for sql, params in statements]
                    results.append((fut, rows, None))
                except Exception as exc:
                    if multi:
                        conn.execute("ROLLBACK TO w")
                    results.append((fut, None, exc))
                if multi:
                    conn.execute("RELEASE w")
            conn.execute("COMMIT")
        except Exception as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            results = [(fut, None, exc) for _, fut in ops]
        for fut, rows, exc in results:
            if fut.done():  # the caller was cancelled; the write happened all the same
                continue
            if exc is None:
                fut.set_result(rows)
            else:
                fut.set_exception(exc)

    async def execute(self, sql: str, params: Params = ()) -> list[tuple]:
        return self._conn.execute(sql, params).fetchall()

    async def executemany(self, sql: str, seq: Sequence[Params]) -> None:
        self._conn.executemany(sql, seq)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator["SqliteBackend"]:
        if self._in_tx:
            raise RuntimeError("nested SQLite transaction")
        self._in_tx = True
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        else:
            self._conn.execute("COMMIT")
        finally:
            self._in_tx = False

    async def close(self) -> None:
        if self._pending:
            self._flush()
        self._conn.close()


class _PgTx:
    def __init__(self, conn: Any):
        self._conn = conn

    async def execute(self, sql: str, params: Params = ()) -> list[tuple]:
        cur = await self._conn.execute(sql.replace("?", "%s"), params)
        return await cur.fetchall() if cur.description else []

    async def executemany(self, sql: str, seq: Sequence[Params]) -> None:
        async with self._conn.cursor() as cur:
            await cur.executemany(sql.replace("?", "%s"), seq)


class PostgresBackend:
    """A fixed pool of autocommit connections; each transaction holds one."""

    dialect = "postgres"

    def __init__(self, url: str, pool_size: int = 4):
        self.url = url
        self.pool_size = pool_size
        self._pool: asyncio.Queue[Any] = asyncio.Queue()
        self._conns: list[Any] = []

    async def connect(self) -> None:
        import psycopg  # imported here: only PostgreSQL deployments need it

        for _ in range(self.pool_size):
            conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
            self._conns.append(conn)
            self._pool.put_nowait(conn)

    async def migrate(self) -> None:
        async with self._conn() as conn:
            # One session-level advisory lock so replicas starting together do not race on DDL.
            await conn.execute("SELECT pg_advisory_lock(7263001)")
            try:
                await conn.execute(SCHEMA.format(serial=SERIAL[self.dialect]))
            finally:
                await conn.execute("SELECT pg_advisory_unlock(7263001)")

    @contextlib.asynccontextmanager
    async def _conn(self) -> AsyncIterator[Any]:
        conn = await self._pool.get()
        try:
            yield conn
        finally:
            self._pool.put_nowait(conn)

    async def execute(self, sql: str, params: Params = ()) -> list[tuple]:
        async with self._conn() as conn:
            return await _PgTx(conn).execute(sql, params)

    async def executemany(self, sql: str, seq: Sequence[Params]) -> None:
        async with self._conn() as conn:
            await _PgTx(conn).executemany(sql, seq)

    async def write(self, statements: Sequence[tuple[str, Params]]) -> list[list[tuple]]:
        if len(statements) == 1:
            return [await self.execute(*statements[0])]
        async with self.transaction() as tx:
            return [await tx.execute(sql, params) for sql, params in statements]

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[_PgTx]:
        async with self._conn() as conn:
            async with conn.transaction():
                yield _PgTx(conn)

    async def close(self) -> None:
        for conn in self._conns:
            await conn.close()
        self._conns.clear()


Backend = SqliteBackend | PostgresBackend


async def open_database(url: str, durability: str = "normal") -> Backend:
    """Open and migrate `sqlite:///PATH` or `postgresql://...`."""
    if url.startswith("sqlite:///"):
        # sqlite:///relative/path or sqlite:////absolute/path
        db: Backend = SqliteBackend(url[len("sqlite:///"):], durability)
    elif url.startswith(("postgresql://", "postgres://")):
        db = PostgresBackend(url)
        await db.connect()
    else:
        raise ValueError(f"database: unsupported URL {url!r} (use sqlite:///PATH or postgresql://...)")
    await db.migrate()
    return db
