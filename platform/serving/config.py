"""ServingConfig: the `args` of `build_app`, as the Helm chart renders them into serveConfigV2.

    {"model": {"uri": "...", "name": "..."},                    # or "path" instead of "uri"
     "plan": {"tp": 1, "ep": 1, "placement": "disaggregated",
              "gpus_per_attention_worker": 0, "gpus_per_expert_worker": 0},
     "engine": {"max_num_seqs": 32, "max_batch_tokens": 1024, "prefill_chunk_size": 256,
                "kv_block_size": 16, "num_kv_blocks": 2048, "num_state_slots": 0},
     "autoscaling_config": {...}}                              # passed to Ray Serve as is

Every field is optional; the model defaults to the embedded demo model. Unknown fields are errors
that name the field.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any, Mapping
from urllib.parse import urlparse

from minimax_m1.engine.engine import EngineConfig

PLACEMENTS = ("disaggregated", "colocated")


def _reject_unknown(cls, data: Mapping[str, Any], prefix: str) -> None:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown serving config field(s) {[prefix + u for u in unknown]}; known: {sorted(known)}")


@dataclass(frozen=True, slots=True)
class ModelConfig:
    path: str = ""  # a local checkpoint folder ("" = the embedded demo model)
    name: str = "minimax-m1"  # the name ListModels reports and requests may use

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> "ModelConfig":
        data = dict(data or {})
        uri = data.pop("uri", None)
        if uri and data.get("path"):
            raise ValueError("serving config: give model.uri or model.path, not both")
        _reject_unknown(cls, data, "model.")
        if uri:
            parsed = urlparse(uri)
            if parsed.scheme not in ("", "file"):
                raise ValueError(f"model.uri scheme {parsed.scheme!r} is not supported here: mount the checkpoint "
                                 f"and use a file:// URI or a path")
            data["path"] = parsed.path if parsed.scheme == "file" else uri
        return cls(**data)

    def resolve_path(self) -> str:
        if not self.path:
            from minimax_m1.model_shards.demo import default_model_path

            return default_model_path()
        if not os.path.isfile(os.path.join(self.path, "config.json")):
            raise ValueError(f"model.path {self.path!r} holds no config.json")
        return self.path


@dataclass(frozen=True, slots=True)
class PlanConfig:
    tp: int = 1
    ep: int = 1
    placement: str = "disaggregated"
    gpus_per_attention_worker: float = 0
    gpus_per_expert_worker: float = 0
    cpus_per_worker: float = 1

    def __post_init__(self) -> None:
        for name in ("tp", "ep"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"serving config field 'plan.{name}' must be an integer >= 1, got {value!r}")
        if self.placement not in PLACEMENTS:
            raise ValueError(f"serving config field 'plan.placement' must be one of {PLACEMENTS}, got {self.placement!r}")
        for name in ("gpus_per_attention_worker", "gpus_per_expert_worker", "cpus_per_worker"):
            if getattr(self, name) < 0:
                raise ValueError(f"serving config field 'plan.{name}' must be >= 0")

    @property
    def in_process(self) -> bool:
        """tp = ep = 1 without GPUs asked for workers: the whole model lives in the replica."""
        return self.tp == self.ep == 1 and not (self.gpus_per_attention_worker or self.gpus_per_expert_worker)

    def shard_plan(self):
        from minimax_m1.model_shards.shard_plan import ShardPlan

        return ShardPlan(tp=self.tp, ep=self.ep, placement=self.placement)

    def worker_bundles(self) -> list[dict[str, float]]:
        """One bundle per worker in world-rank order (attention ranks, then expert ranks)."""
        plan = self.shard_plan()
        bundles = []
        for rank in range(plan.world_size):
            role = plan.role(rank)
            gpus = max(self.gpus_per_attention_worker if role.has_attention else 0,
                       self.gpus_per_expert_worker if role.has_experts else 0)
            bundle = {"CPU": float(self.cpus_per_worker)}
            if gpus:
                bundle["GPU"] = float(gpus)
            bundles.append(bundle)
        return bundles


@dataclass(frozen=True, slots=True)
class ServingConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    autoscaling_config: dict | None = None
    replica_cpus: float = 1.0  # CPUs of the Engine replica itself (its torch threads in-process)

    @classmethod
    def from_args(cls, args: Mapping[str, Any] | None) -> "ServingConfig":
        args = dict(args or {})
        _reject_unknown(cls, args, "")
        plan = dict(args.get("plan") or {})
        _reject_unknown(PlanConfig, plan, "plan.")
        return cls(model=ModelConfig.from_mapping(args.get("model")), plan=PlanConfig(**plan),
                   engine=EngineConfig.from_mapping(args.get("engine")),
                   autoscaling_config=dict(args["autoscaling_config"]) if args.get("autoscaling_config") else None,
                   replica_cpus=float(args.get("replica_cpus", 1.0)))


__all__ = ["ServingConfig", "ModelConfig", "PlanConfig", "EngineConfig"]
