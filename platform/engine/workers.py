"""The workers of a sharded model instance, and the expert-parallel data path between them.

- AttentionWorker (x tp): embedding, attention for H/tp heads, router gates, its share of the LM
  head, and the instance's state cache for those heads. World rank 0 is the leader: it receives
  each step (one Ray call) and broadcasts it to the other ranks over torch.distributed.
- ExpertWorker (x ep, disaggregated only): E/ep experts of every layer. It runs a persistent loop:
  receive a step, then for each MoE layer take part in the dispatch/combine all_to_all.
In the colocated placement an AttentionWorker also holds EP rank r's experts.

These are plain classes: the Ray-sharded instance (sharded.py) wraps them with `ray.remote`, and
tests can drive them in plain processes. Per-layer traffic is torch.distributed only (gloo on CPU,
NCCL on GPU); the control group that carries each step is always gloo.

Legend: T tokens of this rank, K experts per token, P (token, expert) pairs, R received rows,
W world size, Ep experts per expert rank, h hidden.
"""
from __future__ import annotations

import datetime
import math
import os
import socket
import threading
from dataclasses import dataclass

import torch
from torch import nn

from minimax_m1.engine.instance import CacheShape, StepRequest, StepResult, routing_counts, to_forward_batch
from minimax_m1.model_shards.checkpoint import SafetensorsCheckpoint
from minimax_m1.model_shards.config import MiniMaxM1Config
from minimax_m1.model_shards.layers import LocalExperts, prepare_cpu_experts
from minimax_m1.model_shards.shard_plan import ShardPlan
from minimax_m1.model_shards.tensor_parallel import TPGroup, apply_tp, load_sharded
from minimax_m1.model_shards.weights import load_into

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
STEP, STOP, HEARTBEAT = "step", "stop", "heartbeat"


@dataclass
class Traffic:
    """Bytes this rank put on the world for expert parallelism (self-sends excluded)."""

    dispatch_bytes: int = 0  # token hidden states sent to expert owners
    combine_bytes: int = 0  # expert outputs sent back
    count_bytes: int = 0  # the per-expert row counts exchanged before each dispatch
    self_bytes: int = 0  # rows a colocated rank routed to its own experts (never on the wire)


class ExpertExchange:
    """One MoE layer's dispatch and combine across the world.

    Every rank calls it for every MoE layer with its own tokens (none on a pure expert rank) and
    its own experts (none on a pure attention rank). Rows travel once per (token, expert) pair,
    grouped by destination and expert, so the receiver needs only a count per expert, not ids."""

    def __init__(self, rank: int, world_size: int, owners: list[int], device: torch.device):
        self.rank, self.world_size = rank, world_size
        self.num_experts = len(owners)
        self.per_rank = self.num_experts // len(set(owners))
        self.owners = torch.tensor(owners, dtype=torch.int64, device=device)  # [E] world rank of each expert
        self.device = device
        self.traffic = Traffic()

    def __call__(self, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, local: LocalExperts | None) -> torch.Tensor:
        import torch.distributed as dist

        t, k = ids.shape
        w, ep = self.world_size, self.per_rank
        flat = ids.flatten()  # [T*K], -1 = dropped by the routing threshold
        keep = flat >= 0
        order = torch.argsort(torch.where(keep, flat, self.num_experts), stable=True)[: int(keep.sum())]  # [P]
        pair_expert = flat[order]  # [P] ascending, so also grouped by owner rank
        pair_token = order // k  # [P]
        pair_weight = weights.flatten()[order].to(torch.float32)  # [P]
        send_counts = torch.zeros(w * ep, dtype=torch.int64, device=self.device)  # [W*Ep]
        send_counts.index_add_(0, self.owners[pair_expert] * ep + pair_expert % ep, torch.ones_like(pair_expert))
        recv_counts = torch.empty_like(send_counts)
        dist.all_to_all_single(recv_counts, send_counts)
        send_rows = send_counts.view(w, ep).sum(1).tolist()  # [W]
        recv_rows = recv_counts.view(w, ep).sum(1).tolist()
        received = x.new_empty(sum(recv_rows), x.shape[1])  # [R, h]
        dist.all_to_all_single(received, x[pair_token], recv_rows, send_rows)
        if received.shape[0]:
            if local is None:
                raise RuntimeError(f"rank {self.rank} holds no experts but was sent {received.shape[0]} rows")
            local_ids = torch.repeat_interleave(torch.arange(ep, device=self.device).repeat(w), recv_counts)  # [R]
            ones = torch.ones(received.shape[0], 1, dtype=torch.float32, device=self.device)
            received = local(received, (local_ids + local.expert_offset)[:, None], ones)  # [R, h]
        back = x.new_empty(len(pair_token), x.shape[1])  # [P, h]
        dist.all_to_all_single(back, received, send_rows, recv_rows)
        self._count(send_rows, recv_rows, x.shape[1] * x.element_size(), send_counts.element_size() * ep)
        out = torch.zeros(t, x.shape[1], dtype=torch.float32, device=x.device)  # [T, h]
        out.index_add_(0, pair_token, back.to(torch.float32) * pair_weight[:, None])
        return out.to(x.dtype)

    def _count(self, send_rows: list[int], recv_rows: list[int], row_bytes: int, counts_bytes: int) -> None:
        others = [r for r in range(self.world_size) if r != self.rank]
        self.traffic.dispatch_bytes += sum(send_rows[r] for r in others) * row_bytes
        self.traffic.combine_bytes += sum(recv_rows[r] for r in others) * row_bytes
        self.traffic.count_bytes += len(others) * counts_bytes
        self.traffic.self_bytes += 2 * send_rows[self.rank] * row_bytes


class ExpertDispatch(nn.Module):
    """Stands in for a layer's LocalExperts on an attention rank: this TP rank's share of the
    tokens goes through the exchange (so no token is sent twice), then the TP ranks gather."""

    def __init__(self, exchange: ExpertExchange, group: TPGroup):
        super().__init__()
        self.exchange = exchange
        self.group = group
        self.local: LocalExperts | None = None  # the colocated placement's own experts

    def forward(self, x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor) -> torch.Tensor:
        t = x.shape[0]
        per = math.ceil(t / self.group.size)
        a, b = min(t, self.group.rank * per), min(t, (self.group.rank + 1) * per)
        mine = self.exchange(x[a:b], topk_ids[a:b], topk_weights[a:b], self.local)  # [b-a, h]
        if self.group.size == 1:
            return mine
        padded = x.new_zeros(per, x.shape[1])
        padded[: b - a] = mine
        return self.group.all_gather(padded)[:t]  # [T, h]


# ---- building shards ---------------------------------------------------------------------------------
def build_attention_shard(config: MiniMaxM1Config, ckpt: SafetensorsCheckpoint, plan: ShardPlan, tp_rank: int,
                          group: TPGroup, exchange: ExpertExchange | None, dtype: torch.dtype, device: torch.device):
    """A MiniMaxM1ForCausalLM holding TP rank `tp_rank`'s attention, with its experts replaced by
    dispatchers. Built on the meta device, so nothing full-size is ever allocated."""
    from minimax_m1.model_shards.model import MiniMaxM1ForCausalLM

    with torch.device("meta"):
        model = MiniMaxM1ForCausalLM(config)
    shards = apply_tp(model, plan, tp_rank, group)
    for layer in model.model.layers:
        layer.block_sparse_moe.experts = ExpertDispatch(exchange, group)
    model.to(dtype)
    model.lm_head.to(torch.float32)  # the LM head runs in fp32
    model.to_empty(device=device)
    load_sharded(model, ckpt, config, shards, skip=(".block_sparse_moe.experts.",))
    return model.eval()


def build_expert_shard(config: MiniMaxM1Config, ckpt: SafetensorsCheckpoint, plan: ShardPlan, ep_rank: int,
                       dtype: torch.dtype, device: torch.device) -> list[LocalExperts]:
    """EP rank `ep_rank`'s experts of every layer, read from the checkpoint and nothing else."""
    experts = plan.experts_of(ep_rank, config.num_local_experts)
    root = nn.Module()  # named like the full model, so the checkpoint's name mapping applies
    root.model = nn.Module()
    root.model.layers = nn.ModuleList()
    with torch.device(device):
        for _ in range(config.num_hidden_layers):
            layer = nn.Module()
            layer.block_sparse_moe = nn.Module()
            layer.block_sparse_moe.experts = LocalExperts(len(experts), config.hidden_size, config.intermediate_size,
                                                          experts.start).to(dtype)
            root.model.layers.append(layer)
    load_into(root, ckpt, config)
    prepare_cpu_experts(root)
    return [layer.block_sparse_moe.experts for layer in root.model.layers]


# ---- workers --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs to build itself; crosses the Ray boundary."""

    model_path: str
    plan: ShardPlan
    rank: int
    cache_shape: CacheShape
    dtype: str = "float32"
    use_gpu: bool = False
    collective_timeout_s: float = 30.0  # a step's collectives fail after this long without progress
    idle_timeout_s: float = 86_400.0  # how long non-leaders wait for the next step


class ShardWorker:
    """What every worker does: join the world, load its shard, take steps from the leader."""

    def __init__(self, spec: WorkerSpec):
        torch.set_num_threads(1)
        self.spec = spec
        self.role = spec.plan.role(spec.rank)
        self.config = MiniMaxM1Config.from_pretrained(spec.model_path)
        spec.plan.validate(self.config)
        self.dtype = _DTYPES[spec.dtype]
        if spec.use_gpu:
            torch.cuda.set_device(0)  # Ray exposes the bundle's one GPU as device 0
            self.device = torch.device("cuda", 0)
        else:
            self.device = torch.device("cpu")
        self.exchange: ExpertExchange | None = None
        self.tp_group: TPGroup | None = None
        self.reads: list[tuple[str, int, int]] = []  # checkpoint byte ranges this worker read
        self._control = None
        self._lead_lock = threading.Lock()
        # Held while a non-leader runs a step: the leader's step returns once the last exchange is
        # done, a moment before the others count it, so reading or resetting the counters waits.
        self._step_lock = threading.Lock()

    # ---- world ----------------------------------------------------------------------------------
    def ping(self) -> dict:
        return {"rank": self.spec.rank, "kind": self.role.kind, "pid": os.getpid(), "host": socket.gethostname()}

    def address(self) -> tuple[str, int]:
        """The leader's rendezvous address: this node's IP and a TCP port free right now."""
        host = "127.0.0.1"
        try:
            import ray

            if ray.is_initialized():
                host = ray.util.get_node_ip_address()
        except ImportError:
            pass
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            return host, s.getsockname()[1]

    def join(self, host: str, port: int) -> None:
        import torch.distributed as dist

        plan = self.spec.plan
        dist.init_process_group("nccl" if self.spec.use_gpu else "gloo", init_method=f"tcp://{host}:{port}",
                                rank=self.spec.rank, world_size=plan.world_size,
                                timeout=datetime.timedelta(seconds=self.spec.collective_timeout_s))
        # Every rank creates every group, in the same order.
        self._control = dist.new_group(list(range(plan.world_size)), backend="gloo",
                                       timeout=datetime.timedelta(seconds=self.spec.idle_timeout_s))
        tp_pg = dist.new_group(plan.attention_ranks, timeout=datetime.timedelta(seconds=self.spec.collective_timeout_s))
        tp_rank = self.role.tp_rank if self.role.has_attention else 0
        self.tp_group = TPGroup(tp_rank, plan.tp, tp_pg)
        self.exchange = ExpertExchange(self.spec.rank, plan.world_size, plan.expert_map(self.config.num_local_experts),
                                       self.device)

    def leave(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()

    def _receive(self):
        import torch.distributed as dist

        box = [None]
        dist.broadcast_object_list(box, src=0, group=self._control)
        return box[0]

    def _send(self, kind: str, payload) -> None:
        import torch.distributed as dist

        dist.broadcast_object_list([(kind, payload)], src=0, group=self._control)

    def serve(self) -> int:
        """Non-leaders: take steps from the leader until it says stop. Returns the step count."""
        if self.spec.rank == 0:
            raise RuntimeError("the leader (rank 0) takes steps through step(), not serve()")
        steps = 0
        while True:
            kind, payload = self._receive()
            if kind == STOP:
                return steps
            if kind == HEARTBEAT:
                continue
            with self._step_lock:
                self._run(payload)
            steps += 1

    def _run(self, request: StepRequest):
        raise NotImplementedError

    def _open_checkpoint(self) -> SafetensorsCheckpoint:
        return SafetensorsCheckpoint(self.spec.model_path)

    def _record_reads(self, ckpt: SafetensorsCheckpoint) -> None:
        self.reads += [(os.path.basename(r.file), r.begin, r.end) for r in ckpt.reads]

    # ---- observability ------------------------------------------------------------------------------
    def read_log(self) -> list[tuple[str, int, int]]:
        return list(self.reads)

    def traffic(self) -> dict:
        with self._step_lock:  # a step in flight on this rank counts first
            out = dict(vars(self.exchange.traffic)) if self.exchange else {}
            out["tp_bytes"] = self.tp_group.bytes_sent if self.tp_group and self.role.has_attention else 0
            return out

    def reset_traffic(self) -> None:
        with self._step_lock:
            if self.exchange:
                self.exchange.traffic = Traffic()
            if self.tp_group:
                self.tp_group.bytes_sent = 0


class AttentionWorker(ShardWorker):
    """TP rank r of attention (and, colocated, EP rank r of the experts), with its cache."""

    def load(self) -> dict:
        from minimax_m1.engine.paged_cache import PagedCache

        plan, config = self.spec.plan, self.config
        with self._open_checkpoint() as ckpt:
            self.model = build_attention_shard(config, ckpt, plan, self.role.tp_rank, self.tp_group, self.exchange,
                                               self.dtype, self.device)
            if self.role.has_experts:
                local = build_expert_shard(config, ckpt, plan, self.role.ep_rank, self.dtype, self.device)
                for layer, experts in zip(self.model.model.layers, local):
                    layer.block_sparse_moe.experts.local = experts
            self._record_reads(ckpt)
        shape = self.spec.cache_shape
        self.cache = PagedCache(config, shape.num_slots, shape.num_blocks, shape.block_size, self.dtype, self.device,
                                num_heads=len(plan.heads_of(self.role.tp_rank, config.num_attention_heads)),
                                num_kv_heads=len(plan.kv_heads_of(self.role.tp_rank, config.num_key_value_heads)))
        return {"rank": self.spec.rank, "bytes_read": sum(e - b for _, b, e in self.reads)}

    def step(self, request: StepRequest) -> StepResult:
        """Leader only: broadcast the step to every rank, run it, return the logits."""
        with self._leading():
            self._send(STEP, request)
            return self._run(request)

    def heartbeat(self) -> None:
        """Leader only: an empty message through the control group. It proves the world still
        carries messages and restarts the non-leaders' idle timeout."""
        with self._leading():
            self._send(HEARTBEAT, None)

    def stop(self) -> None:
        """Leader only: end the other ranks' loops."""
        with self._leading():
            self._send(STOP, None)

    def _leading(self) -> threading.Lock:
        # The actor runs two calls at once (so pings answer during a step); control messages
        # must still go out one at a time, in order.
        if self.spec.rank != 0:
            raise RuntimeError(f"steps and control messages go to the leader (rank 0), not rank {self.spec.rank}")
        return self._lead_lock

    @torch.inference_mode()
    def _run(self, request: StepRequest) -> StepResult:
        batch = to_forward_batch(request, self.device)
        self.cache.set_block_tables(dict(zip(request.slots, request.block_tables)))
        ids = torch.tensor(request.token_ids, dtype=torch.long, device=self.device)
        out = self.model.step(ids, batch, self.cache)
        counts = None
        if request.collect_routing:
            counts = routing_counts(out.expert_ids, batch.cu_seqlens, self.config.num_local_experts)
        return StepResult(out.logits.cpu(), counts)


class ExpertWorker(ShardWorker):
    """EP rank j: E/ep experts of every layer, serving the dispatch/combine of each MoE layer."""

    def load(self) -> dict:
        with self._open_checkpoint() as ckpt:
            self.experts = build_expert_shard(self.config, ckpt, self.spec.plan, self.role.ep_rank, self.dtype,
                                              self.device)
            self._record_reads(ckpt)
        return {"rank": self.spec.rank, "bytes_read": sum(e - b for _, b, e in self.reads)}

    @torch.inference_mode()
    def _run(self, request: StepRequest) -> None:
        h, k = self.config.hidden_size, self.config.num_experts_per_tok
        none = torch.empty(0, h, dtype=self.dtype, device=self.device)
        no_ids = torch.empty(0, k, dtype=torch.int64, device=self.device)
        no_weights = torch.empty(0, k, dtype=torch.float32, device=self.device)
        for experts in self.experts:  # every layer has a MoE, in order
            self.exchange(none, no_ids, no_weights, experts)


def worker_class(plan: ShardPlan, rank: int) -> type[ShardWorker]:
    return AttentionWorker if plan.role(rank).has_attention else ExpertWorker


__all__ = ["AttentionWorker", "ExpertWorker", "ShardWorker", "WorkerSpec", "ExpertExchange", "ExpertDispatch",
           "Traffic", "build_attention_shard", "build_expert_shard", "worker_class", "STEP", "STOP", "HEARTBEAT"]
