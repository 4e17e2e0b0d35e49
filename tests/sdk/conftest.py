"""Fixtures: real gRPC servers on 127.0.0.1 (see fake_upstream.py) for the SDK tests."""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

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


@dataclass(frozen=True)
class Certificate:
    key: bytes
    cert: bytes
    key_file: Path
    cert_file: Path


@pytest.fixture(scope="session")
def certificate(tmp_path_factory):
    """A self-signed certificate for localhost / 127.0.0.1, made with the openssl binary."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl binary is needed to make a test certificate")
    directory = tmp_path_factory.mktemp("tls")
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return Certificate(key.read_bytes(), cert.read_bytes(), key, cert)
