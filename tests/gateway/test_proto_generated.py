"""The checked-in generated code is what the proto gives: regenerating changes nothing."""
import subprocess
import sys

from tests.conftest import REPO_ROOT


def test_regenerating_the_stubs_gives_no_diff():
    result = subprocess.run([sys.executable, "scripts/gen_proto.py", "--check"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
