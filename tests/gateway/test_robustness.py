"""Hostile input gets a clean status, never a traceback, and the gateway keeps serving."""
from __future__ import annotations

import asyncio
import socket

import grpc
import pytest

from minimax_m1._generated import generation_pb2 as pb
from tests.gateway.conftest import Client

Code = grpc.StatusCode
METHOD = "/minimax.m1.v1.Generation/"


def raw_call(client: Client, method: str, streaming: bool = False):
    """A call that sends bytes exactly as given (no serializer)."""
    factory = client.channel.unary_stream if streaming else client.channel.unary_unary
    return factory(METHOD + method, request_serializer=None, response_deserializer=None)


def invalid_utf8_request() -> bytes:
    good = pb.GenerateRequest(input="ab", max_output_tokens=1).SerializeToString()
    assert b"ab" in good
    return good.replace(b"ab", b"\xff\xfe")  # field 2 keeps its length; the bytes are not UTF-8


@pytest.fixture
async def small_gateway(make_gateway):
    gw = await make_gateway(max_message_bytes=64 * 1024, max_input_bytes=32 * 1024)
    c = Client(gw.port, (await gw.keys.create("acme")).key)
    yield gw, c
    await c.close()


async def still_serving(c: Client) -> None:
    resp = await c.generate(input="ping", max_output_tokens=2)
    assert resp.usage.output_tokens == 2


async def expect(call, code: Code, text: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, info.value.details()
    assert text in info.value.details() and "Traceback" not in info.value.details()


@pytest.mark.parametrize("method, streaming", [("Generate", False), ("GenerateStream", True), ("CountTokens", False)])
async def test_garbage_bytes(small_gateway, method, streaming):
    gw, c = small_gateway
    call = raw_call(c, method, streaming)(b"\xff\xff\xff\xff\x0f\x00garbage", metadata=c.metadata)
    target = call.read() if streaming else call
    await expect(target, Code.INVALID_ARGUMENT, "request is not a valid minimax.m1.v1.")
    await still_serving(c)


async def test_invalid_utf8(small_gateway):
    gw, c = small_gateway
    await expect(raw_call(c, "Generate")(invalid_utf8_request(), metadata=c.metadata), Code.INVALID_ARGUMENT,
                 "a string field is not valid UTF-8")
    await still_serving(c)


async def test_oversize_message_and_oversize_input(small_gateway):
    gw, c = small_gateway
    await expect(c.generate(input="x" * 100_000, max_output_tokens=1), Code.RESOURCE_EXHAUSTED,
                 "larger than max")
    await expect(c.generate(input="é" * 20_000, max_output_tokens=1), Code.OUT_OF_RANGE,
                 "input=40000 is out of range: allowed [1, 32768] (UTF-8 bytes)")
    await still_serving(c)


async def test_huge_max_output_tokens(small_gateway):
    gw, c = small_gateway
    await expect(c.generate(input="x", max_output_tokens=2**32 - 1), Code.OUT_OF_RANGE,
                 "max_output_tokens=4294967295 is out of range: allowed [1, 4096]")
    await expect(c.generate(input="x", max_output_tokens=1, thinking_budget=2**32 - 1), Code.OUT_OF_RANGE,
                 "thinking_budget=4294967295 is out of range")
    await still_serving(c)


async def test_non_grpc_bytes_on_the_socket(small_gateway):
    gw, c = small_gateway

    def send_junk() -> None:
        with socket.create_connection(("127.0.0.1", gw.port)) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(range(256)) * 64)
            s.settimeout(2)
            try:
                s.recv(1024)
            except OSError:
                pass

    await asyncio.to_thread(send_junk)
    await still_serving(c)
    # And nothing stayed open or half-billed.
    assert all(r.status == "OK" for r in await gw.ledger.records())
