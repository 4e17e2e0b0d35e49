"""SIGKILL the gateway process in the middle of a stream: no usage record is lost, none duplicated."""
from __future__ import annotations

import asyncio
import json
import signal
import sys

import grpc
import pytest

from minimax_m1.gateway.keys import KeyStore
from minimax_m1.gateway.ledger import INTERRUPTED, Ledger
from minimax_m1.gateway.storage import open_database
from tests.conftest import REPO_ROOT
from tests.gateway.conftest import Client
from tests.gateway.webhook_sink import WebhookSink
from tests.services import free_port


class GatewayProcess:
    def __init__(self, config_path: str, port: int):
        self.config_path = config_path
        self.port = port
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "minimax_m1.gateway", "--config", self.config_path, "--port", str(self.port),
            "--log-level", "WARNING", cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        lines = []
        while not lines or b"gateway listening" not in lines[-1]:
            lines.append(await asyncio.wait_for(self.proc.stdout.readline(), 60))
            assert lines[-1], b"".join(lines)  # the process exited
        self.log = lines
        self._drain = asyncio.get_running_loop().create_task(self._read_rest())

    async def _read_rest(self) -> None:
        while line := await self.proc.stdout.readline():
            self.log.append(line)

    async def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()

    async def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(self.proc.wait(), 30) == 0


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    return request.getfixturevalue("postgres_server").create_database()


async def test_sigkill_mid_stream_loses_and_duplicates_nothing(fake, tmp_path, database_url):
    fake.model.behaviour.token_delay_s = 0.01
    sink = WebhookSink(fail_first=1)
    config = {
        "upstream": {"target": fake.target, "metadata": {"application": "minimax-m1"}},
        "billing": {"database": database_url, "instance_id": "gw-crash", "outbox_poll_s": 0.05,
                    "hooks": [{"kind": "webhook", "url": sink.url, "backoff_base_s": 0.05, "backoff_max_s": 0.2}]},
    }
    config_path = tmp_path / "gateway.json"
    config_path.write_text(json.dumps(config))
    db = await open_database(database_url)
    key = (await KeyStore(db).create("acme")).key
    ledger = Ledger(db, "observer", hooks=())
    gw = GatewayProcess(str(config_path), free_port())
    await gw.start()
    c = Client(gw.port, key)
    for i in range(3):
        await c.generate(input="done", max_output_tokens=3, request_id=f"done-{i}")

    received = 0
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for msg in c.stream(input="long", max_output_tokens=2000, request_id="killed", timeout=60):
            received = msg.usage.output_tokens
            if received == 20:
                await gw.kill()
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    await c.close()
    record = await ledger.get("killed")
    assert record.status == "OPEN" and record.output_tokens >= received  # billed before delivered

    await gw.start()  # the restart closes the open record for what was produced, once

    async def all_delivered():
        return sorted(sink.ids()) == ["done-0", "done-1", "done-2", "killed"]

    for _ in range(500):
        if await all_delivered():
            break
        await asyncio.sleep(0.02)
    assert await all_delivered(), sink.ids()
    record = await ledger.get("killed")
    assert record.status == INTERRUPTED
    assert received <= record.output_tokens <= fake.model.observed.produced["killed"]
    for _ in range(500):  # the upstream sees the dead connection as a cancel (timing varies under load)
        if "killed" in fake.model.observed.cancelled:
            break
        await asyncio.sleep(0.02)
    assert "killed" in fake.model.observed.cancelled  # the upstream stopped when the gateway died

    await gw.terminate()
    await gw.start()  # a second restart finds nothing to recover and delivers nothing again
    await asyncio.sleep(0.5)
    await gw.terminate()
    assert sorted(sink.ids()) == ["done-0", "done-1", "done-2", "killed"]
    assert len(await ledger.records()) == 4
    sink.close()
    await db.close()
