"""Package layout rules from DESIGN.md section 2."""
import os
import subprocess
import sys

from tests.conftest import REPO_ROOT


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.strip()


def test_platform_folder_does_not_shadow_the_standard_library():
    assert not os.path.exists(os.path.join(REPO_ROOT, "platform", "__init__.py"))
    path = _run("import platform; print(platform.__file__)")
    assert not path.startswith(REPO_ROOT) and path.endswith("platform.py")


def test_import_minimax_m1_imports_neither_torch_nor_ray():
    out = _run("import sys, minimax_m1; print(sorted(m for m in ('torch', 'ray', 'triton') if m in sys.modules))")
    assert out == "[]"


def test_model_names_are_reexported_lazily():
    out = _run("import sys, minimax_m1; c = minimax_m1.MiniMaxM1ForCausalLM; print(c.__module__, 'torch' in sys.modules)")
    assert out == "minimax_m1.model_shards.model True"


def test_subpackages_map_to_their_folders():
    out = _run("import minimax_m1.engine, minimax_m1.kernels, minimax_m1.cli; print(minimax_m1.engine.__file__, minimax_m1.kernels.__file__)")
    engine, kernels = out.split()
    assert engine == os.path.join(REPO_ROOT, "platform", "engine", "__init__.py")
    assert kernels == os.path.join(REPO_ROOT, "kernels", "__init__.py")
