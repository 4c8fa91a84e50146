"""``unmask eval``: HumanEval infilling and whole-function pass@1, held-out loss.

Infilling follows Bavarian et al. 2022 ("Efficient Training of Language Models to Fill in the
Middle"): single-line = every non-blank line of every canonical solution masked in turn (1033
tasks); the completion is cut at its first newline, as an editor's single-line completion is
(InCoder's protocol). Multi-line = up to three spans of 2, 3 and 4 consecutive solution lines per
problem, at positions fixed by a hash of the task id (our deterministic subset of the paper's 5815).
A task passes when prefix + completion + suffix passes HumanEval's tests in ``engine.sandbox``.
``--empty`` scores an empty completion: the floor a model has to beat.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path

from engine.errors import ConfigError
from engine.sandbox import run_python
from training.decontam import human_eval_problems

STOP = ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert "]


@dataclass
class InfillTask:
    task_id: str
    prefix: str
    middle: str
    suffix: str
    test: str
    entry_point: str
    single_line: bool


def solution_lines(p: dict) -> list[str]:
    return p["canonical_solution"].splitlines(keepends=True)


def single_line_tasks(problems: list[dict]) -> list[InfillTask]:
    tasks = []
    for p in problems:
        lines = solution_lines(p)
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            tasks.append(InfillTask(f"{p['task_id']}/L{i}", p["prompt"] + "".join(lines[:i]),
                                    line, "".join(lines[i + 1:]), p["test"], p["entry_point"],
                                    True))
    return tasks


def multi_line_tasks(problems: list[dict]) -> list[InfillTask]:
    tasks = []
    for p in problems:
        lines = solution_lines(p)
        for k in (2, 3, 4):
            if len(lines) < k + 1:
                continue
            h = int(hashlib.sha1(f"{p['task_id']}:{k}".encode()).hexdigest(), 16)
            i = h % (len(lines) - k + 1)
            tasks.append(InfillTask(f"{p['task_id']}/M{i}+{k}", p["prompt"] + "".join(lines[:i]),
                                    "".join(lines[i:i + k]), "".join(lines[i + k:]), p["test"],
                                    p["entry_point"], False))
    return tasks


def program(prefix: str, middle: str, suffix: str, test: str, entry_point: str) -> str:
    return f"{prefix}{middle}{suffix}\n\n{test}\n\ncheck({entry_point})\n"


def first_line(text: str) -> str:
    return text.split("\n", 1)[0] + "\n"


def truncate_function(text: str) -> str:
    cut = len(text)
    for s in STOP:
        i = text.find(s)
        if i != -1:
            cut = min(cut, i)
    return text[:cut]


def _engine_and_settings(args, max_new: int, steps: int):
    """Greedy settings: the model's generation_config for alg / block length unless overridden,
    the task's canvas and steps unless given."""
    from assistant.cli import block_length_flag
    from engine.api import Engine, GenerationSettings

    eng = Engine.load(args.model, device=args.device, dtype=args.dtype)
    length = "fixed" if args.length == "oracle" else args.length
    block = eng.defaults.get("block_length") if args.block_length is None else \
        block_length_flag(args.block_length)
    return eng, GenerationSettings(max_new_tokens=args.max_new_tokens or max_new,
                                   steps=args.steps or steps, length=length, temperature=0.0,
                                   alg=args.alg or eng.defaults.get("alg", "entropy"),
                                   block_length=block)


def spread(items: list, limit: int) -> list:
    """``limit`` items evenly spaced over ``items`` (all of them when limit is 0)."""
    if not limit or limit >= len(items):
        return items
    return [items[i * len(items) // limit] for i in range(limit)]


def _oracle(eng, settings, task):
    """A canvas exactly as long as the reference middle (an upper bound for length strategies;
    it peeks at the answer's length, so it is reported, never used by the product)."""
    n = len(eng.tokenizer.encode(task.middle))
    tokens_per_step = settings.max_new_tokens / settings.steps
    return replace(settings, max_new_tokens=n, steps=max(1, round(n / tokens_per_step)))


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, \
        TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                    console=__import__("rich.console").console.Console(stderr=True))


def _pool(items: list, work, jobs: int, label: str) -> list[dict]:
    """``work(item) -> record`` for every item on ``jobs`` threads (torch and the sandbox release
    the GIL), records in input order, with a progress bar (a log line every 50 off a terminal)."""
    if jobs > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // jobs))
    with ThreadPoolExecutor(max(1, jobs)) as pool, _progress() as bar:
        job = bar.add_task(label, total=len(items), info="")
        futures = [pool.submit(work, it) for it in items]
        passed = 0
        for n, fut in enumerate(as_completed(futures), 1):
            passed += fut.result()["passed"]
            bar.update(job, advance=1, info=f"passed {passed}")
            if not bar.console.is_terminal and (n % 50 == 0 or n == len(items)):
                bar.console.print(f"{label}: {n}/{len(items)} done, {passed} passed")
        return [f.result() for f in futures]


def eval_infill(args, single: bool) -> dict:
    problems = human_eval_problems()
    tasks = single_line_tasks(problems) if single else multi_line_tasks(problems)
    tasks = spread(tasks, args.limit)
    eng = settings = None
    if not args.empty:
        eng, settings = _engine_and_settings(args, 32 if single else 96, 32 if single else 96)
        if single:  # only the first line is kept: stop denoising once it is settled
            settings = replace(settings, stop=("\n",))

    def work(task: InfillTask) -> dict:
        extra: dict = {}
        middle = ""
        if eng is not None:
            s = _oracle(eng, settings, task) if args.length == "oracle" else settings
            try:
                res = eng.infill(task.prefix, task.suffix, s)
            except ConfigError as err:  # e.g. longer than the model's context: a failed task
                return {"task_id": task.task_id, "passed": False, "status": f"error: {err}",
                        "completion": "", "reference": task.middle}
            middle = first_line(res.completion) if single else res.completion
            if not single and middle and not middle.endswith("\n"):
                middle += "\n"
            extra = {"canvas_len": res.canvas_len, "steps": res.steps,
                     "elapsed_s": round(res.elapsed_s, 4)}
        r = run_python(program(task.prefix, middle, task.suffix, task.test, task.entry_point))
        return {"task_id": task.task_id, "passed": r.passed, "status": r.status,
                "completion": middle, "reference": task.middle, **extra}

    label = "infill-single" if single else "infill-multi"
    return _summary(_pool(tasks, work, args.jobs, label), args, label)


def eval_function(args) -> dict:
    problems = spread(human_eval_problems(), args.limit)
    eng = settings = None
    if not args.empty:
        eng, settings = _engine_and_settings(args, 128, 64)

    def work(p: dict) -> dict:
        body = ""
        if eng is not None:
            try:
                body = truncate_function(eng.generate(p["prompt"], settings, raw=True).completion)
            except ConfigError as err:
                return {"task_id": p["task_id"], "passed": False, "status": f"error: {err}",
                        "completion": ""}
        r = run_python(program(p["prompt"], body, "", p["test"], p["entry_point"]))
        return {"task_id": p["task_id"], "passed": r.passed, "status": r.status,
                "completion": body}

    return _summary(_pool(problems, work, args.jobs, "function"), args, "function")


def eval_loss(args) -> dict:
    """Held-out masked CE at fixed mask ratios and the diffusion ELBO in bits per byte."""
    import numpy as np
    import torch

    from engine.loading import load_model, resolve_model
    from engine.tokenizer import DreamTokenizer

    folder = resolve_model(args.model)
    loaded = load_model(folder, args.device, args.dtype)
    tok = DreamTokenizer.from_folder(folder)
    data = np.memmap(args.val, dtype=np.uint16, mode="r")
    gen = torch.Generator().manual_seed(0)
    L, n_windows = 512, args.limit or 32
    starts = torch.randint(len(data) - L, (n_windows,), generator=gen).tolist()
    windows = torch.tensor(np.stack([data[s:s + L] for s in starts]).astype(np.int64))
    n_bytes = sum(len(tok.decode(w.tolist()).encode()) for w in windows)
    mask = loaded.config.mask_token_id
    out: dict = {"task": "loss", "model": str(folder), "windows": n_windows}
    elbo_nats = 0.0
    ts = [0.15, 0.5, 0.9] + [(i + 0.5) / 8 for i in range(8)]
    with torch.inference_mode():
        for t in ts:
            total_ce, count = 0.0, 0
            for w in windows.split(8):
                masked = torch.rand(w.shape, generator=gen) < t
                masked[:, 0] = False
                noisy = torch.where(masked, torch.full_like(w, mask), w)
                rows, cols = masked.nonzero(as_tuple=True)
                logits = loaded.model(noisy.to(loaded.device), select=(rows, cols - 1))
                ce = torch.nn.functional.cross_entropy(logits.float(), w[rows, cols].to(
                    loaded.device), reduction="sum")
                total_ce, count = total_ce + ce.item(), count + rows.numel()
            if t in (0.15, 0.5, 0.9):
                out[f"masked_ce@{t}"] = round(total_ce / max(count, 1), 4)
            else:
                elbo_nats += total_ce / t / 8  # midpoint rule over t in (0, 1)
    out["elbo_bits_per_byte"] = round(elbo_nats / math.log(2) / n_bytes, 4)
    out["bytes_per_token"] = round(n_bytes / windows.numel(), 3)
    print(json.dumps(out, indent=2))
    return out


def _summary(records: list[dict], args, task: str) -> dict:
    n = len(records)
    passed = sum(r["passed"] for r in records)
    summary = {"task": task, "model": "empty" if args.empty else (args.model or "default"),
               "length": None if args.empty else args.length, "n": n, "passed": passed,
               "pass@1": round(passed / n, 4) if n else 0.0}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w") as fh:
            for r in records:
                fh.write(json.dumps(r) + "\n")
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"HumanEval {task}")
    for col in ("model", "length", "tasks", "passed", "pass@1"):
        table.add_column(col)
    table.add_row(str(summary["model"]), str(summary["length"]), str(n), str(passed),
                  f"{summary['pass@1']:.3f}")
    Console().print(table)
    print(json.dumps(summary), file=sys.stderr)
    return summary


def run_eval(args) -> int:
    if args.task == "loss":
        eval_loss(args)
    elif args.task == "function":
        eval_function(args)
    else:
        eval_infill(args, single=args.task == "infill-single")
    return 0
