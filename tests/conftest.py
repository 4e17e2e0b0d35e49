"""Project-wide pytest settings: small torch thread pools so parallel suites share 2 cores."""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_REFERENCE = os.path.join(os.path.dirname(REPO_ROOT), "shared", "reference")


def pytest_configure(config):
    # Servers built in the test process must not gc.freeze it: it outlives many of them. (A hook, not
    # module code: benchmarks import this module for REPO_ROOT and keep the deployed default.)
    os.environ.setdefault("MINIMAX_M1_GC_FREEZE", "0")
