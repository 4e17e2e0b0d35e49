"""Real services for tests: a free port, redis-server and PostgreSQL, started and stopped by tests.

Plain helpers (usable from any suite or script):
    free_port() -> int
    wait_for_port(host, port, timeout_s)
    RedisServer().start() ... .url ... .stop()          Debian's redis-server, no persistence
    PostgresServer().start() ... .dsn ... .stop()       initdb into a temp dir, /usr/lib/postgresql/15/bin
    PostgresServer.create_database(name) -> dsn           a fresh database on the running server

pytest fixtures (import them into a conftest: `from tests.services import redis_server, postgres_server`):
    redis_server      session-scoped RedisServer; skips naming the binary when absent
    postgres_server   session-scoped PostgresServer; skips naming the binary when absent

PostgreSQL refuses to run as root. When the tests run as root, the server runs as the `postgres`
OS user (created by Debian's package) through `runuser`, with its data in a temp dir it owns.
"""
from __future__ import annotations

import os
import pathlib
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid

import pytest

PG_BIN = pathlib.Path(os.environ.get("MINIMAX_M1_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(host: str, port: int, timeout_s: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {host}:{port}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout_s} s")


class RedisServer:
    def __init__(self, binary: str = "redis-server"):
        self.binary = shutil.which(binary)
        self.port = 0
        self._proc: subprocess.Popen | None = None
        self._dir: tempfile.TemporaryDirectory | None = None

    @property
    def available(self) -> bool:
        return self.binary is not None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        if self.binary is None:
            raise FileNotFoundError("redis-server not found on PATH")
        self._dir = tempfile.TemporaryDirectory(prefix="test-redis-")
        self.port = free_port()
        self._proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self._dir.name, "--protected-mode", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port("127.0.0.1", self.port, proc=self._proc)
        return self

    def flushall(self) -> None:
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port)
        client.flushall()
        client.close()

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None


class PostgresServer:
    def __init__(self, bin_dir: pathlib.Path = PG_BIN):
        self.bin_dir = bin_dir
        self.port = 0
        self._dir: tempfile.TemporaryDirectory | None = None
        self._run_as: list[str] = []

    @property
    def available(self) -> bool:
        return (self.bin_dir / "initdb").is_file() and (self.bin_dir / "pg_ctl").is_file()

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _data(self) -> pathlib.Path:
        assert self._dir is not None
        return pathlib.Path(self._dir.name) / "data"

    def _run(self, *args: str) -> None:
        subprocess.run([*self._run_as, *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def start(self) -> "PostgresServer":
        if not self.available:
            raise FileNotFoundError(f"initdb/pg_ctl not found in {self.bin_dir}")
        self._dir = tempfile.TemporaryDirectory(prefix="test-pg-")
        if os.geteuid() == 0:  # initdb and postgres refuse root
            user = pwd.getpwnam("postgres")
            os.chown(self._dir.name, user.pw_uid, user.pw_gid)
            self._run_as = ["runuser", "-u", "postgres", "--"]
        self._run(str(self.bin_dir / "initdb"), "-D", str(self._data()), "-A", "trust", "-U", "postgres",
                  "-E", "UTF8", "--no-sync")
        self.port = free_port()
        options = (f"-p {self.port} -k {self._dir.name} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off")
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self._data()), "-o", options,
                  "-l", str(pathlib.Path(self._dir.name) / "log"), "-w", "-t", "30", "start")
        return self

    def create_database(self, name: str | None = None) -> str:
        import psycopg

        name = name or "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        if self._dir is None:
            return
        try:
            self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self._data()), "-m", "immediate", "-w", "stop")
        except subprocess.CalledProcessError:
            pass
        self._dir.cleanup()
        self._dir = None


@pytest.fixture(scope="session")
def redis_server():
    server = RedisServer()
    if not server.available:
        pytest.skip("redis-server binary not found on PATH")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_server():
    server = PostgresServer()
    if not server.available:
        pytest.skip(f"PostgreSQL binaries initdb/pg_ctl not found in {server.bin_dir}")
    server.start()
    yield server
    server.stop()
