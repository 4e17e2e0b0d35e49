"""GPU check and timings of the Triton kernels against their baselines, measured in the same run.

    python bench/gpu_kernels.py [--tp 8] [--fla-wheels DIR] [--quick] [--no-write]

Needs a CUDA GPU, torch and Triton; nothing else (no Ray, no install of this repo, no network).
1. Correctness at M1-like sizes (H = 64 / tp heads, head dim 128, block 256; experts with hidden
   6144 and intermediate 9216): each Triton kernel against its torch reference, and fla's
   chunk_simple_gla (when present) against the same reference, as relative errors.
2. Timings, medians of triton.testing.do_bench:
   - prefill at 4K, 32K and 128K tokens: ours vs fla's chunk_simple_gla with MiniMax's decay
     (g_gamma = -slope, scale = 1.0) and vs the torch reference;
   - decode: achieved bandwidth on the state pool vs a device-to-device copy of the same bytes;
   - MoE experts: ours vs the per-expert torch loop (the reference op).
3. Prints a table and adds its rows, naming the card, to bench/RESULTS.md.

fla is not installed on the GPU machines: without it the fla column is skipped with a message.
--fla-wheels DIR unpacks every *.whl in DIR (e.g. fla_core and einops, fetched elsewhere with
`pip download --no-deps fla-core einops -d DIR`) into a temporary folder on sys.path; no pip, no
network.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib
import importlib.util
import itertools
import math
import sys
import tempfile
import types
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "RESULTS.md"
SECTION = "## gpu_kernels.py"
END_MARKER = "<!-- end of gpu_kernels.py rows -->"
TABLE_HEADER = (
    "| date (UTC) | card | torch / triton | op | size | ours | baseline | baseline value | ratio | note |\n"
    "|---|---|---|---|---|---|---|---|---|---|"
)


@dataclass(frozen=True)
class Shapes:
    """What the run checks and times. The defaults are M1's (DESIGN.md section 3)."""

    heads: int = 8  # 64 query heads / tp
    head_dim: int = 128
    block: int = 256
    check_lens: tuple[int, ...] = (4096 + 17, 0, 1000, 3001)  # ragged, one empty, none a block multiple
    prefill_tokens: tuple[int, ...] = (4096, 32768, 131072)
    decode_check_rows: int = 64
    decode_rows: int = 256
    decode_slots: int = 1024
    experts: int = 32  # global experts; ids of experts on other EP ranks are skipped
    local_experts: int = 8
    top_k: int = 2
    expert_hidden: int = 6144
    expert_inter: int = 9216
    moe_check_tokens: tuple[int, ...] = (64, 1024)
    moe_tokens: tuple[int, ...] = (64, 4096)


M1_HEADS, M1_LAYERS = 64, 80


# ----------------------------------------------------------------------------------------------
# Loading: our kernels without the SDK, fla from carried wheels
# ----------------------------------------------------------------------------------------------
def import_kernels() -> types.ModuleType:
    """The repo's kernels/ as `minimax_m1.kernels`, without installing the repo or importing the
    SDK that `minimax_m1` normally is (it needs grpc, which a GPU machine may lack)."""
    if "minimax_m1.kernels" in sys.modules:
        return sys.modules["minimax_m1.kernels"]
    if "minimax_m1" not in sys.modules:
        parent = types.ModuleType("minimax_m1")
        parent.__path__ = []  # a namespace holding only what is registered below
        sys.modules["minimax_m1"] = parent
    kernels_dir = REPO / "kernels"
    spec = importlib.util.spec_from_file_location(
        "minimax_m1.kernels", kernels_dir / "__init__.py", submodule_search_locations=[str(kernels_dir)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["minimax_m1.kernels"] = module
    spec.loader.exec_module(module)
    return module


def load_wheels(directory: Path) -> Path:
    """Unpack every *.whl in directory into a fresh temporary folder put first on sys.path."""
    wheels = sorted(Path(directory).glob("*.whl"))
    if not wheels:
        raise SystemExit(f"gpu_kernels: --fla-wheels {directory}: no .whl files there")
    target = Path(tempfile.mkdtemp(prefix="gpu-kernels-wheels-"))
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(target)
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    return target


def find_fla() -> Callable | None:
    """fla's chunk_simple_gla, or None with a message saying why the fla column is skipped."""
    try:
        from fla.ops.simple_gla import chunk_simple_gla
    except ImportError as exc:
        print(f"fla not available ({exc}): skipping the fla column; pass --fla-wheels DIR to carry it in")
        return None
    return chunk_simple_gla


def fla_prefill(chunk_simple_gla: Callable, q, k, v, slope, initial_state):
    """One sequence through fla with MiniMax's decay. q, k, v [N, H, D]; initial_state [H, D, D].

    fla's simple GLA keeps S_t = exp(g_gamma) S_{t-1} + k_t^T v_t and o_t = scale * q_t S_t, so
    g_gamma = -slope and scale = 1 give lightning attention exactly. Returns (out [N, H, D], final).
    """
    out, final = chunk_simple_gla(
        q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0),  # [1, N, H, D]
        g_gamma=-slope.to(torch.float32),
        scale=1.0,
        initial_state=initial_state.unsqueeze(0),  # [1, H, D, D]
        output_final_state=True,
    )
    return out.squeeze(0), final.squeeze(0)


# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------
def m1_slopes(num_heads: int, layer: int, num_layers: int = M1_LAYERS) -> torch.Tensor:
    """The release's per-head decay for a power-of-two head count, times the layer factor."""
    base = torch.tensor([2.0 ** (-8.0 * (h + 1) / num_heads) for h in range(num_heads)])
    return base * (1 - layer / (num_layers - 1) + 1e-5)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    ref64 = ref.to(torch.float64)
    return ((out.to(torch.float64) - ref64).norm() / ref64.norm().clamp_min(1e-30)).item()




# ----------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------
@dataclass
class Row:
    op: str
    size: str
    ours: str
    baseline: str
    baseline_value: str
    ratio: str
    note: str = ""

    def cells(self) -> list[str]:
        return [self.op, self.size, self.ours, self.baseline, self.baseline_value, self.ratio, self.note]


def print_table(rows: list[Row]) -> None:
    header = ["op", "size", "ours", "baseline", "baseline value", "ratio", "note"]
    table = [header] + [r.cells() for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for i, line in enumerate(table):
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths)))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def results_lines(rows: list[Row], card: str, versions: str, when: datetime.datetime) -> list[str]:
    stamp = when.strftime("%Y-%m-%d %H:%M")
    return ["| " + " | ".join([stamp, card, versions, *r.cells()]) + " |" for r in rows]


def append_rows(path: Path, lines: list[str]) -> None:
    """Add table lines to this script's section of RESULTS.md, creating the section if missing."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    if END_MARKER not in text:
        text = text.rstrip("\n") + f"\n\n{SECTION}\n\n{TABLE_HEADER}\n{END_MARKER}\n"
    before, after = text.split(END_MARKER, 1)
    path.write_text(before + "".join(line + "\n" for line in lines) + END_MARKER + after)


# ----------------------------------------------------------------------------------------------
# Measurements
# ----------------------------------------------------------------------------------------------
def bench_ms(fn: Callable[[], object]) -> float:
    """Median milliseconds of fn, after one untimed call that compiles and autotunes."""
    import triton.testing

    fn()
    torch.cuda.synchronize()
    return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))


class Run:
    """The checks and timings of one run; rows and failures collect on it."""

    def __init__(self, chunk_simple_gla: Callable | None, shapes: Shapes, device: str = "cuda"):
        self.fla = chunk_simple_gla
        self.shapes = shapes
        self.device = device
        # TP rank 0's heads at layer 0, where the decay is strongest
        self.slope = m1_slopes(M1_HEADS, layer=0)[: shapes.heads].to(device)
        self.failures: list[str] = []
        self.rows: list[Row] = []

    # ---- inputs
    def gen(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(seed)

    def qkv(self, n: int, dtype: torch.dtype, seed: int) -> list[torch.Tensor]:
        gen, sh = self.gen(seed), self.shapes
        # silu(projection) in the model: mostly positive values of order one
        return [torch.nn.functional.silu(torch.randn(n, sh.heads, sh.head_dim, device=self.device, generator=gen))
                .mul(0.3).to(dtype) for _ in range(3)]

    def states(self, count: int, seed: int) -> torch.Tensor:
        sh = self.shapes
        return torch.randn(count, sh.heads, sh.head_dim, sh.head_dim, device=self.device, generator=self.gen(seed)) * 0.1

    def routing(self, t: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        logits = torch.randn(t, self.shapes.experts, device=self.device, generator=self.gen(seed))
        weights, ids = torch.softmax(logits, dim=-1).topk(self.shapes.top_k, dim=-1)
        return ids, weights / weights.sum(dim=-1, keepdim=True)

    def moe_weights(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        sh, gen = self.shapes, self.gen(5)
        e, h, i = sh.local_experts, sh.expert_hidden, sh.expert_inter
        w13 = (torch.randn(e, 2 * i, h, device=self.device, generator=gen) / h**0.5).to(dtype)
        w2 = (torch.randn(e, h, i, device=self.device, generator=gen) / i**0.5).to(dtype)
        return w13, w2

    def expert_offset(self) -> int:
        return self.shapes.local_experts  # the second EP rank's experts

    def fp32_bound(self) -> float:
        return 1e-3 if torch.backends.cuda.matmul.allow_tf32 else 1e-5

    def check(self, what: str, err: float, tol: float) -> None:
        ok = math.isfinite(err) and err < tol
        print(f"  {'ok  ' if ok else 'FAIL'} {what}: rel err {err:.2e} (bound {tol:.0e})")
        if not ok:
            self.failures.append(what)

    # ---- correctness
    def check_prefill(self) -> None:
        from minimax_m1.kernels.lightning_ref import lightning_prefill_ref
        from minimax_m1.kernels.triton_lightning import lightning_prefill_triton

        sh = self.shapes
        lens = list(sh.check_lens)
        cu = torch.tensor([0, *itertools.accumulate(lens)], device=self.device, dtype=torch.int32)
        init = self.states(len(lens), seed=0)
        for dtype, tol in ((torch.bfloat16, 1e-2), (torch.float32, self.fp32_bound())):
            q, k, v = self.qkv(sum(lens), dtype, seed=1)
            ref_out, ref_final = lightning_prefill_ref(q, k, v, self.slope, cu, init, sh.block)
            out = torch.full_like(q, float("nan"))
            final = torch.full_like(init, float("nan"))
            lightning_prefill_triton(q, k, v, self.slope, cu, init, sh.block, out=out, final_states=final)
            name = str(dtype).removeprefix("torch.")
            self.check(f"prefill {name} out, lens {lens}", rel_err(out, ref_out), tol)
            self.check(f"prefill {name} final states", rel_err(final, ref_final), tol)
        if self.fla is not None:
            n = lens[0]
            q, k, v = self.qkv(n, torch.bfloat16, seed=2)
            one = torch.tensor([0, n], device=self.device, dtype=torch.int32)
            ref_out, ref_final = lightning_prefill_ref(q, k, v, self.slope, one, init[:1], sh.block)
            fla_out, fla_final = fla_prefill(self.fla, q, k, v, self.slope, init[0])
            what = "fla chunk_simple_gla bf16 out (the baseline computes the same thing)"
            self.check(what, rel_err(fla_out, ref_out), 1e-2)
            self.check("fla chunk_simple_gla final state", rel_err(fla_final, ref_final[0]), 1e-2)

    def check_decode(self) -> None:
        from minimax_m1.kernels.lightning_ref import lightning_decode_ref
        from minimax_m1.kernels.triton_lightning import lightning_decode_triton

        sh = self.shapes
        rows, slots = sh.decode_check_rows, sh.decode_slots
        slot_ids = torch.randperm(slots, device=self.device, generator=self.gen(3))[:rows].to(torch.int32)
        slot_ids[::5] = -1  # padding rows
        pool = self.states(slots, seed=3)
        for dtype, tol in ((torch.bfloat16, 1e-2), (torch.float32, self.fp32_bound())):
            q, k, v = self.qkv(rows, dtype, seed=4)
            ref_pool, ours_pool = pool.clone(), pool.clone()
            ref = lightning_decode_ref(q, k, v, self.slope, ref_pool, slot_ids.long())
            out = torch.full_like(q, float("nan"))
            lightning_decode_triton(q, k, v, self.slope, ours_pool, slot_ids, out=out)
            name = str(dtype).removeprefix("torch.")
            self.check(f"decode {name} out, {rows} rows with padding", rel_err(out, ref), tol)
            self.check(f"decode {name} pool", rel_err(ours_pool, ref_pool), tol)

    def check_moe(self) -> None:
        from minimax_m1.kernels.moe_ref import moe_experts_ref
        from minimax_m1.kernels.triton_moe import moe_experts_triton

        sh = self.shapes
        w13, w2 = self.moe_weights(torch.bfloat16)
        for t in sh.moe_check_tokens:
            x = torch.randn(t, sh.expert_hidden, device=self.device, generator=self.gen(t)).to(torch.bfloat16)
            ids, weights = self.routing(t, seed=t)
            ref = moe_experts_ref(x, ids, weights, w13, w2, self.expert_offset())
            out = torch.full_like(x, float("nan"))
            moe_experts_triton(x, ids, weights, w13, w2, self.expert_offset(), out=out)
            what = f"moe bf16 {t} tokens, {sh.local_experts} local experts of {sh.experts}"
            self.check(what, rel_err(out, ref), 1e-2)

    # ---- timings
    def time_prefill(self) -> None:
        from minimax_m1.kernels.lightning_ref import lightning_prefill_ref
        from minimax_m1.kernels.triton_lightning import lightning_prefill_triton

        sh = self.shapes
        init = torch.zeros(1, sh.heads, sh.head_dim, sh.head_dim, device=self.device)
        for n in sh.prefill_tokens:
            q, k, v = self.qkv(n, torch.bfloat16, seed=n)
            cu = torch.tensor([0, n], device=self.device, dtype=torch.int32)
            ours = bench_ms(lambda: lightning_prefill_triton(q, k, v, self.slope, cu, init, sh.block))
            size = f"{n / 1024:g}K tokens, H={sh.heads}, bf16"
            mine = f"{ours:.3f} ms"
            if self.fla is not None:
                fla = bench_ms(lambda: fla_prefill(self.fla, q, k, v, self.slope, init[0]))
                self.rows.append(Row("prefill", size, mine, "fla chunk_simple_gla", f"{fla:.3f} ms", f"{fla / ours:.2f}x"))
            else:
                self.rows.append(Row("prefill", size, mine, "fla chunk_simple_gla", "-", "-", "fla not available"))
            ref = bench_ms(lambda: lightning_prefill_ref(q, k, v, self.slope, cu, init, sh.block))
            self.rows.append(Row("prefill", size, mine, "torch reference", f"{ref:.3f} ms", f"{ref / ours:.2f}x"))

    def time_decode(self) -> None:
        from minimax_m1.kernels.triton_lightning import lightning_decode_triton

        sh = self.shapes
        rows, slots = sh.decode_rows, sh.decode_slots
        slot_ids = torch.randperm(slots, device=self.device, generator=self.gen(6))[:rows].to(torch.int32)
        pool = self.states(slots, seed=6)
        q, k, v = self.qkv(rows, torch.bfloat16, seed=7)
        state_bytes = rows * sh.heads * sh.head_dim * sh.head_dim * 4  # each read once and written once
        ours = bench_ms(lambda: lightning_decode_triton(q, k, v, self.slope, pool, slot_ids))
        src = torch.zeros(state_bytes // 4, device=self.device)
        dst = torch.empty_like(src)
        copy = bench_ms(lambda: dst.copy_(src))
        ours_bw, copy_bw = 2 * state_bytes / ours / 1e6, 2 * state_bytes / copy / 1e6  # GB/s
        size = f"{rows} rows, pool {slots}, H={sh.heads}, bf16 qkv, fp32 state"
        self.rows.append(Row("decode", size, f"{ours_bw:.0f} GB/s ({ours:.3f} ms)", "device copy, same bytes",
                             f"{copy_bw:.0f} GB/s ({copy:.3f} ms)", f"{ours_bw / copy_bw:.0%}"))

    def time_moe(self) -> None:
        from minimax_m1.kernels.moe_ref import moe_experts_ref
        from minimax_m1.kernels.triton_moe import moe_experts_triton

        sh = self.shapes
        w13, w2 = self.moe_weights(torch.bfloat16)
        offset = self.expert_offset()
        for t in sh.moe_tokens:
            x = torch.randn(t, sh.expert_hidden, device=self.device, generator=self.gen(10 + t)).to(torch.bfloat16)
            ids, weights = self.routing(t, seed=10 + t)
            local = int(((ids >= offset) & (ids < offset + sh.local_experts)).sum())
            ours = bench_ms(lambda: moe_experts_triton(x, ids, weights, w13, w2, offset))
            ref = bench_ms(lambda: moe_experts_ref(x, ids, weights, w13, w2, offset))
            tflops = 2 * local * 3 * sh.expert_hidden * sh.expert_inter / ours / 1e9
            size = (f"{t} tokens top-{sh.top_k}, {sh.local_experts} of {sh.experts} experts here, "
                    f"h={sh.expert_hidden} I={sh.expert_inter}, bf16")
            self.rows.append(Row("moe", size, f"{ours:.3f} ms ({tflops:.1f} TFLOP/s)", "per-expert torch loop",
                                 f"{ref:.3f} ms", f"{ref / ours:.2f}x", f"{local} local entries"))


def local_experts_that_fit(shapes: Shapes) -> tuple[int, str]:
    """Shrink the number of local experts (never h or I) when their weights would crowd the GPU."""
    per_expert = 3 * shapes.expert_hidden * shapes.expert_inter * 2  # bf16 w13 + w2
    free, _ = torch.cuda.mem_get_info()
    fits = max(1, int(0.4 * free // per_expert))
    if fits >= shapes.local_experts:
        return shapes.local_experts, ""
    return fits, f"local experts shrunk from {shapes.local_experts} to {fits} to fit memory"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tp", type=int, default=8, help="tensor parallelism: heads per GPU = 64 / tp (default 8)")
    parser.add_argument("--local-experts", type=int, default=8, help="experts on this GPU, of 32 (default 8)")
    parser.add_argument("--fla-wheels", type=Path, help="folder of wheels (fla_core, einops) to load fla from")
    parser.add_argument("--quick", action="store_true", help="time only the smallest sizes")
    parser.add_argument("--no-write", action="store_true", help="print only; add no rows to the results file")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the results file (default bench/RESULTS.md)")
    args = parser.parse_args(argv)
    if args.tp < 1 or M1_HEADS % args.tp:
        parser.error(f"--tp must divide {M1_HEADS}")
    if not 1 <= args.local_experts <= Shapes.experts:
        parser.error(f"--local-experts must be in [1, {Shapes.experts}]")

    if not torch.cuda.is_available():
        print(f"gpu_kernels: needs a CUDA GPU, and torch {torch.__version__} sees none on this machine. "
              "Nothing was measured and nothing was written.", file=sys.stderr)
        return 2
    if importlib.util.find_spec("triton") is None:
        print("gpu_kernels: needs Triton, which is not installed here. Nothing was measured.", file=sys.stderr)
        return 2
    import triton

    if args.fla_wheels is not None:
        print(f"loading wheels from {args.fla_wheels} into {load_wheels(args.fla_wheels)}")
    import_kernels()
    shapes = Shapes(heads=M1_HEADS // args.tp, local_experts=args.local_experts)
    if args.quick:
        shapes = dataclasses.replace(shapes, prefill_tokens=shapes.prefill_tokens[:1], moe_tokens=shapes.moe_tokens[:1])
    local_experts, shrink_note = local_experts_that_fit(shapes)
    shapes = dataclasses.replace(shapes, local_experts=local_experts)
    run = Run(find_fla(), shapes)
    card = torch.cuda.get_device_name()
    versions = f"{torch.__version__} / {triton.__version__}"
    print(f"{card}; torch / triton {versions}; heads {shapes.heads} (tp {args.tp}), head dim {shapes.head_dim}, "
          f"block {shapes.block}")
    if shrink_note:
        print(shrink_note)

    print("correctness (relative error against the torch reference):")
    run.check_prefill()
    run.check_decode()
    run.check_moe()
    torch.cuda.empty_cache()
    print("timings (medians of triton.testing.do_bench):")
    run.time_prefill()
    run.time_decode()
    run.time_moe()

    for row in run.rows:
        notes = [row.note] if row.note else []
        if row.op == "moe" and shrink_note:
            notes.append(shrink_note)
        if run.failures:
            notes.append("correctness FAILED in this run")
        row.note = "; ".join(notes)
    print_table(run.rows)
    if not args.no_write:
        append_rows(args.results, results_lines(run.rows, card, versions, datetime.datetime.now(datetime.timezone.utc)))
        print(f"rows added to {args.results}")
    if run.failures:
        print(f"correctness FAILED: {', '.join(run.failures)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
