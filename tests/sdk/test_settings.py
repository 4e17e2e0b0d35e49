"""Client settings: environment variables vs arguments, endpoints, TLS, and import hygiene."""
from __future__ import annotations

import subprocess
import sys

import grpc
import pytest

from tests.sdk.fake_upstream import FakeModelServicer, RunningServer, SheddingServicer, dead_address
from minimax_m1 import AsyncClient, Client, ServiceUnavailableError
from minimax_m1._base import resolve_target


@pytest.fixture
def recording():
    """A server that records each call's authorization header (it sheds nothing)."""
    with RunningServer(SheddingServicer(FakeModelServicer(), failures=0)) as server:
        yield server


def test_environment_supplies_endpoint_and_key(recording, monkeypatch):
    monkeypatch.setenv("MINIMAX_M1_ENDPOINT", recording.address)
    monkeypatch.setenv("MINIMAX_M1_API_KEY", "env-key")
    with Client() as client:
        assert client.count_tokens("a b") == 2
    assert recording.servicer.calls[-1].authorization == "Bearer env-key"


def test_arguments_win_over_environment(recording, monkeypatch):
    monkeypatch.setenv("MINIMAX_M1_ENDPOINT", dead_address())
    monkeypatch.setenv("MINIMAX_M1_API_KEY", "env-key")
    with Client(recording.address, api_key="arg-key") as client:
        assert client.count_tokens("a") == 1
    assert recording.servicer.calls[-1].authorization == "Bearer arg-key"


async def test_async_arguments_win_over_environment(recording, monkeypatch):
    monkeypatch.setenv("MINIMAX_M1_ENDPOINT", dead_address())
    monkeypatch.setenv("MINIMAX_M1_API_KEY", "env-key")
    async with AsyncClient(recording.address, api_key="arg-key") as client:
        assert await client.count_tokens("a") == 1
    assert recording.servicer.calls[-1].authorization == "Bearer arg-key"


def test_no_key_sends_no_authorization(recording, monkeypatch):
    monkeypatch.delenv("MINIMAX_M1_API_KEY", raising=False)
    with Client(recording.address) as client:
        client.list_models()
    assert recording.servicer.calls[-1].authorization is None


def test_default_endpoint(monkeypatch):
    monkeypatch.delenv("MINIMAX_M1_ENDPOINT", raising=False)
    client = Client()
    assert (client.target.address, client.target.tls) == ("localhost:50051", False)
    client.close()


@pytest.mark.parametrize(
    ("endpoint", "tls", "expected"),
    [
        ("localhost:50051", None, ("localhost:50051", False)),
        ("127.0.0.1:9", None, ("127.0.0.1:9", False)),
        ("[::1]:9", None, ("[::1]:9", False)),
        ("api.example.com:443", None, ("api.example.com:443", True)),
        ("grpc://api.example.com:80", None, ("api.example.com:80", False)),
        ("grpcs://localhost:50051", None, ("localhost:50051", True)),
        ("https://api.example.com/", None, ("api.example.com", True)),
        ("api.example.com:80", False, ("api.example.com:80", False)),
        ("localhost:50051", True, ("localhost:50051", True)),
    ],
)
def test_endpoint_resolution(endpoint, tls, expected):
    target = resolve_target(endpoint, tls)
    assert (target.address, target.tls) == expected


@pytest.mark.parametrize("endpoint", ["", "   ", "ftp://x:1", "grpc://"])
def test_bad_endpoints_are_rejected(endpoint):
    with pytest.raises(ValueError, match="endpoint"):
        resolve_target(endpoint, None)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"timeout": 0}, "timeout"),
        ({"max_retries": -1}, "max_retries"),
        ({"api_key": "two\nlines"}, "api_key"),
        ({"api_key": "has space"}, "api_key"),
    ],
)
def test_bad_settings_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        Client("localhost:1", **kwargs)


# -- TLS ------------------------------------------------------------------------------------


@pytest.fixture
def tls_server(certificate):
    credentials = grpc.ssl_server_credentials([(certificate.key, certificate.cert)])
    with RunningServer(FakeModelServicer(), credentials=credentials) as server:
        yield server


def test_tls_with_custom_ca(tls_server, certificate):
    cert = certificate.cert
    with Client(f"grpcs://localhost:{tls_server.port}", root_certificates=cert) as client:
        assert client.generate("secure words", max_output_tokens=2).text == " secure words"
    with Client(f"localhost:{tls_server.port}", tls=True, root_certificates=cert) as client:
        with client.stream("a", max_output_tokens=1) as stream:
            assert [c.text_delta for c in stream][0] == " a"


async def test_async_tls_with_custom_ca(tls_server, certificate):
    cert = certificate.cert
    async with AsyncClient(f"localhost:{tls_server.port}", root_certificates=cert) as client:
        assert (await client.generate("x", max_output_tokens=1)).text == " x"


def test_tls_rejects_an_untrusted_server(tls_server):
    # The system roots do not trust a self-signed certificate.
    with Client(f"grpcs://localhost:{tls_server.port}", max_retries=0, timeout=10) as client:
        with pytest.raises(ServiceUnavailableError):
            client.count_tokens("a")


def test_plaintext_client_cannot_talk_to_a_tls_server(tls_server):
    with Client(f"grpc://localhost:{tls_server.port}", max_retries=0, timeout=10) as client:
        with pytest.raises(ServiceUnavailableError):
            client.count_tokens("a")


# -- import hygiene -------------------------------------------------------------------------


def test_import_pulls_neither_torch_nor_ray():
    code = (
        "import sys, minimax_m1; from minimax_m1 import Client, AsyncClient, errors, types;"
        "heavy = [m for m in ('torch', 'ray', 'triton', 'minimax_m1.gateway', 'minimax_m1.engine')"
        " if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "[]"


def test_sdk_source_never_imports_server_code():
    import pathlib

    import minimax_m1

    forbidden = ("minimax_m1.gateway", "minimax_m1.engine", "minimax_m1.serving", "torch", "ray")
    sdk_dir = pathlib.Path(minimax_m1.__file__).parent
    for path in sdk_dir.glob("*.py"):
        for line in path.read_text().splitlines():
            stripped = line.strip()
            if stripped.startswith(("import ", "from ")):
                module = stripped.split()[1]
                assert not module.startswith(forbidden), f"{path.name}: {stripped}"
