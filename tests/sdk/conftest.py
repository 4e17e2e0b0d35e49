"""Fixtures: real gRPC servers on 127.0.0.1 (see fake_upstream.py) for the SDK tests."""
from __future__ import annotations

import pytest

from tests.sdk.fake_upstream import FakeModelServicer, RunningServer, SheddingServicer


@pytest.fixture
def fake_model() -> FakeModelServicer:
    return FakeModelServicer()


@pytest.fixture
def upstream(fake_model):
    with RunningServer(fake_model) as server:
        yield server


@pytest.fixture
def shedding():
    """Factory: a server that sheds its first N calls, in front of a fresh fake model."""
    servers: list[RunningServer] = []

    def start(**kwargs) -> RunningServer:
        server = RunningServer(SheddingServicer(FakeModelServicer(), **kwargs))
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
