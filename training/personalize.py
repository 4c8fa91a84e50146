"""``unmask train personalize``: fine-tune a model on the user's own repository.

The objective is pretraining's masked-diffusion infilling loss (1/t-weighted CE on masked canvas
slots, Dream / DiffuCoder), on holes shaped like editor requests (a line, a 2-4 line block, a
function body; ``training.holes``), each canvas padded with ``<|dlm_pad|>`` as the engine's
canvases are, and each prompt built by ``engine.window.infill_ids`` with the repository context
of ``engine.repo``: exactly what the engine sees at inference. ``replay`` mixes in holes of
general code (the standard library, which the corpus holds) so the model keeps what it knew.
A tenth of the repository's text (``validation``) is kept out of training and scored as it
trains; the weights that score best there are the ones written (early stopping).
Small models are fine-tuned whole (measured: see the README); the loop is an explicit,
resumable, time-budgeted loop (nanoGPT style) with bf16 autocast on CPU.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from engine.errors import ConfigError
from engine.healing import plan_healing
from engine.repo import CONTEXT_TOKENS, RepoIndex
from engine.window import fit_infill, infill_ids
from training.best_weights import BestWeights
from training.holes import KINDS, Hole, hole_at, hole_spans, shows_answer
from training.objectives import Specials, canvas_padding, masked_diffusion_loss
from training.pretrain import find_checkpoint, load_checkpoint, origin_of, save_checkpoint

log = logging.getLogger(__name__)
KIND_WEIGHTS = {"line": 0.5, "block": 0.3, "body": 0.2}
"""How often each editor request shape is trained (single lines dominate editor traffic)."""
VALIDATE_ON = ("text", "holes")
"""What the validation files can be scored on (``PersonalizeConfig.validate_on``)."""
VALIDATION_HOLES = 16
"""Editor requests in ``validation_holes``: a forward pass over 16 sequences of 768 tokens is
about 15 s on two cores, once a minute."""
COPY_TRIES = 32
"""Draws of repeated spans before a copy example is given up (``copy_holes``); on cachetools
and funcy 332 of 332 and 299 of 300 copy examples were found within them (docs/guide.md)."""


@dataclass
class PersonalizeConfig:
    repo: str
    """Repository root."""
    out: str
    """Output model folder (the checkpoint for resuming lives in ``out/checkpoint``)."""
    exclude: list[str] = field(default_factory=list)
    """Globs relative to the root that are never read."""
    base: str | None = None
    """Model to start from (default: the embedded one)."""
    minutes: float = 10.0
    """Wall-clock budget of the diffusion model's training, resumed runs included (0 with
    ``parent_minutes``: the diffusion model stays as it was and only the parent learns)."""
    seq_len: int = 768
    """Longest training sequence (context + prefix + canvas + suffix)."""
    batch_size: int = 4
    """Holes per step."""
    lr: float = 1e-4
    """Peak AdamW learning rate (cosine to a tenth, 20 warm-up steps). 1e-4: on cachetools'
    held-out holes 5e-4 lost lines the base wrote and 1e-4 kept them (docs/guide.md)."""
    max_middle: int = 96
    """Longest hole in tokens (longer ones are skipped)."""
    context_tokens: int = CONTEXT_TOKENS
    """Repository-context budget; the engine's default, so training matches inference (capped
    at a quarter of ``seq_len`` as the engine caps it at a quarter of the model's window)."""
    context_share: float = 0.8
    """Share of examples with repository context (the rest teach plain infilling)."""
    bf16: bool = True
    """bf16 autocast."""
    seed: int = 0
    """Data order and masking."""
    checkpoint_seconds: float = 60.0
    """How often the resumable checkpoint is written."""
    lora_rank: int = 0
    """0: fine-tune every weight (small models); r > 0: train a rank-r LoRA adapter (peft
    format, for 7B checkpoints) and write the adapter instead of a whole model."""
    lora_alpha: float = 16.0
    """LoRA scale numerator (update scale = alpha / r)."""
    replay: float = 0.0
    """Share of examples that are holes of general code (``training.corpus.general_files``,
    no repository context) instead of the repository's: replay, so that fitting one
    repository does not erase what the model knew."""
    replay_files: int = 200
    """General files the replay holes come from."""
    documents: float = 0.0
    """Share of examples that are windows of the repository's own text (``file_stream``)
    masked as in pretraining: every token of the window a target at ratio t, where a hole
    example supervises only its canvas (a line: a dozen tokens of a 768-token pass). The way
    to learn the repository's text itself in a few minutes; 0: holes only, as before."""
    copy_holes: float = 0.0
    """Share of the repository's hole examples whose repository context shows the answer (each
    removed line stands in it): holes drawn from ``repeated_spans`` until one's context holds
    its lines, so that the model learns to copy what the context shows (on cachetools'
    held-out line holes the context held the removed line for 31 of 60 and the base model
    wrote it for 18). 0: holes as they come (their context shows the answer by chance); 1.0
    for 10 minutes at lr 2e-3 gave 23/60 there with one seed and 11/60 with another, so it
    stays off (docs/guide.md#copy-holes)."""
    validation: float = 0.1
    """Share of the repository's text (whole files, picked by a hash of their paths) kept out of
    training to judge it on code it never saw: the model's cross-entropy on those files
    (``probe_ce``) is measured before training and every ``eval_seconds``, and the weights with
    the lowest are the ones written (early stopping; the last unless an earlier point beats them
    by ``keep_last_within``), so more minutes or a higher learning rate cannot leave the model
    worse there than the best point it passed, the base included.
    0 (or a repository of one file): every file trains and the last weights are written."""
    validate_on: str = "text"
    """What the validation files are scored on: ``"text"``, masked windows of their text
    (``probe_batch``); ``"holes"``, the answers to a fixed set of editor requests in them, asked
    as training asks (``validation_holes``: with repository context, a ``copy_holes`` share of
    them copy holes), so that the weights kept are the ones that answer best, not the ones
    that know the text best (copy holes raised the second while they improved the first).
    Measured: no better pick yet (cachetools 17/60 against the last weights' 21/60; funcy kept
    the base), so ``"text"`` stays the default (docs/guide.md, "Validating on holes")."""
    eval_seconds: float = 60.0
    """How often the validation files are scored during training."""
    keep_last_within: float = 0.01
    """Nats per token an earlier point must beat the last weights by, on the validation files,
    to be written instead of them. Their cross-entropy is a few thousand masked tokens, so it
    wobbles by thousandths from step to step (funcy's 106 steps at lr 1e-4 stayed within 3.870
    and 3.875, and the lowest, at step 33, was the one written): a tie goes to the weights that
    learnt the repository longest, and only a real loss (a run that goes wrong) rolls back."""
    parent_minutes: float = 0.0
    """Minutes spent, after the diffusion model's, teaching the repository to the model's
    parent (the autoregressive base whose likelihood reranks answers, ``engine.rerank``):
    next-token loss on windows of the repository's files, a rank-``lora_rank`` (16 when 0)
    LoRA adapter written to ``out/parent``, which the engine then asks instead of the generic
    parent. 0: the rerank keeps the generic parent. Needs an adapted model (one that has a
    parent)."""
    parent_window: int = 512
    """Tokens per window of the parent's training."""

    def __post_init__(self) -> None:
        if self.minutes < 0 or not self.minutes and not self.parent_minutes:
            raise ConfigError(f"--minutes must be positive (0 only with --parent-minutes: "
                              f"teach the parent alone), got {self.minutes}")
        if self.seq_len < 128:
            raise ConfigError(f"seq_len must be at least 128, got {self.seq_len}")
        if not 0 < self.max_middle <= self.seq_len // 2:
            raise ConfigError(f"max_middle must be in 1..seq_len/2 = {self.seq_len // 2}, "
                              f"got {self.max_middle}")
        if self.lora_rank < 0:
            raise ConfigError(f"--lora-rank must be >= 0, got {self.lora_rank}")
        if self.lr <= 0:
            raise ConfigError(f"--lr must be positive, got {self.lr}")
        if not 0 <= self.replay < 1:
            raise ConfigError(f"--replay is a share of examples in [0, 1), got {self.replay}")
        if not 0 <= self.documents < 1 or self.replay + self.documents >= 1:
            raise ConfigError(f"--documents is a share of examples in [0, 1) that leaves room "
                              f"for holes beside --replay, got {self.documents} (replay "
                              f"{self.replay})")
        if not 0 <= self.copy_holes <= 1:
            raise ConfigError(f"--copy-holes is a share of hole examples in [0, 1], got "
                              f"{self.copy_holes}")
        if self.keep_last_within < 0:
            raise ConfigError(f"keep_last_within is in nats and must be >= 0, got "
                              f"{self.keep_last_within}")
        if self.validate_on not in VALIDATE_ON:
            raise ConfigError(f"--validate-on is one of {', '.join(VALIDATE_ON)}, got "
                              f"{self.validate_on!r}")
        if not 0 <= self.validation < 0.5:
            raise ConfigError(f"--validation is a share of the repository's text in [0, 0.5), "
                              f"got {self.validation}")
        if self.parent_minutes < 0:
            raise ConfigError(f"--parent-minutes must be >= 0, got {self.parent_minutes}")


Span = tuple[str, int, int]
"""(file, first line, line after): a hole, without the copy of its file that a Hole holds."""


def training_spans(files: dict[str, str]) -> dict[str, list[Span]]:
    """The holes of every kind over all files, per kind."""
    by_kind: dict[str, list[Span]] = {k: [] for k in KINDS}
    for rel, text in files.items():
        for a, b, kind in hole_spans(text):
            by_kind[kind].append((rel, a, b))
    return {k: v for k, v in by_kind.items() if v}


def repeated_spans(spans: dict[str, list[Span]], files: dict[str, str]
                   ) -> dict[str, list[Span]]:
    """The spans, per kind, whose every non-blank line (stripped) occurs again outside the span,
    in its own file or another: the only holes whose answer a context can show."""
    stripped = {rel: [line.strip() for line in text.splitlines()] for rel, text in files.items()}
    counts = Counter(line for lines in stripped.values() for line in lines)
    out: dict[str, list[Span]] = {}
    for kind, kept in spans.items():
        for rel, a, b in kept:
            inside = Counter(line for line in stripped[rel][a:b] if line)
            if inside and all(counts[s] > n for s, n in inside.items()):
                out.setdefault(kind, []).append((rel, a, b))
    return out


def draw_hole(rng: random.Random, pool: dict[str, list[Span]], texts: dict[str, str]) -> Hole:
    """A hole of ``pool``: its kind drawn by ``KIND_WEIGHTS``, then a span of that kind."""
    kinds = list(pool)
    kind = rng.choices(kinds, [KIND_WEIGHTS[k] for k in kinds])[0]
    rel, a, b = rng.choice(pool[kind])
    return hole_at(rel, texts[rel], a, b, kind)


def with_context(hole: Hole, index: RepoIndex, tokenizer, room: int,
                 budget: int) -> tuple[str, str, str]:
    """(prefix, suffix, context): the hole as an editor asks for it with repository context,
    a window around it that leaves ``budget`` of ``room`` tokens to the context, and the
    context built from what that window leaves out (the file retrievals look there), as at
    inference. Training examples and GRPO's rollouts both ask this way."""
    prefix, suffix, _ = fit_infill(hole.prefix, hole.suffix, tokenizer, room - budget)
    context = index.context(prefix, suffix, tokenizer, budget, path=hole.path,
                            document=(hole.prefix, hole.suffix))
    return prefix, suffix, context


def make_example(hole: Hole, index: RepoIndex | None, tokenizer, cfg: PersonalizeConfig,
                 sp: Specials, rng: random.Random, copy: bool = False, padding: bool = True
                 ) -> tuple[list[int], int, int] | None:
    """(ids, canvas start, canvas length) for one hole, or None when the middle is too long.
    ``copy``: always with context, and None unless that context shows the answer;
    ``padding``: False, the canvas holds the middle alone (scoring the answer, not its end)."""
    # the canvas holds the middle as the healed prompt around it expects (engine.healing)
    heal = plan_healing(tokenizer, hole.prefix, hole.suffix)
    middle = tokenizer.encode(heal.middle(hole.middle))
    if not middle or len(middle) > cfg.max_middle:
        return None
    # padding as an editor's canvas overshoots, but never more than half the sequence in all,
    # so the prompt around it always has room (max_middle <= seq_len // 2 is checked)
    pad = min(rng.randint(0, 2 * len(middle) + 8), cfg.seq_len // 2 - len(middle)) * padding
    canvas = middle + canvas_padding(pad, sp)
    room = cfg.seq_len - len(canvas) - 1
    prefix, suffix, context = hole.prefix, hole.suffix, ""
    if index is not None and (copy or rng.random() < cfg.context_share):
        prefix, suffix, context = with_context(hole, index, tokenizer, room,
                                               min(cfg.context_tokens, cfg.seq_len // 4))
    if copy and not shows_answer(hole.middle, context):
        return None
    pre, suf, _ = infill_ids(tokenizer, prefix, suffix, context, room)
    pre = pre or [tokenizer.token_id("<|endoftext|>") or 0]
    return pre + canvas + suf, len(pre), len(canvas)


def drawn_examples(rng: random.Random, pool: dict[str, list[Span]], texts: dict[str, str],
                   index: RepoIndex | None, tokenizer, cfg: PersonalizeConfig, sp: Specials,
                   tries: int, copy: bool = False, padding: bool = True
                   ) -> Iterator[tuple[list[int], int, int]]:
    """The examples (``make_example``) of up to ``tries`` holes drawn from ``pool``
    (``draw_hole``), those that fit, in the order drawn: the draws stop when the reader stops
    (the first that fits, or as many as a batch needs), so the rng moves only as far as used."""
    for _ in range(tries):
        ex = make_example(draw_hole(rng, pool, texts), index, tokenizer, cfg, sp, rng, copy,
                          padding)
        if ex is not None:
            yield ex


def canvas_specials(base: Path, tokenizer, mcfg) -> Specials:
    """The special tokens a hole's canvas is built with for the model in ``base``: padded as the
    model was trained to pad (``<|dlm_pad|>``, else its config's pad token; then its rainbow
    cycle if it has one)."""
    from engine.api import model_generation_config, pad_cycle

    pad_id = tokenizer.token_id("<|dlm_pad|>")
    pad_id = mcfg.pad_token_id if pad_id is None else pad_id
    return Specials(mcfg.mask_token_id, pad_id, mcfg.eos_token_id,
                    pad_cycle(model_generation_config(base)))


def example_kind(rng: random.Random, documents: float, replay: float) -> str:
    """What the next example is: ``"document"`` with probability ``documents``, ``"replay"``
    with ``replay``, else ``"hole"``. One draw splits all three, so both shares hold as asked
    when both are set (a replay draw taken only after the document draw failed gave replay
    ``(1 - documents) * replay``); with one share set it is the draw that share always made."""
    u = rng.random() if documents or replay else 1.0
    return "document" if u < documents else "replay" if u < documents + replay else "hole"


def document_example(stream: list[int], seq_len: int, rng: random.Random
                     ) -> tuple[list[int], int, int]:
    """(ids, first maskable position, maskable count) for a random window of the repository's
    text: every token after the first may be masked (``make_batch``), pretraining's forward
    process on a whole window."""
    n = min(seq_len, len(stream))
    a = rng.randint(0, len(stream) - n)
    return stream[a:a + n], 1, n - 1


def make_batch(examples, pad_id: int, mask_id: int, gen: torch.Generator, eps: float = 1e-3,
               t: torch.Tensor | None = None):
    """Right-padded batch; only each example's maskable span is masked (a hole's canvas, a
    document window's every token after the first), pads are hidden from attention. ``t``: the
    rows' mask ratios (B,), drawn from U(eps, 1) when None."""
    L = max(len(ids) for ids, _, _ in examples)
    B = len(examples)
    x = torch.full((B, L), pad_id, dtype=torch.long)
    keep = torch.zeros(B, L, dtype=torch.bool)
    masked = torch.zeros(B, L, dtype=torch.bool)
    if t is None:
        t = eps + (1 - eps) * torch.rand(B, generator=gen)  # (B,)
    eligible = torch.zeros(B)
    for b, (ids, start, n) in enumerate(examples):
        x[b, :len(ids)] = torch.tensor(ids)
        keep[b, :len(ids)] = True
        masked[b, start:start + n] = torch.rand(n, generator=gen) < t[b]
        masked[b, start + int(torch.randint(n, (1,), generator=gen))] = True  # one target at least
        eligible[b] = n
    noisy = torch.where(masked, torch.full_like(x, mask_id), x)  # (B, L)
    attn = keep[:, None, None, :].expand(B, 1, L, L)  # (B, 1, L, L): keys that are real tokens
    return x, noisy, masked, t, eligible, attn


def personalize(cfg: PersonalizeConfig, progress=None) -> dict:
    """Fine-tune; returns the run's summary (also written to ``out/personalize.json``)."""
    from engine.loading import adapter_chain, base_folder, load_model, resolve_model
    from engine.tokenizer import DreamTokenizer

    repo = Path(cfg.repo)
    index = RepoIndex(repo, cfg.exclude)  # raises for a bad root / no files / a vain exclude
    held = validation_files(index.files, cfg.validation)
    if held:  # training (its holes and their context) never reads the validation files
        index = RepoIndex.from_texts(repo, {k: v for k, v in index.files.items()
                                            if k not in held})
    holes = training_spans(index.files)
    if not holes:
        raise ConfigError(f"{repo} has no functions to learn from (no parsable Python "
                          "function bodies outside --exclude and the validation files; "
                          "--validation 0 trains on every file)")
    copyable = repeated_spans(holes, index.files) if cfg.copy_holes else {}
    if cfg.copy_holes and not copyable:
        raise ConfigError(f"--copy-holes found no hole in {repo} whose lines occur again "
                          "outside it, so nothing to learn copying from; use --copy-holes 0")
    general, general_texts = {}, {}
    if cfg.replay:
        from training.corpus import general_files

        general_texts = general_files(cfg.replay_files, cfg.seed)
        general = training_spans(general_texts)
        if not general:
            raise ConfigError("--replay found no general Python to replay (the standard "
                              "library's sources are missing); use --replay 0")
    base = resolve_model(cfg.base)
    if cfg.parent_minutes and len(adapter_chain(base)) < 2:  # refused before any training
        raise ConfigError(f"--parent-minutes needs an adapted model (a LoRA adapter over a "
                          f"pretrained base); {base} has no parent to teach: use "
                          "--parent-minutes 0")
    loaded = load_model(base, "cpu", "float32")
    model, mcfg = loaded.model, loaded.config
    tok = DreamTokenizer.from_folder(base_folder(base))  # an adapter reads its base's
    sp = canvas_specials(base, tok, mcfg)
    pad_id = sp.pad_id
    out, ckpt = Path(cfg.out), Path(cfg.out) / "checkpoint"
    origin = origin_of(base, lora_rank=cfg.lora_rank)
    if held:  # a run that trained on these files must not resume as one that validates on them
        origin += "+validation:" + hashlib.sha256("\0".join(sorted(held)).encode()).hexdigest()[:12]
        origin += "" if cfg.validate_on == "text" else f"+on:{cfg.validate_on}"
    trained, opt, state = start_or_resume(model, cfg, cfg.lora_rank, ckpt, origin)
    rng = random.Random(cfg.seed * 1_000_003 + state["step"])
    gen = torch.Generator().manual_seed(cfg.seed * 7919 + state["step"])

    budget = cfg.minutes * 60
    stream = file_stream(index.files, tok, mcfg.eos_token_id)
    probe = probe_batch(stream, pad_id, mcfg.mask_token_id, seed=cfg.seed)
    if "probe_ce_start" not in state:  # a resumed run keeps its first start, and scores once
        state["probe_ce_start"] = probe_ce(model, probe, cfg.bf16)
    val = None
    if held and cfg.validate_on == "holes":
        val = validation_holes(held, index, tok, cfg, sp)
    elif held:
        val = probe_batch(file_stream(held, tok, mcfg.eos_token_id), pad_id, mcfg.mask_token_id,
                          seed=cfg.seed)
    best = BestWeights(ckpt.with_name("checkpoint.best") / "weights.safetensors", trained,
                       resumed="val_ce" in state)

    def validate():
        """Score the validation files; the best scoring weights yet are kept (``best``)."""
        curve = state.setdefault("val_ce", [])
        if curve and curve[-1][0] == state["step"] and best.step is not None:  # scored already
            return
        ce = probe_ce(model, val, cfg.bf16)
        if not curve or curve[-1][0] != state["step"]:
            curve.append([state["step"], ce])
        best.offer(state["step"], ce)

    if val is not None:
        validate()  # the starting point (the base, or where a resumed run stopped) is a candidate

    def copy_example():
        """A hole whose context shows its answer (``copy_holes``): the repeated spans are
        drawn until one's context holds its lines, or None after ``COPY_TRIES`` (a repository
        whose contexts never show them trains on ordinary holes, ``copy_examples`` says how
        few were copies)."""
        ex = next(drawn_examples(rng, copyable, index.files, index, tok, cfg, sp, COPY_TRIES,
                                 copy=True), None)
        if ex is not None:
            state["copied"] = state.get("copied", 0) + 1
        return ex

    def diffusion_step():
        batch = []
        while len(batch) < cfg.batch_size:
            kind = example_kind(rng, cfg.documents, cfg.replay)
            if kind == "document":
                batch.append(document_example(stream, cfg.seq_len, rng))
                state["documents"] = state.get("documents", 0) + 1
                continue
            replayed = kind == "replay"
            ex = None
            if not replayed and cfg.copy_holes and rng.random() < cfg.copy_holes:
                ex = copy_example()  # None: a hole as it comes instead, so a step always ends
            if ex is None:
                pool, texts = (general, general_texts) if replayed else (holes, index.files)
                hole = draw_hole(rng, pool, texts)
                ex = make_example(hole, None if replayed else index, tok, cfg, sp, rng)
            if ex is not None:
                batch.append(ex)
                state["replayed"] = state.get("replayed", 0) + replayed
        x, noisy, masked, t, eligible, attn = make_batch(batch, pad_id, mcfg.mask_token_id, gen)
        loss, stats = masked_diffusion_loss(model, x, masked, noisy, t, eligible, attn)
        return loss, stats, sum(len(ids) for ids, _, _ in batch), int(eligible.sum())

    train_for(model, trained, opt, state, budget, ckpt, cfg, diffusion_step, progress,
              lora=bool(cfg.lora_rank), evaluate=validate if val is not None else None)
    kept_step = state["step"]
    if val is not None:  # the checkpoint keeps the last weights, to resume from
        last_ce = state["val_ce"][-1][1]
        kept_step = best.restore_unless(state["step"], last_ce, cfg.keep_last_within)
        if kept_step != state["step"]:
            log.info("kept the weights of step %d (validation CE %.3f), not the last (%.3f)",
                     kept_step, best.score, last_ce)
    probe_end = probe_ce(model, probe, cfg.bf16)
    log.info("probe CE on the repository's text: %.3f -> %.3f", state["probe_ce_start"],
             probe_end)
    summary = {"base": str(base), "repo": str(repo.resolve()), "files": len(index.files),
               "holes": {k: len(v) for k, v in holes.items()},
               "repeated_holes": {k: len(v) for k, v in copyable.items()},
               "copy_examples": state.get("copied", 0),
               "replay_files": len(general_texts),
               "replayed_examples": state.get("replayed", 0),
               "document_examples": state.get("documents", 0),
               "steps": state["step"],
               "probe_ce": {"start": state["probe_ce_start"], "end": probe_end},
               "validation": {"files": sorted(held), "on": cfg.validate_on,
                              "ce": state.get("val_ce", []),
                              "kept_step": kept_step},
               "tokens": state["tokens"], "minutes": round(state["elapsed"] / 60, 2),
               "tokens_per_s": round(state["tokens"] / max(state["elapsed"], 1e-9), 1),
               "trained_parameters": sum(p.numel() for p in trained), "config": asdict(cfg)}
    if cfg.lora_rank:
        from training.lora import save_adapter

        save_adapter(model, out, str(base), cfg.lora_rank, cfg.lora_alpha)
        write_generation_config(base, out)
        (out / "personalize.json").write_text(json.dumps(summary, indent=2))
    else:
        write_model_folder(model, base, out, summary)
    if cfg.parent_minutes:
        summary["parent"] = personalize_parent(cfg, base, index.files, tok, progress)
        (out / "personalize.json").write_text(json.dumps(summary, indent=2))
    return summary


def start_or_resume(model, cfg: PersonalizeConfig, lora_rank: int, ckpt: Path,
                    origin: str) -> tuple[list, torch.optim.Optimizer, dict]:
    """(trained parameters, optimizer, loop state) of a phase: a rank-``lora_rank`` LoRA on
    ``model`` (0: every weight trains), resumed from ``ckpt`` when a run of the same
    ``origin`` (``origin_of``) left one there."""
    if lora_rank:
        from training.lora import add_lora

        add_lora(model, lora_rank, cfg.lora_alpha)
    trained = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trained, lr=cfg.lr, weight_decay=0.0)
    state = {"step": 0, "elapsed": 0.0, "tokens": 0, "supervised": 0, "origin": origin}
    if (found := find_checkpoint(ckpt)) is not None:
        state = load_checkpoint(found, model, opt, origin)
        log.info("resumed %s at step %d", ckpt, state["step"])
    model.train()
    return trained, opt, state


def train_for(model, trained: list, opt, state: dict, budget: float, ckpt: Path,
              cfg: PersonalizeConfig, step_loss, progress=None, lora: bool = False,
              phase: str = "diffusion", offset: float = 0.0, evaluate=None) -> None:
    """The resumable, time-budgeted loop (warm-up, cosine to a tenth, bf16 autocast, clipping,
    a checkpoint every ``cfg.checkpoint_seconds`` and at the end) around ``step_loss() ->
    (loss, stats, tokens, supervised)``. ``lora``: checkpoint only the trained weights;
    ``offset``: seconds of earlier phases, so progress runs on across phases; ``evaluate()``:
    called every ``cfg.eval_seconds`` and after the last step (its time is not the budget's)."""
    start, last_save = time.time() - state["elapsed"], time.time()
    last_eval = time.time()
    while state["elapsed"] < budget:
        frac = state["elapsed"] / budget
        lr = cfg.lr * min(1.0, (state["step"] + 1) / 20) * (0.1 + 0.9 * 0.5 * (1 + math.cos(
            math.pi * frac)))
        for group in opt.param_groups:
            group["lr"] = lr
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            loss, stats, tokens, supervised = step_loss()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        opt.step()
        state["step"] += 1
        state["tokens"] += int(tokens)
        state["supervised"] += int(supervised)
        state["elapsed"] = time.time() - start
        if progress is not None:
            progress({"step": state["step"], "loss": stats["loss"], "lr": lr,
                      "elapsed_s": offset + state["elapsed"], "budget_s": offset + budget,
                      "tok_per_s": state["tokens"] / max(state["elapsed"], 1e-9),
                      "phase": phase})
        if evaluate is not None and time.time() - last_eval > cfg.eval_seconds:
            paused = time.time()
            evaluate()
            start += time.time() - paused  # scoring is not training time
            last_eval = time.time()
        if time.time() - last_save > cfg.checkpoint_seconds:
            save_checkpoint(ckpt, model, opt, state, trainable_only=lora)
            last_save = time.time()
    if evaluate is not None:
        evaluate()
    save_checkpoint(ckpt, model, opt, state, trainable_only=lora)


def validation_files(files: dict[str, str], share: float) -> dict[str, str]:
    """Whole files holding about ``share`` of the text, kept out of training: taken in the
    order of a hash of their paths (the same on every run and machine, and unrelated to what a
    file holds), each that still fits the share; the smallest file when none fits. None when
    ``share`` is 0 or only one file has any text."""
    texts = [rel for rel, text in files.items() if text.strip()]  # an empty __init__ says nothing
    if share <= 0 or len(texts) < 2:
        return {}
    budget = share * sum(len(files[rel]) for rel in texts)
    held, size = {}, 0
    for rel in sorted(texts, key=lambda r: hashlib.sha256(r.encode()).hexdigest()):
        if size + len(files[rel]) <= budget:
            held[rel] = files[rel]
            size += len(files[rel])
    if not held:
        rel = min(texts, key=lambda r: (len(files[r]), r))
        held[rel] = files[rel]
    return held


def validation_holes(held: dict[str, str], index: RepoIndex, tokenizer, cfg: PersonalizeConfig,
                     sp: Specials) -> tuple:
    """A fixed batch of ``VALIDATION_HOLES`` editor requests in the validation files, asked as
    training asks them but always with repository context (the configuration that matters),
    a ``copy_holes`` share of them copy holes (ordinary holes for the copies whose context no
    draw showed the answer, as in training), each canvas the middle alone and all of it
    masked: ``probe_ce`` of it is the model's cross-entropy on the answers to requests in code
    it never saw (``validate_on="holes"``). Raises ConfigError when the files hold no hole."""
    spans = training_spans(held)
    if not spans:
        raise ConfigError(f"--validate-on holes found no function body in the validation files "
                          f"({', '.join(sorted(held))}); use --validate-on text")
    copyable = repeated_spans(spans, {**index.files, **held}) if cfg.copy_holes else {}
    asked = dataclasses.replace(cfg, context_share=1.0)
    rng = random.Random(cfg.seed * 1_000_003 - 1)  # fixed: every point of a run scores the same
    copies = round(VALIDATION_HOLES * cfg.copy_holes) if copyable else 0
    examples = list(itertools.islice(drawn_examples(rng, copyable, held, index, tokenizer, asked,
                                                    sp, copies * COPY_TRIES, True, False), copies))
    rest = VALIDATION_HOLES - len(examples)  # copies that no context showed: ordinary holes, as
    examples += itertools.islice(drawn_examples(  # training takes when a copy is not found
        rng, spans, held, index, tokenizer, asked, sp, rest * COPY_TRIES, padding=False), rest)
    if not examples:
        raise ConfigError("--validate-on holes found no hole of the validation files that fits "
                          f"seq_len {cfg.seq_len}; use --validate-on text")
    t = torch.ones(len(examples))
    return make_batch(examples, sp.pad_id, sp.mask_id, torch.Generator().manual_seed(cfg.seed),
                      t=t)


PROBE_RATIOS = (0.25, 0.5, 0.75)
"""The probe's mask ratios: a few tokens to recall, half the window, most of it."""


def probe_batch(stream: list[int], pad_id: int, mask_id: int, windows: int = 6,
                length: int = 384, seed: int = 0) -> tuple:
    """A fixed test of how well the model knows the repository's own text: ``windows`` windows
    spread evenly over ``file_stream``, masked at the ``PROBE_RATIOS`` in turn with a fixed
    seed, so the same batch scores every model and every point of a run (``probe_ce``)."""
    n = min(length, len(stream))
    starts = [round(i * (len(stream) - n) / max(windows - 1, 1)) for i in range(windows)]
    examples = [(stream[a:a + n], 1, n - 1) for a in starts]
    t = torch.tensor([PROBE_RATIOS[i % len(PROBE_RATIOS)] for i in range(windows)])
    return make_batch(examples, pad_id, mask_id, torch.Generator().manual_seed(seed), t=t)


def probe_ce(model, batch: tuple, bf16: bool) -> float:
    """Mean cross-entropy (nats per masked token) of ``model`` on a ``probe_batch``: on the
    training files, how well it recalls text it trained on (the one thing a few minutes can
    teach); on the validation files, how well it predicts the repository's code it never saw."""
    x, noisy, masked, t, eligible, attn = batch
    was_training = model.training
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        _, stats = masked_diffusion_loss(model, x, masked, noisy, t, eligible, attn)
    model.train(was_training)
    return round(stats["masked_ce"], 4)


def file_stream(files: dict[str, str], tokenizer, end_id: int) -> list[int]:
    """The repository as the parent reads it: each file under a ``# path`` line (the way
    ``engine.repo`` shows retrieved code), files separated by the end-of-text token."""
    ids: list[int] = []
    for rel in sorted(files):
        ids += tokenizer.encode(f"# {rel}\n{files[rel]}") + [end_id]
    return ids


def personalize_parent(cfg: PersonalizeConfig, base: Path, files: dict[str, str], tok,
                       progress=None) -> dict:
    """Teach the repository to the parent: next-token loss with a causal mask on random
    windows of ``file_stream``, a LoRA adapter on the root base in ``out/parent`` (resumable
    from ``out/parent/checkpoint``). Returns the phase's summary."""
    from engine.loading import adapter_chain, load_model
    from engine.lora import adapter_config
    from training.lora import save_adapter
    from training.objectives import causal_lm_loss

    chain = adapter_chain(base)  # an adapter chain: personalize checked it first
    spec = adapter_config(chain[-2])["base_model_name_or_path"]  # how the chain names its root
    loaded = load_model(chain[-1], "cpu", "float32")
    model = loaded.model
    rank = cfg.lora_rank or 16
    out = Path(cfg.out) / "parent"
    ckpt = out / "checkpoint"
    trained, opt, state = start_or_resume(model, cfg, rank, ckpt,
                                          origin_of(chain[-1], lora_rank=rank, parent=True))
    stream = torch.tensor(file_stream(files, tok, loaded.config.eos_token_id))
    n = min(cfg.parent_window, len(stream))
    gen = torch.Generator().manual_seed(cfg.seed * 7919 + 1 + state["step"])

    def parent_step():
        starts = torch.randint(len(stream) - n + 1, (cfg.batch_size,), generator=gen)
        x = torch.stack([stream[a:a + n] for a in starts.tolist()])  # (B, n)
        loss, stats = causal_lm_loss(model, x)
        return loss, stats, x.numel(), x.numel() - len(x)

    train_for(model, trained, opt, state, cfg.parent_minutes * 60, ckpt, cfg, parent_step,
              progress, lora=True, phase="parent", offset=cfg.minutes * 60)
    save_adapter(model, out, spec, rank, cfg.lora_alpha)
    return {"steps": state["step"], "tokens": state["tokens"],
            "minutes": round(state["elapsed"] / 60, 2),
            "tokens_per_s": round(state["tokens"] / max(state["elapsed"], 1e-9), 1),
            "stream_tokens": len(stream), "lora_rank": rank}


def write_generation_config(base: Path, out: Path) -> None:
    """An adapter trained on ``base`` decodes as ``base`` does (its decoding defaults and
    special ids, a rainbow pad cycle included), also where its own folder is read alone (GGUF)."""
    from engine.api import model_generation_config

    if config := model_generation_config(base):
        (out / "generation_config.json").write_text(json.dumps(config, indent=2))


def write_model_folder(model, base: Path, out: Path, summary: dict,
                       summary_name: str = "personalize.json") -> None:
    """``out`` becomes a model folder that ``--model out`` loads: weights in the base's dtype,
    the base's config, tokenizer and generation_config (an adapter base: its own generation
    config, its root model's tokenizer), and the run's summary."""
    from engine.api import model_generation_config
    from engine.loading import base_folder
    from training.export import save_model_folder

    model.eval()
    save_model_folder(model, base_folder(base), out, dtype=torch.bfloat16,
                      generation=model_generation_config(base))
    (out / summary_name).write_text(json.dumps(summary, indent=2))
