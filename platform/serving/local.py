"""A local Ray cluster running the app with Serve's gRPC proxy (the CLI's `serve` and the tests).

    cluster = LocalServe.start(args, grpc_port=9000)   # ray.init + serve.start + serve.run
    cluster.target                                     # "127.0.0.1:<grpc_port>"
    cluster.stop()
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from minimax_m1.serving.app import GRPC_SERVICER_FUNCTIONS, build_app

APP_NAME = "minimax-m1"
log = logging.getLogger(__name__)


def _init_local_ray(num_cpus: int | None, attempts: int = 2) -> None:
    """Start a local Ray. Ray gives a new raylet a fixed 30 s to register with its GCS, and on a
    busy machine one now and then never does ("The current node timed out during startup"): that
    case gets one more attempt after a clean shutdown; any other error is raised at once."""
    import ray

    for attempt in range(1, attempts + 1):
        try:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
            return
        except Exception as exc:
            if "timed out during startup" not in str(exc) or attempt == attempts:
                raise
            log.warning("local Ray did not start (%s); trying again", exc)
            ray.shutdown()


@dataclass
class LocalServe:
    grpc_port: int
    http_port: int
    owns_ray: bool

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @classmethod
    def start(cls, args: dict, grpc_port: int, http_port: int, num_cpus: int | None = None,
              ready_timeout_s: float = 300.0) -> "LocalServe":
        import ray
        from ray import serve
        from ray.serve.config import HTTPOptions, gRPCOptions

        owns_ray = not ray.is_initialized()
        if owns_ray:
            _init_local_ray(num_cpus)
        serve.start(http_options=HTTPOptions(host="127.0.0.1", port=http_port),
                    grpc_options=gRPCOptions(port=grpc_port, grpc_servicer_functions=GRPC_SERVICER_FUNCTIONS))
        # A route prefix makes the app routable; as the only app, gRPC calls need no `application` metadata.
        serve.run(build_app(args), name=APP_NAME, route_prefix="/", blocking=False)
        cluster = cls(grpc_port, http_port, owns_ray)
        cluster.wait_ready(ready_timeout_s)
        return cluster

    def wait_ready(self, timeout_s: float) -> None:
        """Until the gRPC proxy answers ListModels (the replica is up and the route is known)."""
        import grpc

        from minimax_m1._generated import generation_pb2 as pb
        from minimax_m1._generated import generation_pb2_grpc as pb_grpc

        deadline = time.monotonic() + timeout_s
        last = None
        with grpc.insecure_channel(self.target) as channel:
            stub = pb_grpc.GenerationStub(channel)
            while time.monotonic() < deadline:
                try:
                    stub.ListModels(pb.ListModelsRequest(), timeout=10)
                    return
                except grpc.RpcError as exc:
                    last = exc
                    time.sleep(0.5)
        raise TimeoutError(f"Serve gRPC ingress on {self.target} not ready after {timeout_s:.0f} s: {last}")

    def stop(self) -> None:
        import ray
        from ray import serve

        serve.shutdown()
        if self.owns_ray:
            ray.shutdown()
