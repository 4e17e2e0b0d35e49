"""The control plane for the cluster tests: one per module, torn down after it."""
from __future__ import annotations

import pytest

from tests.cluster.harness import ControlPlane, missing_binaries

GPU_NODES = 8
GPUS_PER_NODE = 4


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    missing = missing_binaries()
    if missing:
        pytest.skip(f"control-plane tools not found: {', '.join(missing)} (run scripts/build_cluster_tools.sh)")
    cp = ControlPlane(tmp_path_factory.mktemp("control-plane"))
    cp.start()
    try:
        cp.add_fake_nodes(GPU_NODES, "gpu", gpus=GPUS_PER_NODE, cpu="32", memory="256Gi",
                          labels={"nvidia.com/gpu.present": "true"})
        cp.add_fake_nodes(1, "cpu", cpu="16", memory="64Gi")
        with pytest.MonkeyPatch.context() as mp:
            for key, value in cp.env().items():
                mp.setenv(key, value)
            yield cp
    finally:
        cp.stop()
