"""bench/sharded_step.py runs end to end (one small plan) and accounts the expected EP bytes."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
BENCH = Path(__file__).resolve().parents[2] / "bench" / "sharded_step.py"


def test_bench_prints_ratio_and_bytes(tmp_path):
    results = tmp_path / "RESULTS.md"
    proc = subprocess.run([sys.executable, str(BENCH), "--plans", "1x2", "--steps", "2", "--seqs", "3",
                           "--results", str(results)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # 2 x top-2 x hidden 64 x 3 tokens x 8 layers x 4 bytes
    assert "expected EP bytes per decode step = 2 x 2 x 64 x 3 x 8 x 4 = 24576" in proc.stdout
    row = next(line for line in proc.stdout.splitlines() if line.startswith("disaggregated(tp=1, ep=2)"))
    fields = row.split()
    assert fields[-1] == "yes"  # same greedy tokens as the baseline
    assert "24576" in fields and "1.000" in fields  # all pairs cross the world, exactly the expected bytes
    text = results.read_text()
    assert "## sharded_step.py" in text and "| disaggregated(tp=1, ep=2) | 3 |" in text
