"""bench/gpu_kernels.py, in the parts a machine without a GPU can check.

Timings need CUDA; here the script's whole flow runs on the CPU interpreter with two fakes, named
as such: a timer that returns a constant instead of measuring, and an fla stand-in that implements
the recurrence fla documents for chunk_simple_gla. No figure from here is a measurement.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from tests.kernels.kernel_checks import interpreted_kernels

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "gpu_kernels.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("gpu_kernels_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=180, cwd=REPO)


def test_without_cuda_it_exits_with_a_clear_message_and_writes_nothing():
    before = (REPO / "bench" / "RESULTS.md").read_bytes()
    result = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=180, cwd=REPO)
    assert result.returncode == 2
    assert "needs a CUDA GPU" in result.stderr and "Nothing was measured" in result.stderr
    assert (REPO / "bench" / "RESULTS.md").read_bytes() == before


def test_it_loads_the_kernels_without_ray_or_the_sdk():
    probe = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('b', {str(SCRIPT)!r})\n"
        "b = importlib.util.module_from_spec(spec); sys.modules['b'] = b; spec.loader.exec_module(b)\n"
        "k = b.import_kernels()\n"
        "from minimax_m1.kernels import triton_lightning, triton_moe\n"
        "print(k.__file__, sys.modules['minimax_m1'].__path__, 'ray' in sys.modules, 'grpc' in sys.modules)\n"
    )
    result = python(probe)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(REPO / "kernels" / "__init__.py"), "[]", "False", "False"]


def test_fla_wheels_are_unpacked_onto_the_path(tmp_path):
    wheel_dir = tmp_path / "wheels"
    wheel_dir.mkdir()
    with zipfile.ZipFile(wheel_dir / "carried_pkg-1.0-py3-none-any.whl", "w") as wheel:
        wheel.writestr("carried_pkg/__init__.py", "VALUE = 41 + 1\n")
    probe = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('b', {str(SCRIPT)!r})\n"
        "b = importlib.util.module_from_spec(spec); sys.modules['b'] = b; spec.loader.exec_module(b)\n"
        "b.load_wheels(sys.argv[1])\n"
        "import carried_pkg; print(carried_pkg.VALUE)\n"
        "print(b.find_fla())\n"  # fla itself is not in that folder: skipped with a message
    )
    result = python(probe, str(wheel_dir))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "42"
    assert lines[1].startswith("fla not available") and "skipping the fla column" in lines[1]
    assert lines[2] == "None"

    empty = python(probe, str(tmp_path))
    assert empty.returncode != 0 and "no .whl files there" in empty.stderr


def test_rows_land_in_the_scripts_table(tmp_path):
    bench = load_bench()
    rows = [bench.Row("prefill", "4K tokens", "1.000 ms", "fla", "2.000 ms", "2.00x")]
    lines = bench.results_lines(rows, "Card X", "t / tr", __import__("datetime").datetime(2026, 1, 2, 3, 4))
    assert lines == ["| 2026-01-02 03:04 | Card X | t / tr | prefill | 4K tokens | 1.000 ms | fla | 2.000 ms | 2.00x |  |"]

    fresh = tmp_path / "fresh.md"
    bench.append_rows(fresh, lines)
    bench.append_rows(fresh, [lines[0].replace("Card X", "Card Y")])
    text = fresh.read_text()
    table = text[text.index(bench.TABLE_HEADER):]
    assert table.splitlines()[2:] == [lines[0], lines[0].replace("Card X", "Card Y"), bench.END_MARKER]

    shipped = tmp_path / "RESULTS.md"
    shipped.write_text((REPO / "bench" / "RESULTS.md").read_text() + "\n## other_script.py\n\nkept\n")
    bench.append_rows(shipped, lines)
    text = shipped.read_text()
    assert text.count(bench.SECTION) == 1 and text.endswith("## other_script.py\n\nkept\n")
    assert f"{bench.TABLE_HEADER}\n{lines[0]}\n{bench.END_MARKER}" in text


def test_m1_slopes_follow_the_release():
    slopes = load_bench().m1_slopes(64, layer=0)
    assert slopes.shape == (64,)
    assert slopes[0].item() == pytest.approx(2 ** (-8 / 64) * (1 + 1e-5))
    assert slopes[-1].item() == pytest.approx(2**-8 * (1 + 1e-5))


def fake_timer(fn) -> float:
    """FAKE timer: runs fn once and returns 1.0 ms; it measures nothing."""
    fn()
    return 1.0


def fake_chunk_simple_gla(q, k, v, g_gamma=None, scale=None, initial_state=None, output_final_state=False, **kw):
    """FAKE fla, for CPU: the recurrence fla documents for chunk_simple_gla with a head-wise decay,
    S_t = exp(g_gamma) S_{t-1} + k_t^T v_t and o_t = scale * q_t S_t, on [B, T, H, D] inputs."""
    b, t, h, d = q.shape
    state = initial_state.clone().float()  # [B, H, D, D]
    decay = torch.exp(g_gamma.float()).view(1, h, 1, 1)
    out = torch.empty(b, t, h, d)
    for i in range(t):
        state = decay * state + k[:, i].float().unsqueeze(-1) * v[:, i].float().unsqueeze(-2)
        out[:, i] = scale * torch.einsum("bhd,bhde->bhe", q[:, i].float(), state)
    return out.to(q.dtype), state


def check_bench_flow():
    interpreted_kernels()
    bench = load_bench()
    bench.import_kernels()
    bench.bench_ms = fake_timer
    shapes = bench.Shapes(
        heads=2, head_dim=16, block=8, check_lens=(19, 0, 7), prefill_tokens=(40,),
        decode_check_rows=6, decode_rows=4, decode_slots=8,
        experts=8, local_experts=2, expert_hidden=32, expert_inter=16, moe_check_tokens=(9,), moe_tokens=(9,),
    )
    run = bench.Run(fake_chunk_simple_gla, shapes, device="cpu")
    run.check_prefill()
    run.check_decode()
    run.check_moe()
    run.time_prefill()
    run.time_decode()
    run.time_moe()
    return run.failures, [(r.op, r.baseline) for r in run.rows]


def test_the_whole_flow_runs_on_the_interpreter_with_fakes(interp):
    failures, rows = interp.run(check_bench_flow)
    assert failures == []  # includes: fla's recurrence with g_gamma = -slope, scale = 1 is our reference
    assert rows == [
        ("prefill", "fla chunk_simple_gla"),
        ("prefill", "torch reference"),
        ("decode", "device copy, same bytes"),
        ("moe", "per-expert torch loop"),
    ]
