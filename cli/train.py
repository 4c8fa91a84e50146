"""``unmask train ...``, ``unmask eval ...``, ``unmask export``: the model pipeline's commands."""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import ExitStack
from functools import partial
from pathlib import Path

from engine.errors import ConfigError
from engine.repo import RETRIEVAL, RETRIEVALS

DATA = Path("data")


def add_train_parsers(sub) -> None:
    t = sub.add_parser("train", help="build the corpus and tokenizer, pretrain, export")
    tsub = t.add_subparsers(dest="train_command", required=True, parser_class=type(t))
    c = tsub.add_parser("corpus", help="download the manifest's wheels, filter, decontaminate")
    c.add_argument("--out", type=Path, default=DATA / "corpus")
    k = tsub.add_parser("tokenizer", help="train the BPE tokenizer and encode the corpus")
    k.add_argument("--corpus", type=Path, default=DATA / "corpus")
    k.add_argument("--vocab-size", type=int, default=8192)
    k.add_argument("--reuse", type=Path, default=None,
                   help="encode with this model folder's tokenizer instead of training one "
                        "(to continue training a shipped model)")
    k.add_argument("--out", type=Path, default=DATA / "tokenizer")
    k.add_argument("--tokens", type=Path, default=DATA / "tokens")
    p = tsub.add_parser("pretrain", help="causal pretraining then diffusion adaptation")
    p.add_argument("--config", type=Path, required=True, help="TOML file (training/configs/)")
    p.add_argument("--max-steps", type=int, default=None, help="stop early (smoke runs)")
    a = tsub.add_parser("adapt", help="adapt a pretrained AR model to masked diffusion (LoRA)")
    a.add_argument("--config", type=Path, required=True, help="TOML file (training/configs/)")
    a.add_argument("--max-steps", type=int, default=None, help="stop early (smoke runs)")
    pl = tsub.add_parser("parent-lines", help="write the base's own continuations of corpus "
                                              "contexts, for an adapt config's parent_lines")
    pl.add_argument("--config", type=Path, required=True, help="TOML file (training/configs/)")
    z = tsub.add_parser("personalize", help="fine-tune a model on your repository's own code")
    z.add_argument("--repo", type=Path, required=True, help="the repository's root folder")
    z.add_argument("--out", type=Path, required=True, help="where the personalized model goes")
    z.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                   help="a path or glob relative to the root that is never read (repeatable)")
    z.add_argument("--minutes", type=float, default=10.0,
                   help="time budget (default 10; 0 with --parent-minutes: the parent only)")
    z.add_argument("--base", default=None, help="model to start from (default: embedded)")
    z.add_argument("--seed", type=int, default=0)
    z.add_argument("--lora-rank", type=int, default=0,
                   help="train a rank-R LoRA adapter (peft format) instead of every weight")
    z.add_argument("--lr", type=float, default=None,
                   help="peak learning rate (default 1e-4, cosine to a tenth)")
    z.add_argument("--replay", type=float, default=0.0,
                   help="share of examples from general code (the standard library) so the "
                        "model keeps what it knew (default 0)")
    z.add_argument("--documents", type=float, default=0.0,
                   help="share of examples that are windows of your files with every token a "
                        "possible target, as in pretraining (default 0: holes only)")
    z.add_argument("--copy-holes", type=float, default=0.0,
                   help="share of hole examples whose repository context shows the answer, "
                        "teaching the model to copy from it (default 0; measured: no reliable "
                        "gain, see the guide)")
    z.add_argument("--validation", type=float, default=0.1,
                   help="share of your files kept out of training to score it on code it never "
                        "saw; the best-scoring weights are the ones written (default 0.1; 0: "
                        "train on every file, keep the last weights)")
    z.add_argument("--validate-on", default="text",
                   help="what the validation files are scored on: 'text', masked windows of "
                        "them; 'holes', the answers to a fixed set of editor requests in them, "
                        "asked with repository context (default text)")
    z.add_argument("--parent-minutes", type=float, default=0.0,
                   help="then teach the repository to the model's parent, whose likelihood "
                        "reranks answers (--parent-branches), for this many minutes: a LoRA "
                        "adapter in OUT/parent (default 0: the generic parent)")
    r = tsub.add_parser("grpo", help="coupled-GRPO with your repository's tests as the reward")
    r.add_argument("--repo", type=Path, required=True, help="the repository's root folder")
    r.add_argument("--out", type=Path, required=True, help="where the trained model goes")
    r.add_argument("--init", default=None,
                   help="model to start from and stay close to (default: embedded; a "
                        "personalized model is the usual start)")
    r.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                   help="a path or glob relative to the root that is never read (repeatable)")
    r.add_argument("--test-cmd", default=None,
                   help='the suite\'s command (default "python -m pytest -x -q"; without -x '
                        'with --partial-credit)')
    r.add_argument("--partial-credit", action="store_true",
                   help="reward a failing suite by the share of the blanked hole's failing "
                        "tests the completion mends (default: all or nothing)")
    r.add_argument("--test-timeout", type=float, default=120.0)
    r.add_argument("--minutes", type=float, default=10.0, help="time budget (default 10)")
    r.add_argument("--max-rounds", type=int, default=0, help="stop after N rollout rounds")
    r.add_argument("--group", type=int, default=4, help="completions per task, G (default 4)")
    r.add_argument("--tasks", type=int, default=2,
                   help="tasks updated on per round per process (default 2)")
    r.add_argument("--draws", type=int, default=3,
                   help="draw up to DRAWS x TASKS tasks a round to find groups whose rewards "
                        "differ (default 3; 1: keep every group)")
    r.add_argument("--iterations", type=int, default=2, help="updates per round, mu")
    r.add_argument("--beta", type=float, default=0.01, help="KL weight (default 0.01)")
    r.add_argument("--epsilon", type=float, default=0.5, help="PPO clip range (default 0.5)")
    r.add_argument("--lr", type=float, default=5e-5)
    r.add_argument("--temperature", type=float, default=1.2)
    r.add_argument("--canvas", type=int, default=24, help="completion slots per rollout")
    r.add_argument("--context-tokens", type=int, default=None,
                   help="repository context in each rollout's prompt, as the editors ask "
                        "(default 192; 0: none)")
    r.add_argument("--holes", type=int, default=24, help="verified holes to mine")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--lora-rank", type=int, default=0,
                   help="train a rank-R LoRA adapter (peft format) instead of every weight")
    r.add_argument("--checkpoint-seconds", type=float, default=60.0,
                   help="how often the resumable checkpoint is written (after a round)")
    e = tsub.add_parser("export", help="write a run's checkpoint as a Dream model folder")
    e.add_argument("--run", type=Path, default=Path("runs/embedded"))
    e.add_argument("--tokenizer", type=Path, default=DATA / "tokenizer")
    e.add_argument("--out", type=Path, required=True)

    x = sub.add_parser("export", help="export a model as GGUF for the llama.cpp back end")
    xsub = x.add_subparsers(dest="export_command", required=True, parser_class=type(x))
    g = xsub.add_parser("gguf", help="write a Dream GGUF (f32, f16, q8_0, q4_k_m)")
    g.add_argument("--model", default=None, help="model folder or name (default: embedded)")
    g.add_argument("--out", type=Path, required=True)
    g.add_argument("--quant", default="f16", choices=["f32", "f16", "q8_0", "q4_k_m"])

    ev = sub.add_parser("eval", help="HumanEval infilling / whole-function pass@1, held-out loss")
    ev.add_argument("task", choices=["infill-single", "infill-multi", "function", "loss", "repo"])
    ev.add_argument("--repo", type=Path, default=None, help="repo: the repository's root")
    ev.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                    help="repo: held-out files (never trained on or retrieved); repeatable")
    ev.add_argument("--personalized", default=None,
                    help="repo: a personalized model folder to compare with --model")
    ev.add_argument("--grpo", default=None,
                    help="repo: the personalized model after `unmask train grpo` (scored with "
                         "repository context)")
    ev.add_argument("--test-cmd", default="python -m pytest -x -q",
                    help="repo: the command that runs the repository's tests")
    ev.add_argument("--test-timeout", type=float, default=120.0)
    ev.add_argument("--holes", type=int, default=60, help="repo: single-line holes (blocks: half)")
    ev.add_argument("--retrieval", default=None, choices=RETRIEVALS,
                    help=f"repo: what the repository context holds (default {RETRIEVAL}): "
                         "the edited file's lines outside the window that continue the lines "
                         "before the hole (file), other files' similar chunks (bm25), stubs "
                         "of the names used (symbols), or two of them (both, file+bm25)")
    ev.add_argument("--fresh", action="store_true",
                    help="repo: decode every answer again instead of reusing the answers kept "
                         "from earlier runs of the same model and requests")
    ev.add_argument("--workers", type=int, default=None,
                    help="repo: processes that decode answers, each on its share of the cores "
                         "(default: 2 on a CPU with 2+ cores and room for the copies, else 1)")
    ev.add_argument("--model", default=None)
    ev.add_argument("--device", default="auto")
    ev.add_argument("--dtype", default="auto")
    ev.add_argument("--limit", type=int, default=0,
                    help="evaluate N tasks spread evenly over the set (loss: N windows)")
    ev.add_argument("--max-new-tokens", type=int, default=None)
    ev.add_argument("--steps", type=int, default=None)
    ev.add_argument("--alg", default=None, help="default: the model's generation_config")
    ev.add_argument("--block-length", type=int, default=None,
                    help="semi-autoregressive block size; 0 = one block (default: the model's)")
    ev.add_argument("--threshold", type=float, default=None)
    ev.add_argument("--gamma", type=float, default=None)
    ev.add_argument("--cache-refresh", type=int, default=None)
    ev.add_argument("--max-repeats", type=int, default=None)
    ev.add_argument("--reuse-context", action="store_true", default=None,
                    help="with --cache-refresh: keys kept from the previous task (approximate)")
    ev.add_argument("--stop-loops", action="store_true", default=None,
                    help="end a completion at a loop and keep its first copy")
    ev.add_argument("--limit-scope", action="store_true", default=None,
                    help="cut a multi-line completion where it leaves the hole's indentation "
                         "block or repeats the suffix (the editors' block requests)")
    ev.add_argument("--length", default=None, choices=["adaptive", "fixed", "oracle"],
                    help="infill canvas (default: adaptive; repo: the editors' settings); "
                         "oracle = the reference's length (analysis only)")
    ev.add_argument("--parent-branches", type=int, default=None,
                    help="infill: the parent writes N answers too and its likeliest with the "
                         "suffix wins, blocks at every length (engine.rerank; 0 = off; "
                         "default: the model's; repo: the editors' parentBranches, 0)")
    ev.add_argument("--rerank-suffix-lines", type=int, default=None)
    ev.add_argument("--check-examples", action="store_true", default=None,
                    help="function: run each candidate on the prompt's >>> examples in the "
                         "sandbox and prefer those that pass (also scores the parent's pick "
                         "without them)")
    ev.add_argument("--syntax-guard", action="store_true",
                    help="infill: decode again an answer that leaves the task's file "
                         "unparsable, as the language server does (engine.syntax_guard)")
    ev.add_argument("--retries", type=int, default=None,
                    help="with --syntax-guard: other decodings tried (default: the engine's)")
    ev.add_argument("--jobs", type=int, default=1,
                    help="tasks run in parallel (threads; torch threads are split among them)")
    ev.add_argument("--empty", action="store_true", help="score an empty completion (the floor)")
    ev.add_argument("--decode", default="diffusion", choices=["diffusion", "ar"],
                    help="ar: the model as its autoregressive parent (causal mask, greedy, "
                         "prefix only, healed): the baseline a diffusion model must beat")
    ev.add_argument("--out", type=Path, help="write per-task results as JSONL (each kept in "
                    "OUT.partial as it finishes)")
    ev.add_argument("--resume", action="store_true",
                    help="with --out: reuse the records of a stopped run with the same flags "
                         "(OUT.partial) and run only the tasks missing")
    ev.add_argument("--val", type=Path, default=DATA / "tokens" / "val.bin")


def run_train_command(args: argparse.Namespace) -> int:
    if args.command == "eval" and args.task == "repo":
        return _eval_repo(args)
    if args.command == "eval":
        return _eval(args)
    if args.command == "export":
        from engine.gguf_export import write_gguf
        from engine.loading import resolve_model

        folder = resolve_model(args.model)
        if not folder.is_dir():
            raise ConfigError(f"{folder} is not a model folder; export needs safetensors + config")
        out = write_gguf(folder, args.out, args.quant)
        print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB)", file=sys.stderr)
        return 0
    cmd = args.train_command
    if cmd == "corpus":
        from training.corpus import build_corpus

        stats = build_corpus(args.out)
        print(json.dumps(stats, indent=2))
        return 0
    if cmd == "tokenizer":
        return _tokenizer(args)
    if cmd == "pretrain":
        return _pretrain(args)
    if cmd == "adapt":
        return _adapt(args)
    if cmd == "parent-lines":
        return _parent_lines(args)
    if cmd == "export":
        return _export(args)
    if cmd == "personalize":
        return _personalize(args)
    if cmd == "grpo":
        return _grpo(args)
    raise ConfigError(f"unknown train command {cmd!r}")


def _eval(args) -> int:
    """Build the engine and settings from the flags, run the task set, print a table."""
    from rich.console import Console
    from rich.table import Table

    from training import evaluate as ev

    if args.task == "loss":
        print(json.dumps(ev.eval_loss(args.model, args.val, args.limit, args.device, args.dtype),
                         indent=2))
        return 0
    single = {"infill-single": True, "infill-multi": False, "function": None}[args.task]
    length = args.length or "adaptive"
    engine = settings = None
    if not args.empty:
        from engine.api import Engine

        engine = Engine.load(args.model, device=args.device, dtype=args.dtype)
        settings = ev.task_settings(engine, single, max_new_tokens=args.max_new_tokens,
                                    steps=args.steps, alg=args.alg,
                                    block_length=args.block_length, threshold=args.threshold,
                                    gamma=args.gamma, cache_refresh=args.cache_refresh,
                                    max_repeats=args.max_repeats,
                                    stop_loops=args.stop_loops,
                                    limit_scope=args.limit_scope,
                                    reuse_context=args.reuse_context, retries=args.retries,
                                    parent_branches=args.parent_branches,
                                    rerank_suffix_lines=args.rerank_suffix_lines,
                                    check_examples=args.check_examples)
    folder = engine.folder if engine is not None else None  # the weights the records are of
    label = "empty" if args.empty else (args.model or "default")
    if args.syntax_guard and not args.empty:
        label += " + syntax guard"
    if args.decode != "ar" and settings is not None \
            and settings.parent_branches and engine.parent_folder is not None:
        label += f" + parent rerank ({settings.parent_branches} answers)"
        label += " + docstring examples" if settings.check_examples and single is None else ""
    if args.decode == "ar":
        if engine is None or engine.backend != "torch":
            raise ConfigError("--decode ar needs a model on the torch back end (not --empty)")
        if args.syntax_guard:
            raise ConfigError("--syntax-guard decodes again with the diffusion engine; drop it "
                              "with --decode ar")
        engine, label = ev.ARParent(engine), f"{label} (AR, prefix only)"
    journal = _journal(args, folder, settings, label, length)
    with EvalProgress(args.task) as progress:
        if single is None:
            records = ev.eval_function(engine, settings, args.limit, args.jobs, progress,
                                       journal)
        else:
            records = ev.eval_infill(engine, settings, single, args.limit, length, args.jobs,
                                     progress, guard=args.syntax_guard, journal=journal)
    summary = ev.summarize(records, args.task, label,
                           None if args.empty or args.decode == "ar" or single is None
                           else length)  # a function's canvas is --max-new-tokens
    if journal is not None:
        journal.finish(records)
    table = Table(title=f"HumanEval {args.task}")
    for col in ("model", "length", "tasks", "passed", "pass@1", "looping", "passes/task",
                "length error"):
        table.add_column(col)
    table.add_row(str(summary["model"]), str(summary["length"]), str(summary["n"]),
                  str(summary["passed"]), f"{summary['pass@1']:.3f}", str(summary["looping"]),
                  *(str(summary[k] if summary[k] is not None else "-")
                    for k in ("passes", "length_error")))
    Console().print(table)
    print(json.dumps(summary), file=sys.stderr)
    return 0


def _journal(args, folder, settings, label: str, length: str):
    """``--out``'s journal (``training.journal``), keyed by everything that makes a record:
    the task set, the model's weights, the decoding and every generation setting."""
    if not args.out:
        if args.resume:
            raise ConfigError("--resume continues the run that --out names; add --out FILE")
        return None
    from dataclasses import asdict

    from training.journal import Journal, weights_digest

    key = {"task": args.task, "limit": args.limit, "label": label, "length": length,
           "decode": args.decode, "syntax_guard": args.syntax_guard,
           "model": str(folder) if folder else None,
           "weights": weights_digest(folder) if folder else None,
           "settings": asdict(settings) if settings is not None else None}
    journal = Journal(args.out, key, args.resume)
    if journal.done:
        print(f"resuming: {len(journal.done)} task records kept in {journal.partial}",
              file=sys.stderr)
    return journal


class EvalProgress:
    """A rich progress bar on a terminal; off one (CI, pipes) a log line every 50 tasks or every
    minute, whichever comes first: slow tasks (multi-line, whole functions, repository holes)
    would otherwise leave a log silent for many minutes."""

    def __init__(self, label: str) -> None:
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeRemainingColumn)

        self.label = label
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                            console=Console(stderr=True))
        self.task = None
        self.first = None  # tasks done before this run's first one finished
        self.started = self.logged = time.monotonic()

    def __enter__(self):
        self.bar.__enter__()
        self.task = self.bar.add_task(self.label, total=None, info="")
        return self

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)

    def __call__(self, done: int, total: int, passed: int) -> None:
        self.bar.update(self.task, completed=done, total=total, info=f"passed {passed}")
        now = time.monotonic()
        # the rate of this run's tasks: a resumed run starts with the kept ones done
        self.first = done - 1 if self.first is None else self.first
        if not self.bar.console.is_terminal and (done % 50 == 0 or done == total
                                                 or now - self.logged >= 60):
            self.logged, spent = now, now - self.started
            ran = done - self.first
            eta = f", about {spent / ran * (total - done) / 60:.0f} min left" if ran else ""
            self.bar.console.print(f"{self.label}: {done}/{total} done, {passed} passed{eta}")


def _personalize(args) -> int:
    from training.personalize import PersonalizeConfig, personalize

    cfg = PersonalizeConfig(repo=str(args.repo), out=str(args.out), exclude=args.exclude,
                            base=args.base, minutes=args.minutes, seed=args.seed,
                            lora_rank=args.lora_rank, replay=args.replay,
                            documents=args.documents, copy_holes=args.copy_holes,
                            validation=args.validation, validate_on=args.validate_on,
                            parent_minutes=args.parent_minutes,
                            **({"lr": args.lr} if args.lr is not None else {}))
    summary = _with_bar("personalize", (cfg.minutes + cfg.parent_minutes) * 60, "", lambda rec: (
        f"{rec['phase']} step {rec['step']} loss {rec['loss']:.3f} {rec['tok_per_s']:.0f} tok/s"),
        lambda progress: personalize(cfg, progress))
    print(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=2))
    print(f"personalized model: {args.out} (use --model {args.out})", file=sys.stderr)
    return 0


def _grpo(args) -> int:
    from training.grpo import GrpoConfig, grpo

    cfg = GrpoConfig(repo=str(args.repo), out=str(args.out), init=args.init,
                     exclude=args.exclude, test_cmd=args.test_cmd,
                     test_timeout=args.test_timeout, minutes=args.minutes,
                     max_rounds=args.max_rounds, group=args.group, tasks=args.tasks,
                     draws=args.draws, iterations=args.iterations, beta=args.beta,
                     epsilon=args.epsilon,
                     lr=args.lr, temperature=args.temperature, canvas=args.canvas,
                     holes=args.holes, seed=args.seed, lora_rank=args.lora_rank,
                     partial_credit=args.partial_credit,
                     checkpoint_seconds=args.checkpoint_seconds,
                     **({} if args.context_tokens is None else
                        {"context_tokens": args.context_tokens}))
    summary = _with_bar("grpo", cfg.minutes * 60, "mining test-verified holes", lambda rec: (
        f"round {rec['round']} reward {rec['reward']:.2f} kl {rec['kl']:.4f} "
        f"clip {rec['clip_fraction']:.2f}"), lambda progress: grpo(cfg, progress))
    if summary:
        print(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=2))
        print(f"trained model: {args.out} (use --model {args.out}); log: {args.out}/log.jsonl, "
              f"curve: {args.out}/reward.png", file=sys.stderr)
    return 0


def _with_bar(label: str, total_s: float, first: str, describe, run):
    """``run(progress)`` under a time-budget progress bar on stderr; ``progress(record)`` moves
    it to ``record["elapsed_s"]`` and shows ``describe(record)``. Off a terminal (CI, pipes),
    where rich draws no bar, the same line is logged once a minute."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    logged = 0.0

    def progress(rec: dict) -> None:
        nonlocal logged
        bar.update(task, completed=rec["elapsed_s"], info=describe(rec))
        if not bar.console.is_terminal and rec["elapsed_s"] - logged >= 60:
            logged = rec["elapsed_s"]
            bar.console.print(f"{label}: {rec['elapsed_s'] / 60:.1f}/{total_s / 60:.0f} min, "
                              f"{describe(rec)}")

    with Progress(TextColumn(label), BarColumn(), TimeRemainingColumn(),
                  TextColumn("{task.fields[info]}"), console=_stderr()) as bar:
        task = bar.add_task(label, total=total_s, info=first)
        return run(progress)


def editor_request(engine, hole, length: str | None = None, parent_branches: int = 0):
    """``training.repo_eval.Request``: a hole asked for as the editors ask with the default
    settings (a line hole as a single-line suggestion, a block as an explicit request).
    ``length`` replaces the editors' canvas: adaptive, fixed, or oracle (the removed lines'
    own length: how much a right-sized canvas would give, for analysis only);
    ``parent_branches`` is the editors' ``parentBranches`` setting (the parent's rerank)."""
    from assistant.requests import request_settings, request_window
    from assistant.settings import AssistantSettings
    from training.evaluate import oracle_settings

    s = AssistantSettings(parent_branches=parent_branches)
    mode = "single" if hole.kind == "line" else "multi"
    window = request_window(s, engine, hole.prefix + hole.suffix, len(hole.prefix), mode)
    if length == "oracle":
        return window.prefix, window.suffix, oracle_settings(
            engine, request_settings(s, engine, mode), hole)
    return window.prefix, window.suffix, request_settings(s, engine, mode, length=length)


def _eval_repo(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from engine.api import Engine, GenerationSettings
    from engine.loading import cache_dir
    from engine.pool import InfillPool, default_workers, worker_threads
    from engine.sandbox import RepoSandbox
    from training import repo_eval

    if args.repo is None:
        raise ConfigError("eval repo needs --repo PATH")
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers {args.workers}: give 1 or more (1 decodes in-process)")
    repo = args.repo.resolve()
    branches = 0 if args.parent_branches is None else args.parent_branches
    GenerationSettings(parent_branches=branches)  # its check of the flag, before any work
    progress = EvalProgress("repo")
    with RepoSandbox(repo, args.test_cmd, args.test_timeout) as sandbox, progress:
        def tick(label, done, total, passed):
            if label != progress.label:  # a new phase: its own count, so its own ETA
                progress.label, progress.started = label, time.monotonic()
            progress(done, total, passed)

        bench = repo_eval.mine(repo, args.exclude, sandbox, args.holes, args.holes // 2,
                               cache=cache_dir() / "holes", progress=tick)
        # (label, model, with repository context): up to five configurations
        configs = [("base", args.model, (False, True))]
        if args.personalized:
            configs.append(("personalized", args.personalized, (False, True)))
        if args.grpo:
            configs.append(("personalized + GRPO", args.grpo, (True,)))
        rows, records, kept, verdicts = [], [], [], {}
        for name, model, contexts in configs:
            engine = Engine.load(model, device=args.device, dtype=args.dtype)
            workers = args.workers or default_workers(engine)
            answers = None if args.fresh else repo_eval.AnswerCache(
                cache_dir() / "repo-answers", engine, worker_threads(workers))
            kept += [answers] if answers else []
            with ExitStack() as stack:
                decode = None if workers == 1 else stack.enter_context(InfillPool(
                    engine.folder, args.device, args.dtype, workers)).map
                for ctx in contexts:
                    label = f"{name}{' + context' if ctx else ''}"
                    began = time.monotonic()
                    res = repo_eval.score(
                        engine, bench, sandbox, ctx, partial(editor_request, length=args.length,
                                                             parent_branches=branches),
                        tick, label, records, args.retrieval or RETRIEVAL, answers, verdicts,
                        decode)
                    res["minutes"] = round((time.monotonic() - began) / 60, 2)
                    rows.append((label, res))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("".join(json.dumps(r) + "\n" for r in records))
    chosen = "".join(f", {name}: {value}" for name, value in
                     (("canvas", args.length), ("retrieval", args.retrieval),
                      ("parent branches", branches)) if value)
    table = Table(title=f"repo holes: {repo.name}, held out: {', '.join(bench.held_out)}{chosen}")
    for col in ("model", "line n", "line pass@1", "line exact", "block n", "block pass@1",
                "block exact", "minutes"):
        table.add_column(col)
    for label, res in rows:
        line, block = res.get("line", {}), res.get("block", {})
        table.add_row(label, *[str(r.get(k, "-")) for r in (line, block)
                               for k in ("n", "pass@1", "exact")], str(res["minutes"]))
    Console().print(table)
    # where each hole's removed lines already occur: what learning the repository could copy
    labels = [label for label, _ in rows]
    Console().print(_grouped_table(
        "holes by where their removed lines already occur (passed per model)",
        "lines found in", repo_eval.by_source(records).items(), labels))
    # with context: did it show the removed lines (retrieval's part) and were they copied
    Console().print(_grouped_table(
        "holes by whether the context showed their removed lines (passed per model with "
        "context)", "context showed them",
        (((kind, "yes" if showed else "no"), row)
         for (kind, showed), row in repo_eval.by_shown(records).items()),
        [label for label in labels if label.endswith(" + context")]))
    print(f"{len(verdicts)} distinct answers of {len(records)} scored: the same answer to the "
          "same hole ran the suite once", file=sys.stderr)
    reused = sum(a.hits for a in kept)
    if reused:
        asked = reused + sum(a.misses for a in kept)
        print(f"{reused} of {asked} answers reused from earlier runs of the same model and "
              "requests (--fresh decodes them again)", file=sys.stderr)
    print(json.dumps({label: res for label, res in rows}), file=sys.stderr)
    return 0


def _grouped_table(title: str, group: str, groups, labels: list[str]):
    """A table of holes per (kind, group) and what each model passed (``repo_eval.by_source``,
    ``repo_eval.by_shown``)."""
    from rich.table import Table

    table = Table(title=title)
    for col in ("kind", group, "n", *labels):
        table.add_column(col)
    for (kind, name), row in groups:
        table.add_row(kind, name, str(row["n"]), *(str(row[label]) for label in labels))
    return table


def _stderr():
    from rich.console import Console

    return Console(stderr=True)


def _tokenizer(args) -> int:
    from tokenizers import Tokenizer

    from training.corpus import iter_texts
    from training.tokenizer import (bytes_per_token, encode_to_shard, save_tokenizer_folder,
                                    train_tokenizer)

    train = args.corpus / "train.jsonl"
    if not train.exists():
        raise ConfigError(f"{train} not found; run `unmask train corpus` first")
    if args.reuse is not None:
        src = args.reuse / "tokenizer.json"
        if not src.exists():
            raise ConfigError(f"{src} not found; --reuse takes a model folder with tokenizer.json")
        tok = Tokenizer.from_file(str(src))
    else:
        tok = train_tokenizer(train, args.vocab_size)
    save_tokenizer_folder(tok, args.out, 2048)
    val = list(iter_texts(args.corpus / "val.jsonl"))
    print(f"vocab {tok.get_vocab_size()}: {bytes_per_token(tok, val):.3f} bytes/token on validation")
    args.tokens.mkdir(parents=True, exist_ok=True)
    for split in ("val", "train"):
        n = encode_to_shard(tok, args.corpus / f"{split}.jsonl", args.tokens / f"{split}.bin")
        print(f"{split}: {n} tokens")
    return 0


def _pretrain(args) -> int:
    from training.pretrain import TrainConfig, train

    return _run_training(args, TrainConfig, train, "pretrain",
                         lambda rec: f"step {rec['step']} {rec['phase']} loss {rec['loss']:.3f} ")


def _adapt(args) -> int:
    from training.adapt import AdaptConfig, train

    return _run_training(args, AdaptConfig, train, "adapt",
                         lambda rec: f"step {rec['step']} attention {rec['attn_ratio']:.2f} "
                                     f"loss {rec['loss']:.3f} ")


def _parent_lines(args) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from training.adapt import AdaptConfig, build_parent_lines

    cfg = _read_config(args, AdaptConfig)
    if not cfg.parent_lines:
        raise ConfigError(f"{args.config} sets no parent_lines folder to build")
    _need_tokens(cfg, ("train.bin",))
    with Progress("parent lines", BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn()) as bar:
        task = bar.add_task("", total=cfg.parent_lines_count)
        have = build_parent_lines(cfg, lambda done, total: bar.update(task, completed=done))
    print(f"{have} records in {cfg.parent_lines}")
    return 0


def _read_config(args, config_cls):
    """``args.config`` read as ``config_cls``; a one-line error naming the file."""
    try:
        return config_cls.from_toml(args.config)
    except (OSError, ValueError, TypeError) as err:
        raise ConfigError(f"bad training config {args.config}: {err}") from err


def _need_tokens(cfg, parts: tuple[str, ...]) -> None:
    """The token files ``cfg`` trains on, or a one-line error naming the commands that make
    them."""
    for part in parts:
        if not (Path(cfg.data_dir) / part).exists():
            raise ConfigError(f"{Path(cfg.data_dir) / part} not found; run `unmask train corpus` "
                              "and `unmask train tokenizer` first")


def _run_training(args, config_cls, train, name: str, describe) -> int:
    """Read the TOML config, check the data is there, run ``train`` under a progress bar."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    cfg = _read_config(args, config_cls)
    _need_tokens(cfg, ("train.bin", "val.bin"))
    if args.max_steps is not None:
        cfg.max_steps = args.max_steps
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeRemainingColumn(),
                  TextColumn("{task.fields[info]}"), transient=False) as bar:
        task = bar.add_task(name, total=cfg.budget_minutes, info="")

        def progress(rec: dict) -> None:
            info = describe(rec) + f"{rec['tok_per_s']:.0f} tok/s"
            bar.update(task, completed=rec["elapsed_min"], info=info)

        out = train(cfg, progress)
    print(f"{'checkpoint' if name == 'pretrain' else 'model'}: {out}")
    return 0


def _export(args) -> int:
    from safetensors.torch import load_file

    from engine.loading import read_config
    from engine.model import DreamModel
    from training.export import save_model_folder
    from training.pretrain import find_checkpoint

    ckpt = find_checkpoint(args.run / "last")
    if ckpt is None:
        raise ConfigError(f"no checkpoint in {args.run / 'last'}; run `unmask train pretrain` "
                          "first")
    cfg = read_config(ckpt)
    model = DreamModel(cfg)
    model.load_state_dict(load_file(str(ckpt / "model.safetensors")), strict=False)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    out = save_model_folder(model, args.tokenizer, args.out)
    print(f"wrote {out}", file=sys.stderr)
    return 0
