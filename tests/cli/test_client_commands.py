"""The client commands (generate, count-tokens, models) against real gRPC servers on 127.0.0.1.

The servers run the SDK tests' FAKE MODEL (tests/sdk/fake_upstream.py), a deterministic stand-in
for the GPU model.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import grpc
import pytest

from minimax_m1.cli import common
from minimax_m1.cli.main import main
from tests.sdk import fake_upstream as fake


@pytest.fixture
def fake_model():
    return fake.FakeModelServicer()


@pytest.fixture
def server(fake_model):
    with fake.RunningServer(fake_model) as running:
        yield running


def test_generate_prints_the_text(server, capsys):
    code = main(["generate", "alpha beta", "--max-output-tokens", "3", "--endpoint", server.address])
    out, err = capsys.readouterr()
    assert code == 0
    assert out == fake.fake_greedy_text("alpha beta", 3) + "\n"
    assert "finish=length" in err and "output_tokens=3" in err


def test_generate_passes_every_option(server, fake_model, capsys):
    code = main([
        "generate", "a b c", "--endpoint", server.address, "--max-output-tokens", "4",
        "--context-window", "50", "--expert-threshold", "0.3", "--thinking-budget", "2",
        "--temperature", "0.5", "--top-p", "0.8", "--top-k", "3", "--seed", "11",
        "--stop", "zz", "--stop", "yy", "--stop-token-id", "5", "--routing-log",
        "--request-id", "cli-1", "--json",
    ])  # fmt: skip
    assert code == 0
    sent = fake_model.requests[-1]
    assert (sent.max_output_tokens, sent.context_window, sent.thinking_budget) == (4, 50, 2)
    assert sent.expert_threshold == pytest.approx(0.3) and sent.sampling.seed == 11
    assert sent.sampling.top_k == 3 and list(sent.stop) == ["zz", "yy"]
    assert list(sent.stop_token_ids) == [5] and sent.request_id == "cli-1"
    result = json.loads(capsys.readouterr().out)
    assert result["request_id"] == "cli-1" and result["finish_reason"] == "length"
    assert result["usage"] == {"input_tokens": 3, "output_tokens": 4, "expert_activations": 14}  # threshold 0.3: one expert per token
    assert [layer["layer"] for layer in result["routing_log"]] == [0, 1]


def test_generate_reads_the_prompt_from_stdin(server, capsys, monkeypatch):
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO("from stdin"))
    assert main(["generate", "--max-output-tokens", "2", "--endpoint", server.address, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["text"] == " from stdin"


def test_generate_stream_json_lines(server, capsys):
    code = main(["generate", "x y", "--max-output-tokens", "3", "--stream", "--json",
                 "--endpoint", server.address])  # fmt: skip
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0
    assert "".join(line["text_delta"] for line in lines) == fake.fake_greedy_text("x y", 3)
    assert lines[-1]["finish_reason"] == "length" and lines[-1]["usage"]["output_tokens"] == 3


def test_generate_stream_prints_tokens_as_they_come(fake_model, server):
    """The first token reaches stdout while the server is still generating the rest."""
    fake_model.token_delay_s = 0.3
    env = {**os.environ, "MINIMAX_M1_ENDPOINT": server.address, "PYTHONUNBUFFERED": "0"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "minimax_m1.cli.main", "generate", "one two", "--stream",
         "--max-output-tokens", "8"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    try:
        first = proc.stdout.read(4)
        still_running = proc.poll() is None
        rest = proc.stdout.read()
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
        proc.wait()
    assert first == b" one"
    assert still_running  # printed before the 8-token stream was over
    assert (first + rest).decode() == fake.fake_greedy_text("one two", 8) + "\n"


def test_generate_stream_stops_quietly_when_the_reader_goes_away(fake_model, server):
    fake_model.token_delay_s = 0.05
    env = {**os.environ, "MINIMAX_M1_ENDPOINT": server.address}
    proc = subprocess.Popen(
        [sys.executable, "-m", "minimax_m1.cli.main", "generate", "a b", "--stream",
         "--max-output-tokens", "1000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout.read(2) == b" a"
        proc.stdout.close()  # like `| head -c 2`
        assert proc.wait(timeout=60) == 0
        err = proc.stderr.read().decode()
    finally:
        proc.kill()
        proc.wait()
    assert "Traceback" not in err and "BrokenPipe" not in err


def test_count_tokens_and_models(server, capsys):
    assert main(["count-tokens", "one two three", "--endpoint", server.address]) == 0
    assert capsys.readouterr().out == "3\n"
    assert main(["count-tokens", "one", "--json", "--endpoint", server.address]) == 0
    assert json.loads(capsys.readouterr().out) == {"input_tokens": 1}
    assert main(["models", "--endpoint", server.address]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["id", "max_context", "num_experts", "experts_per_token"]
    assert table[1].split() == [fake.MODEL_ID, str(fake.MAX_CONTEXT), "4", "2"]
    assert main(["models", "--json", "--endpoint", server.address]) == 0
    assert json.loads(capsys.readouterr().out)[0]["id"] == fake.MODEL_ID


# -- exit codes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "exit_code", "needle"),
    [
        (["--max-output-tokens", "0"], common.EXIT_INVALID_REQUEST, "INVALID_ARGUMENT"),
        (["--context-window", "1"], common.EXIT_INVALID_REQUEST, "OUT_OF_RANGE"),
        (["--model", "unknown"], common.EXIT_INVALID_REQUEST, "NOT_FOUND"),
        (["--max-output-tokens", "-5"], common.EXIT_INVALID_REQUEST, "out of range"),
    ],
)
def test_rejected_requests_exit_with_their_code(server, capsys, args, exit_code, needle):
    for stream in ([], ["--stream"]):
        assert main(["generate", "a b", "--endpoint", server.address, *args, *stream]) == exit_code
        err = capsys.readouterr().err
        assert err.startswith("error: ") and needle in err
        assert "Traceback" not in err


def test_unreachable_server_exits_unavailable(capsys):
    code = main(["count-tokens", "a", "--endpoint", fake.dead_address(), "--max-retries", "0"])
    assert code == common.EXIT_UNAVAILABLE
    assert "UNAVAILABLE" in capsys.readouterr().err


def test_deadline_exits_with_timeout_code(fake_model, server, capsys):
    fake_model.token_delay_s = 0.2
    code = main(["generate", "a", "--max-output-tokens", "50", "--timeout", "0.5",
                 "--endpoint", server.address])  # fmt: skip
    assert code == common.EXIT_TIMEOUT
    assert "DEADLINE_EXCEEDED" in capsys.readouterr().err


def test_rate_limit_exits_with_its_code_and_retry_after(capsys):
    shedder = fake.SheddingServicer(fake.FakeModelServicer(), failures=10,
                                    code=grpc.StatusCode.RESOURCE_EXHAUSTED, retry_after="9")  # fmt: skip
    with fake.RunningServer(shedder) as running:
        code = main(["generate", "a", "--endpoint", running.address, "--request-id", "r",
                     "--max-retries", "0"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == common.EXIT_RATE_LIMITED
    assert "retry after 9 s" in err and "request id r" in err


def test_bad_connection_options_are_usage_errors(tmp_path, capsys):
    assert main(["models", "--endpoint", "ftp://x:1"]) == common.EXIT_USAGE
    assert main(["models", "--ca-cert", str(tmp_path / "missing.pem")]) == common.EXIT_USAGE
    assert "--ca-cert" in capsys.readouterr().err


def test_help_lists_the_client_commands():
    out = subprocess.run([sys.executable, "-m", "minimax_m1.cli.main", "--help"],
                         capture_output=True, text=True)  # fmt: skip
    for command in ("generate", "count-tokens", "models"):
        assert command in out.stdout


# -- through the real gateway -----------------------------------------------------------------


@pytest.fixture
def gateway(server, tmp_path):
    from tests.sdk.gateway_stack import GatewayStack

    stack = GatewayStack(server.address, tmp_path)
    yield stack
    stack.stop()


def test_generate_through_the_gateway(gateway, capsys, monkeypatch):
    monkeypatch.setenv("MINIMAX_M1_API_KEY", gateway.create_key().key)
    monkeypatch.setenv("MINIMAX_M1_ENDPOINT", gateway.address)
    assert main(["generate", "via gateway", "--max-output-tokens", "3", "--stream"]) == 0
    out, err = capsys.readouterr()
    assert out == fake.fake_greedy_text("via gateway", 3) + "\n"
    assert "finish=length" in err


def test_refused_keys_exit_with_the_auth_code(gateway, capsys):
    code = main(["generate", "a", "--endpoint", gateway.address, "--api-key", "mm1_unknown-key-000000"])
    assert code == common.EXIT_AUTH
    assert "UNAUTHENTICATED: unknown API key" in capsys.readouterr().err
    revoked = gateway.create_key()
    gateway.revoke(revoked.info.key_id)
    assert main(["models", "--endpoint", gateway.address, "--api-key", revoked.key]) == common.EXIT_AUTH
    assert "PERMISSION_DENIED" in capsys.readouterr().err
