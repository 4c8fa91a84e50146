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
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path

from engine.errors import ConfigError
from engine.repetition import find_loop
from engine.sandbox import run_python
from engine.syntax_guard import answer_check
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


def task_settings(engine, single: bool | None, **overrides):
    """Greedy settings for a task set through ``Engine.settings`` (the model's generation_config
    for the decoding order unless overridden): single-line canvases of 32 slots that stop after
    their line, multi-line 96, whole functions 128 slots in 64 steps."""
    new, steps = {True: (32, 32), False: (96, 96), None: (128, 64)}[single]
    given = {k: v for k, v in overrides.items() if v is not None}
    given.setdefault("max_new_tokens", new)
    given.setdefault("steps", steps)
    return engine.settings(temperature=0.0, stop=("\n",) if single else None, **given)


class ARParent:
    """``--decode ar``: the same weights decoding left to right with a causal mask, reading the
    prefix only (``engine.autoregressive``); the eval functions call it as they call an engine."""

    def __init__(self, engine) -> None:
        self.engine, self.tokenizer = engine, engine.tokenizer

    def infill(self, prefix: str, suffix: str, settings, accept=None):
        """``accept`` is never used: ``--syntax-guard`` is refused with ``--decode ar``."""
        return self.complete(prefix, settings.max_new_tokens, tuple(settings.stop or ()))

    def generate(self, prompt: str, settings, raw: bool = True):
        return self.complete(prompt, settings.max_new_tokens, tuple(STOP))

    def complete(self, prefix: str, max_new: int, stop: tuple[str, ...] = ()):
        """The continuation of ``prefix`` as an ``engine.api.Completion`` (the suffix is not
        read: that is the baseline's handicap)."""
        from engine.api import Completion
        from engine.autoregressive import greedy_continue
        from engine.healing import plan_healing

        engine, tok = self.engine, self.tokenizer
        start = time.perf_counter()
        heal = plan_healing(tok, prefix, "")  # what infill_prompt cuts from the prefix
        ids = engine.infill_prompt(prefix, "", max_new)[0]
        ends = engine.end_ids | ({engine.im_end_id} - {None})
        # a stop string counts only after the healed cut (the continuation starts with a newline)
        out = greedy_continue(engine.denoiser.loaded.model, ids, max_new, ends, stop,
                              lambda o: heal.completion(tok.decode(o), final=False))
        text = heal.completion(tok.decode(out), final=False)
        return Completion(text, out, list(range(len(out))), len(out), max_new,
                          time.perf_counter() - start, len(ids),
                          {"forward_passes": len(out) + 1})


def spread(items: list, limit: int) -> list:
    """``limit`` items evenly spaced over ``items`` (all of them when limit is 0)."""
    if not limit or limit >= len(items):
        return items
    return [items[i * len(items) // limit] for i in range(limit)]


def oracle_settings(eng, settings, item):
    """A canvas exactly as long as the reference middle of ``item`` (a task or a repository
    hole; an upper bound for length strategies: it peeks at the answer's length, so it is
    reported, never used by the product)."""
    n = len(eng.tokenizer.encode(item.middle))
    tokens_per_step = settings.max_new_tokens / settings.steps
    return replace(settings, max_new_tokens=n, steps=max(1, round(n / tokens_per_step)),
                   length="fixed")


def _pool(items: list, work, jobs: int, progress=None, journal=None) -> list[dict]:
    """``work(item) -> record`` for every item on ``jobs`` threads (torch and the sandbox release
    the GIL), records in input order; ``progress(done, total, passed)`` after each. With a
    ``journal`` (``training.journal``) each record is kept as it finishes, and the items it
    already holds are not run again."""
    if jobs > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // jobs))
    kept = journal.done if journal is not None else {}
    records = {task_id(it): kept[task_id(it)] for it in items if task_id(it) in kept}
    todo = [it for it in items if task_id(it) not in records]
    passed = sum(r["passed"] for r in records.values())
    pool = ThreadPoolExecutor(max(1, jobs))
    try:
        futures = [pool.submit(work, it) for it in todo]
        for n, fut in enumerate(as_completed(futures), len(records) + 1):
            record = fut.result()
            records[record["task_id"]] = record
            if journal is not None:
                journal.add(record)
            passed += record["passed"]
            if progress is not None:
                progress(n, len(items), passed)
    finally:  # stopped (Ctrl-C, an error): the tasks not started are dropped, not run unseen
        pool.shutdown(wait=True, cancel_futures=True)
    return [records[task_id(it)] for it in items]


def task_id(item) -> str:
    """The id of an infilling task or a HumanEval problem (what its record is keyed by)."""
    return item.task_id if isinstance(item, InfillTask) else item["task_id"]


def inserted(text: str, single: bool) -> str:
    """What a task's program holds of a completion: its first line, or all of it, ending in a
    newline (the suffix starts on the next line)."""
    if single:
        return first_line(text)
    return text + "\n" if text and not text.endswith("\n") else text


def eval_infill(engine, settings, single: bool, limit: int = 0, length: str = "adaptive",
                jobs: int = 1, progress=None, guard: bool = False,
                journal=None) -> list[dict]:
    """Per-task records of HumanEval single- or multi-line infilling. ``engine=None`` scores the
    empty completion (the floor); ``length="oracle"`` sizes each canvas to the reference.
    ``guard``: an answer that leaves the task's file unparsable is decoded again
    (``Engine.infill_stream``'s ``accept``, as the language server does), judged on the prompt
    alone: the file is the prefix, the answer and the suffix, never the tests."""
    tasks = spread(single_line_tasks(human_eval_problems()) if single else
                   multi_line_tasks(human_eval_problems()), limit)
    if engine is not None and length != "oracle":
        settings = replace(settings, length=length)

    def work(task: InfillTask) -> dict:
        extra: dict = {}
        middle = ""
        if engine is not None:
            s = oracle_settings(engine, settings, task) if length == "oracle" else settings
            # the hole is whole lines, its last newline included: the stand-in line ends there
            accept = answer_check(task.prefix, "\n" + task.suffix,
                                  lambda text: inserted(text, single)[:-1]) if guard else None
            try:
                res = engine.infill(task.prefix, task.suffix, s, accept=accept)
            except ConfigError as err:  # e.g. longer than the model's context: a failed task
                return {"task_id": task.task_id, "passed": False, "status": f"error: {err}",
                        "completion": "", "reference": task.middle}
            middle = inserted(res.completion, single)
            if isinstance(engine, ARParent) and not single:
                from engine.rerank import first_lines

                # reading only the prefix, it cannot know where a block ends: it is told the
                # reference's line count (a generous baseline; the diffusion model is not)
                middle = inserted(first_lines(res.completion, task.middle.count("\n")), False)
            if guard:  # accepted False: no try parsed (an editor shows nothing)
                extra |= {"tries": res.extra.get("tries", 1),
                          "accepted": res.extra.get("accepted", True)}
            if "rerank" in res.extra:  # which source the parent's rerank chose
                extra["rerank"] = res.extra["rerank"]["source"]
            extra |= {"canvas_len": res.canvas_len, "steps": res.steps,
                     "expected_len": res.extra.get("expected_len"),  # the probe's estimate
                     "reference_len": len(engine.tokenizer.encode(task.middle)),
                     "forward_passes": res.extra.get("forward_passes"),
                     "elapsed_s": round(res.elapsed_s, 4)}
        r = run_python(program(task.prefix, middle, task.suffix, task.test, task.entry_point))
        return {"task_id": task.task_id, "passed": r.passed, "status": r.status,
                "completion": middle, "reference": task.middle, **extra}

    return _pool(tasks, work, jobs, progress, journal)


def unchecked_record(p: dict, rerank: dict) -> dict:
    """With ``--check-examples``: how many candidates passed the prompt's examples and whether
    the answer the parent alone preferred passes the tests (the same as the answer's unless the
    examples changed it), so one run scores both."""
    if "examples_passed" not in rerank:
        return {}
    out = {"examples_passed": rerank["examples_passed"]}
    if "unchecked" in rerank:
        out["passed_unchecked"] = run_function(p, truncate_function(rerank["unchecked"])).passed
    return out


def run_function(p: dict, body: str):
    """HumanEval problem ``p``'s tests on its prompt and ``body``, in the sandbox."""
    return run_python(program(p["prompt"], body, "", p["test"], p["entry_point"]))


def eval_function(engine, settings, limit: int = 0, jobs: int = 1,
                  progress=None, journal=None) -> list[dict]:
    """Per-problem records of HumanEval whole-function pass@1 (``engine=None``: empty body)."""
    problems = spread(human_eval_problems(), limit)

    def work(p: dict) -> dict:
        body = generated = ""
        extra: dict = {}
        if engine is not None:
            try:
                res = engine.generate(p["prompt"], settings, raw=True)
            except ConfigError as err:
                return {"task_id": p["task_id"], "passed": False, "status": f"error: {err}",
                        "completion": "", "generated": ""}
            generated = res.completion
            body = truncate_function(generated)
            extra = {"forward_passes": res.extra.get("forward_passes"),
                     "elapsed_s": round(res.elapsed_s, 4)}
            if "rerank" in res.extra:  # which source the parent's rerank chose
                extra["rerank"] = res.extra["rerank"]["source"]
                extra.update(unchecked_record(p, res.extra["rerank"]))
        r = run_function(p, body)
        return {"task_id": p["task_id"], "passed": r.passed, "status": r.status,
                "completion": body, "generated": generated, **extra}

    return _pool(problems, work, jobs, progress, journal)


def eval_loss(model: str | None, val: Path, limit: int = 0, device: str = "auto",
              dtype: str = "auto") -> dict:
    """Held-out masked CE at fixed mask ratios and the diffusion ELBO in bits per byte."""
    import numpy as np
    import torch

    from engine.loading import base_folder, load_model, resolve_model
    from engine.tokenizer import DreamTokenizer
    from training.objectives import masked_ce_sum

    folder = resolve_model(model)
    loaded = load_model(folder, device, dtype)
    tok = DreamTokenizer.from_folder(base_folder(folder))  # an adapter reads its base's
    if not val.exists():
        raise ConfigError(f"{val} not found; run `unmask train corpus` and `unmask train "
                          "tokenizer` first, or pass --val")
    data = np.memmap(val, dtype=np.uint16, mode="r")
    gen = torch.Generator().manual_seed(0)
    L, n_windows = 512, limit or 32
    starts = torch.randint(len(data) - L, (n_windows,), generator=gen).tolist()
    windows = torch.tensor(np.stack([data[s:s + L] for s in starts]).astype(np.int64))
    n_bytes = sum(len(tok.decode(w.tolist()).encode()) for w in windows)
    out: dict = {"task": "loss", "model": str(folder), "windows": n_windows}
    elbo_nats = 0.0
    loaded.model.eval()
    for t in [0.15, 0.5, 0.9] + [(i + 0.5) / 8 for i in range(8)]:
        total, count = masked_ce_sum(loaded.model, list(windows.split(8)), t,
                                     loaded.config.mask_token_id, gen)
        if t in (0.15, 0.5, 0.9):
            out[f"masked_ce@{t}"] = round(total / max(count, 1), 4)
        else:
            elbo_nats += total / t / 8  # midpoint rule over t in (0, 1)
    out["elbo_bits_per_byte"] = round(elbo_nats / math.log(2) / n_bytes, 4)
    out["bytes_per_token"] = round(n_bytes / windows.numel(), 3)
    return out


def loops(text: str) -> bool:
    """Does ``text`` hold a degenerate loop (``engine.repetition``: a unit of 2-80 characters with
    a letter or digit, four or more times in a row)?"""
    return find_loop(text) is not None


def summarize(records: list[dict], task: str, model: str, length: str | None) -> dict:
    n = len(records)
    passed = sum(r["passed"] for r in records)
    looping = sum(loops(r.get("generated", r.get("completion", ""))) for r in records)
    passes = [r["forward_passes"] for r in records if r.get("forward_passes") is not None]
    # how far the length probe's estimate is from the reference's token count, relative
    errors = [abs(r["expected_len"] - r["reference_len"]) / max(1, r["reference_len"])
              for r in records if r.get("expected_len") is not None]
    guarded = [r for r in records if "tries" in r]
    return {"task": task, "model": model, "length": length, "n": n, "passed": passed,
            "pass@1": round(passed / n, 4) if n else 0.0, "looping": looping,
            "passes": round(sum(passes) / len(passes), 1) if passes else None,
            "length_error": round(sum(errors) / len(errors), 3) if errors else None,
            **({"retried": sum(r["tries"] > 1 for r in guarded),
                "withheld": sum(not r["accepted"] for r in guarded)} if guarded else {}),
            **({"parent_chosen": sum(r["rerank"] == "parent" for r in reranked)}
               if (reranked := [r for r in records if "rerank" in r]) else {}),
            **({"with_examples_checked": sum(r["examples_passed"] > 0 for r in checked),
                "passed_without_the_check": sum(r.get("passed_unchecked", r["passed"])
                                                for r in records)}
               if (checked := [r for r in records if "examples_passed" in r]) else {})}
