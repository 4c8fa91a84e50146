"""Pretraining loop for the embedded model: causal LM, then masked-diffusion adaptation.

DiffuCoder and Dream adapt an autoregressive model into a diffusion model instead of training
from scratch; we do the same at small scale. Phase 1 trains next-token prediction with a causal
mask; phase 2 switches attention to bidirectional and trains the 1/t-weighted masked-diffusion
objective, half of the batches shaped as infilling examples (``training.objectives``).
The schedule is driven by elapsed wall-clock so a run ends on time on any machine; the loop is
resumable from its last checkpoint (weights, optimizer, elapsed time, step, RNG).
Multi-process data parallel runs under ``torchrun`` (gloo on CPU, NCCL on CUDA).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from engine.errors import ConfigError
from engine.model import DreamConfig, DreamModel
from training.objectives import (Specials, causal_lm_loss, infill_batch, masked_ce_sum,
                                 masked_diffusion_loss, random_masking)

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Everything a pretraining run needs; read from a TOML file."""

    out_dir: str = "runs/embedded"
    """Where checkpoints and the log go."""
    data_dir: str = "data/tokens"
    """Folder with train.bin / val.bin (uint16 token ids)."""
    tokenizer_dir: str = "data/tokenizer"
    """Folder with tokenizer.json, copied into exported models."""
    model: dict = field(default_factory=dict)
    """DreamConfig overrides (hidden_size, num_hidden_layers, ...)."""
    seq_len: int = 512
    """Training window in tokens."""
    batch_size: int = 8
    """Sequences per step per process."""
    budget_minutes: float = 120.0
    """Wall-clock budget of the whole run (both phases)."""
    max_steps: int = 0
    """If > 0, stop after this many steps (tests and smoke runs)."""
    causal_fraction: float = 0.7
    """Share of the budget spent on causal pretraining before diffusion adaptation."""
    lr: float = 2e-3
    """Peak learning rate of the causal phase."""
    diffusion_lr: float = 1e-3
    """Peak learning rate of the diffusion phase."""
    min_lr_ratio: float = 0.1
    """Cosine floor as a fraction of the phase's peak."""
    warmup_steps: int = 100
    """Linear warm-up at the start of each phase."""
    weight_decay: float = 0.1
    """AdamW decay on matrices only."""
    grad_clip: float = 1.0
    """Global gradient-norm clip."""
    eps: float = 1e-3
    """Smallest mask ratio t of the diffusion objective."""
    infill_share: float = 0.5
    """Share of diffusion batches shaped as infilling examples."""
    max_middle: int = 96
    """Longest infilling middle in tokens."""
    infill_holes: int = 4
    """Most holes per infilling window (1..N, uniform): more supervised slots per forward."""
    bf16: bool = True
    """bf16 autocast (about 2x faster on CPUs with avx512_bf16)."""
    threads: int = 0
    """torch threads per process; 0 keeps torch's default."""
    compile: bool = False
    """``torch.compile`` the training forward (measured +15-20 % tokens/s on the 2-core CPU,
    ``benchmarks/train_throughput.py``, after about a minute of compiling; off for short runs)."""
    checkpoint_minutes: float = 5.0
    """How often to write the resumable checkpoint."""
    eval_batches: int = 8
    """Validation batches at each log point."""
    log_every: int = 25
    """Steps between log lines."""
    eval_every: int = 200
    """Steps between held-out evaluations (a multiple of ``log_every``; 0: only at the end)."""
    seed: int = 1234
    """Seed of data order, masking and initialisation."""
    init_from: str = ""
    """Start from the weights of this model folder (e.g. the shipped model) instead of random
    ones, with a fresh optimizer; ignored when the run already has a checkpoint to resume."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.causal_fraction <= 1.0:
            raise ValueError("causal_fraction must be within [0, 1]")
        if self.seq_len < 64:
            raise ValueError("seq_len must be at least 64")
        if not 0.0 <= self.infill_share <= 1.0:
            raise ValueError("infill_share must be within [0, 1]")

    @classmethod
    def from_toml(cls, path: Path) -> "TrainConfig":
        raw = tomllib.loads(path.read_text())
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"unknown keys in {path}: {sorted(unknown)}")
        return cls(**raw)


class TokenWindows:
    """Random fixed-length windows from a uint16 token file."""

    def __init__(self, path: Path, seq_len: int) -> None:
        self.data = np.memmap(path, dtype=np.uint16, mode="r")
        self.seq_len = seq_len
        if len(self.data) <= seq_len:
            raise ValueError(f"{path} holds {len(self.data)} tokens, fewer than seq_len {seq_len}")

    def batch(self, batch_size: int, gen: torch.Generator,
              aligned: np.ndarray | None = None, aligned_share: float = 0.0) -> torch.Tensor:
        """``batch_size`` windows, each at a random offset; with ``aligned`` (offsets, see
        ``top_level_starts``) each window starts at one of them with probability
        ``aligned_share``. Draws nothing extra when ``aligned_share`` is 0, so runs without it
        keep their windows."""
        starts = torch.randint(len(self.data) - self.seq_len, (batch_size,), generator=gen)
        if aligned is not None and aligned_share > 0 and len(aligned):
            pick = torch.rand(batch_size, generator=gen) < aligned_share
            at = torch.from_numpy(aligned[torch.randint(len(aligned), (batch_size,),
                                                        generator=gen).numpy()])
            starts = torch.where(pick, at, starts)
        rows = [np.asarray(self.data[s:s + self.seq_len], dtype=np.int64) for s in starts.tolist()]
        return torch.from_numpy(np.stack(rows))  # (B, L)

    def top_level_starts(self, first_ids: list[int], ends_line: torch.Tensor) -> np.ndarray:
        """Offsets of the tokens in ``first_ids`` (a tokenizer's ``def``, ``class``) that begin
        a line at column 0: the token before them ends with a newline (``ends_line``, bool per
        id) or is a file's end token. A window starting there shows the definition's signature
        and docstring before any hole in its body, as an editor's buffer does (a random window
        cuts most functions off above the hole). Only offsets with a whole window after them."""
        ids = np.asarray(self.data[:len(self.data) - self.seq_len])
        first = np.isin(ids[1:], np.asarray(first_ids, dtype=ids.dtype))
        after_newline = ends_line.numpy()[ids[:-1]]
        return (np.flatnonzero(first & after_newline) + 1).astype(np.int64)


def lr_at(cfg: TrainConfig, phase: str, phase_step: int, phase_progress: float) -> float:
    peak = cfg.lr if phase == "causal" else cfg.diffusion_lr
    if phase_step < cfg.warmup_steps:
        return peak * (phase_step + 1) / cfg.warmup_steps
    cos = 0.5 * (1 + math.cos(math.pi * min(1.0, phase_progress)))
    return peak * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cos)


def make_optimizer(model: DreamModel, cfg: TrainConfig) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8)


def token_line_ends(tokenizer_dir: Path, vocab_size: int) -> torch.Tensor:
    """Bool per vocabulary id: does this token's text end with a newline."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    ends = torch.zeros(vocab_size, dtype=torch.bool)
    for i in range(tok.get_vocab_size()):
        ends[i] = tok.decode([i], skip_special_tokens=False).endswith("\n")
    return ends


@torch.no_grad()
def evaluate(model: DreamModel, val: TokenWindows, cfg: TrainConfig, sp: Specials,
             phase: str) -> dict:
    """Held-out loss: causal CE, and masked CE at fixed mask ratios (fixed seed, comparable)."""
    model.eval()
    gen = torch.Generator().manual_seed(0)
    out: dict = {}
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
        batches = [val.batch(cfg.batch_size, gen) for _ in range(cfg.eval_batches)]
        out["val_causal"] = float(np.mean([causal_lm_loss(model, x)[0].item() for x in batches]))
        if phase == "diffusion":
            for t in (0.15, 0.5, 0.9):
                total, count = masked_ce_sum(model, batches, t, sp.mask_id, gen)
                out[f"val_masked@{t}"] = total / max(count, 1)
    model.train()
    return out


def save_checkpoint(path: Path, model: DreamModel, opt, state: dict,
                    trainable_only: bool = False) -> None:
    """Resumable checkpoint: safetensors weights + optimizer state + loop state (JSON), written
    whole into a sibling folder and then swapped in, so a kill at any moment leaves one complete
    checkpoint (this one or the previous: ``find_checkpoint``). ``trainable_only``: only the
    weights that train (LoRA adaptation over a frozen base the run rebuilds)."""
    import shutil

    from safetensors.torch import save_file

    new, old = path.with_name(path.name + ".new"), path.with_name(path.name + ".old")
    shutil.rmtree(new, ignore_errors=True)
    new.mkdir(parents=True)
    keep = {n for n, p in model.named_parameters() if p.requires_grad} if trainable_only \
        else set(model.state_dict())
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()
               if k in keep and not (k == "lm_head.weight" and model.config.tie_word_embeddings)},
              str(new / "model.safetensors"))
    opt_state = opt.state_dict()
    tensors = {f"{i}.{name}": (v if torch.is_tensor(v) else torch.tensor(v)).contiguous()
               for i, slot in opt_state["state"].items() for name, v in slot.items()}
    save_file(tensors, str(new / "optimizer.safetensors"))
    (new / "config.json").write_text(json.dumps(model.config.to_dict(), indent=2))
    state = dict(state, param_groups=opt_state["param_groups"])
    (new / "state.json").write_text(json.dumps(state, indent=2))
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(new, path)
    shutil.rmtree(old, ignore_errors=True)


def resumed_log(path: Path, key: str, done: int):
    """The JSONL log opened for appending, without the lines a killed run wrote after its last
    checkpoint (``record[key] > done``: the resumed run writes them again)."""
    if path.exists():
        kept = [line for line in path.read_text().splitlines()
                if line.strip() and json.loads(line).get(key, 0) <= done]
        path.write_text("".join(line + "\n" for line in kept))
    return open(path, "a")


def find_checkpoint(path: Path) -> Path | None:
    """The complete checkpoint to resume from: ``path``, or the previous one when a kill came
    between the two renames of ``save_checkpoint``; None for a new run."""
    for candidate in (path, path.with_name(path.name + ".old")):
        if (candidate / "state.json").exists():
            return candidate
    return None


def origin_of(folder: Path | None, **settings) -> str:
    """A fingerprint of where a run starts: the weights files of ``folder`` and of every adapter
    base under it (name, size, first and last MiB: tells two trainings of one shape apart
    without reading a 15 GB checkpoint whole) and the ``settings`` that shape the checkpoint (a
    LoRA rank). A checkpoint resumes only into a run of the same origin (``load_checkpoint``)."""
    import hashlib

    from engine.loading import adapter_chain

    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for part in adapter_chain(Path(folder)) if folder is not None else []:
        files = [part] if part.is_file() else sorted(
            f for f in part.iterdir() if f.suffix in (".safetensors", ".gguf"))
        for f in files:
            size = f.stat().st_size
            h.update(f"{f.name}:{size}".encode())
            with open(f, "rb") as fh:
                h.update(fh.read(1 << 20))
                fh.seek(max(0, size - (1 << 20)))
                h.update(fh.read(1 << 20))
    return h.hexdigest()[:16]


def load_checkpoint(path: Path, model: DreamModel, opt, origin: str | None = None) -> dict:
    """The loop state of the checkpoint at ``path``, its weights and optimizer state loaded.
    ``origin`` (``origin_of``): refuse a checkpoint that a run from other weights or settings
    wrote (an --out reused after the base model changed would resume the wrong weights); the
    returned state carries it, so the next save records it (older checkpoints have none)."""
    from safetensors.torch import load_file

    state = json.loads((path / "state.json").read_text())
    if origin is not None and state.get("origin", origin) != origin:
        raise ConfigError(f"{path} was written by a run that started from other weights or "
                          "settings; resume with the same model and --lora-rank, or pass a new "
                          "--out (or delete that folder) to start over")
    model.load_state_dict(load_file(str(path / "model.safetensors")), strict=False)
    slots: dict = {}
    for key, v in load_file(str(path / "optimizer.safetensors")).items():
        i, name = key.split(".", 1)
        slots.setdefault(int(i), {})[name] = v
    opt.load_state_dict({"state": slots, "param_groups": state.pop("param_groups")})
    if origin is not None:
        state["origin"] = origin
    return state


def setup_distributed() -> tuple[int, int, torch.device]:
    """(rank, world_size, device) under torchrun, or (0, 1, cpu/cuda) for a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) \
        if torch.cuda.is_available() else torch.device("cpu")
    if world > 1:
        import torch.distributed as dist

        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return dist.get_rank(), world, device
    return 0, 1, device


def train(cfg: TrainConfig, progress=None) -> Path:
    """Run (or resume) pretraining; returns the checkpoint folder. ``progress(dict)`` is told each log."""
    rank, world, device = setup_distributed()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out_dir)
    ckpt = out / "last"
    data = Path(cfg.data_dir)
    mcfg = DreamConfig(**cfg.model)
    sp = Specials(mcfg.mask_token_id, mcfg.pad_token_id, mcfg.eos_token_id)
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = DreamModel(mcfg)
    _init_weights(model)
    opt = make_optimizer(model, cfg)
    state = {"step": 0, "elapsed": 0.0, "tokens": 0, "phase_start": {}}
    if (found := find_checkpoint(ckpt)) is not None:
        state = load_checkpoint(found, model, opt)
        log.info("resumed from %s at step %d", found, state["step"])
    elif cfg.init_from:
        from engine.loading import load_model

        source = load_model(Path(cfg.init_from), "cpu", "float32").model
        model.load_state_dict(source.state_dict())
        log.info("initialised from %s", cfg.init_from)
    model.to(device)
    wrapped = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        wrapped = DistributedDataParallel(model)
    wrapped = compiled(wrapped, cfg.compile)
    train_data = TokenWindows(data / "train.bin", cfg.seq_len)
    val_data = TokenWindows(data / "val.bin", cfg.seq_len)
    ends_line = token_line_ends(Path(cfg.tokenizer_dir), mcfg.vocab_size)
    gen = torch.Generator().manual_seed(cfg.seed + 1000 * rank + state["step"])
    budget = cfg.budget_minutes * 60
    autocast = device.type if device.type in ("cpu", "cuda") else "cpu"
    t0, last_save = time.time() - state["elapsed"], time.time()
    out.mkdir(parents=True, exist_ok=True)
    logfile = resumed_log(out / "log.jsonl", "step", state["step"]) if rank == 0 else None
    while True:
        elapsed = time.time() - t0
        if elapsed >= budget or (cfg.max_steps and state["step"] >= cfg.max_steps):
            break
        # 1. phase and learning rate from the wall-clock fraction
        phase = "causal" if elapsed < cfg.causal_fraction * budget else "diffusion"
        start = state["phase_start"].setdefault(phase, [state["step"], elapsed])
        span = cfg.causal_fraction * budget if phase == "causal" else \
            (1 - cfg.causal_fraction) * budget
        lr = lr_at(cfg, phase, state["step"] - start[0], (elapsed - start[1]) / max(span, 1e-9))
        for group in opt.param_groups:
            group["lr"] = lr
        # 2. batch and loss
        x = train_data.batch(cfg.batch_size, gen)
        with torch.autocast(autocast, dtype=torch.bfloat16, enabled=cfg.bf16):
            if phase == "causal":
                loss, stats = causal_lm_loss(wrapped, x.to(device))
            elif torch.rand(1, generator=gen).item() < cfg.infill_share:
                seqs, noisy, masked, t, eligible = infill_batch(x, sp, ends_line, cfg.eps,
                                                                cfg.max_middle, gen,
                                                                cfg.infill_holes)
                loss, stats = masked_diffusion_loss(wrapped, seqs.to(device), masked.to(device),
                                                    noisy.to(device), t.to(device),
                                                    eligible.to(device))
            else:
                noisy, masked, t = random_masking(x, sp, cfg.eps, gen)
                loss, stats = masked_diffusion_loss(
                    wrapped, x.to(device), masked.to(device), noisy.to(device), t.to(device),
                    torch.full((x.shape[0],), x.shape[1] - 1.0, device=device))
        # 3. update
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip).item()
        opt.step()
        state["step"] += 1
        state["tokens"] += x.numel() * world
        state["elapsed"] = time.time() - t0
        # 4. log, evaluate, checkpoint
        if rank == 0 and state["step"] % cfg.log_every == 0:
            record = {"step": state["step"], "phase": phase, "lr": lr, "grad_norm": grad_norm,
                      "tokens": state["tokens"], "elapsed_min": state["elapsed"] / 60,
                      "tok_per_s": state["tokens"] / max(state["elapsed"], 1e-9), **stats}
            if cfg.eval_every and state["step"] % cfg.eval_every == 0:
                record.update(evaluate(model, val_data, cfg, sp, phase))
            logfile.write(json.dumps(record) + "\n")
            logfile.flush()
            if progress:
                progress(record)
        if rank == 0 and time.time() - last_save > cfg.checkpoint_minutes * 60:
            save_checkpoint(ckpt, model, opt, state)
            last_save = time.time()
    if rank == 0:
        save_checkpoint(ckpt, model, opt, state)
        final = evaluate(model, val_data, cfg, sp, "diffusion")
        (out / "final_eval.json").write_text(json.dumps(final, indent=2))
        logfile.close()
    if world > 1:
        import torch.distributed as dist

        dist.barrier()  # a rank that leaves while rank 0 still writes aborts gloo (SIGABRT)
        dist.destroy_process_group()
    return ckpt


def compiled(model: torch.nn.Module, enabled: bool) -> torch.nn.Module:
    """The module to run training steps through: ``torch.compile``d when enabled (dynamic
    shapes: the number of supervised positions changes every step), else itself. Weights are
    shared, so checkpoints and evaluation keep using the plain module."""
    return torch.compile(model, dynamic=True) if enabled else model


def _init_weights(model: DreamModel) -> None:
    for name, p in model.named_parameters():
        if p.dim() >= 2:
            std = 0.02 / math.sqrt(2 * model.config.num_hidden_layers) \
                if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.02
            torch.nn.init.normal_(p, std=std)
        elif name.endswith("bias"):
            torch.nn.init.zeros_(p)
