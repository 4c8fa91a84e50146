"""The repository benchmark on real packages outside the training corpus, one table per package.

    .venv/bin/python benchmarks/repo_packages.py [--packages cachetools,funcy] [--minutes 10]
        [--grpo-minutes 10] [--holes 60] [--lora-rank 16] [--lr 1e-4] [--replay 0]
        [--validation 0.1] [--validate-on text|holes] [--seed 0] [--work DIR] [--parent-minutes M] [--parent-branches N] [--base-only]

For each package: its sdist is fetched from the package registry (the only network this
script uses, before any model runs) into ``--work``, its test dependencies are installed, then
``unmask train personalize`` (``--minutes``) and ``unmask train grpo`` on top of it
(``--grpo-minutes``) train on the files that are not held out, and ``unmask eval repo`` scores
the five configurations on test-verified holes of the held-out files: base, base + context,
personalized, personalized + context, personalized + GRPO + context. The held-out files were
chosen before any result was seen (files whose tests cover them, a tenth to a third of each
package); neither training nor retrieval ever reads them. Each step shows its own progress on
stderr; the tables and each step's minutes go to stdout.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

from engine.loading import resolve_model
from engine.repo import RETRIEVAL
from training.personalize import VALIDATE_ON
from training.pretrain import origin_of
from training.repo_eval import by_shown, by_source


@dataclass(frozen=True)
class Package:
    version: str
    held_out: tuple[str, ...]
    test_deps: tuple[str, ...] = ()


TEST_CMD = "env PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 python -m pytest -x -q"
"""Both suites need no pytest plugin. The ones this environment holds for unmask's own tests
(pytest-asyncio, anyio, syrupy, textual-snapshot) would load into every run of theirs and
triple its time: 1.5-1.6 s against 0.5-0.65 s a cachetools run, 2.0 against 0.9 s funcy's.
Same verdicts (the scores of a run with either command are the same)."""

PACKAGES = {
    # MIT; 3,400 lines with its tests; not in training/corpus_manifest.json
    "cachetools": Package("6.2.1", ("src/cachetools/_cached.py", "src/cachetools/func.py")),
    # BSD-3-Clause; 2,400 lines of package and 1,700 of tests; not in the corpus
    "funcy": Package("2.1", ("funcy/colls.py", "funcy/funcs.py"), ("whatever==0.7",)),
}


def fetch(name: str, pkg: Package, work: Path) -> Path:
    """The package's unpacked sdist (downloaded once) with its test dependencies installed."""
    root = work / f"{name}-{pkg.version}"
    if not root.is_dir():
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                        "--no-binary", ":all:", f"{name}=={pkg.version}", "-d", str(work)],
                       check=True)
        with tarfile.open(work / f"{name}-{pkg.version}.tar.gz") as tar:
            tar.extractall(work, filter="data")
    if pkg.test_deps:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *pkg.test_deps],
                       check=True)
    return root


def unmask(*args: str) -> str:
    """Run one ``unmask`` command, passing its progress (stderr) through; its last stderr line
    (``eval repo``'s scores as JSON)."""
    proc = subprocess.Popen([sys.executable, "-m", "cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    last = ""
    for line in proc.stderr:
        sys.stderr.write(line)
        last = line.strip() or last
    if proc.wait() != 0:
        sys.exit(f"unmask {' '.join(args[:2])} failed (exit {proc.returncode}); see above")
    return last


def timed(step: str, minutes: dict, fn, *args):
    began = time.perf_counter()
    out = fn(*args)
    minutes[step] = (time.perf_counter() - began) / 60
    return out


def run_package(name: str, pkg: Package, args) -> tuple[dict, dict]:
    """({configuration: eval repo's scores}, {step: minutes}) for one package."""
    minutes: dict[str, float] = {}
    root = timed("fetch", minutes, fetch, name, pkg, args.work)
    excludes = [a for path in pkg.held_out for a in ("--exclude", path)]
    # named by the base model's weights and the settings (the context its examples hold
    # included): a folder of another run would resume (or, made from other weights, be
    # refused), not retrain
    recipe = f"{args.origin}-r{args.lora_rank}-lr{args.lr:g}-replay{args.replay:g}-" \
        f"{args.minutes:g}min-{RETRIEVAL}" + (f"-parent{args.parent_minutes:g}min"
                                              if args.parent_minutes else "") + \
        (f"-docs{args.documents:g}" if args.documents else "") + \
        (f"-copy{args.copy_holes:g}" if args.copy_holes else "") + \
        (f"-val{args.validation:g}" if args.validation else "") + \
        (f"-on{args.validate_on}" if args.validation and args.validate_on != "text" else "") + \
        (f"-seed{args.seed}" if args.seed else "")
    personal = args.work / f"{name}-personal-{recipe}"
    credit = "-partial" if args.partial_credit else ""
    tuned = args.work / f"{name}-grpo-{args.grpo_minutes:g}min{credit}-on-{recipe}"
    models: list[str] = []
    if not args.base_only:
        timed("personalize", minutes, unmask, "train", "personalize", "--repo", str(root),
              *excludes, "--out", str(personal), "--minutes", str(args.minutes),
              "--lora-rank", str(args.lora_rank), "--lr", str(args.lr), "--replay",
              str(args.replay), "--documents", str(args.documents), "--copy-holes",
              str(args.copy_holes), "--validation", str(args.validation), "--validate-on",
              args.validate_on, "--seed", str(args.seed), "--parent-minutes",
              str(args.parent_minutes))
        models = ["--personalized", str(personal)]
    if not args.base_only and args.grpo_minutes > 0:
        timed("grpo", minutes, unmask, "train", "grpo", "--repo", str(root), *excludes,
              "--init", str(personal), "--out", str(tuned), "--minutes", str(args.grpo_minutes),
              "--lora-rank", str(args.lora_rank),
              *(["--partial-credit", "--test-cmd", TEST_CMD.replace(" -x", "")]
                if args.partial_credit else ["--test-cmd", TEST_CMD]))
        models += ["--grpo", str(tuned)]
    scores_file = args.work / f"{name}-scores-p{args.parent_branches}.jsonl"
    result = timed("eval", minutes, unmask, "eval", "repo", "--repo", str(root), *excludes,
                   "--holes", str(args.holes), *models, "--out", str(scores_file),
                   "--test-cmd", TEST_CMD,
                   "--parent-branches", str(args.parent_branches),
                   *(["--fresh"] if args.fresh else []))
    rows = json.loads(result)
    records = [json.loads(line) for line in scores_file.read_text().splitlines()]
    rows["sources"] = by_source(records)
    rows["shown"] = by_shown(records)
    if args.parent_minutes and not args.base_only:
        rows["parent loss"] = held_out_parent_loss(root, pkg.held_out, personal / "parent")
    if "--grpo" in models:  # its train-split reward over the run (training.grpo.reward_trend)
        rows["grpo trend"] = json.loads((tuned / "grpo.json").read_text())["reward_trend"]
    return rows, minutes


def held_out_parent_loss(root: Path, held_out: tuple[str, ...], taught: Path) -> dict:
    """The parents' next-token loss (nats per token) on the held-out files, which neither
    read: the generic base's and the one personalization taught (``OUT/parent``)."""
    import torch

    from engine.loading import base_folder, load_model
    from engine.tokenizer import DreamTokenizer
    from training.objectives import causal_lm_loss
    from training.personalize import file_stream

    generic = base_folder(taught)
    loaded = {name: load_model(folder, "cpu", "float32")
              for name, folder in (("generic", generic), ("taught", taught))}
    # files joined as personalize_parent joins them, with the model's own end id
    stream = torch.tensor(file_stream({h: (root / h).read_text() for h in held_out},
                                      DreamTokenizer.from_folder(generic),
                                      loaded["generic"].config.eos_token_id))
    losses = {}
    for name, parent in loaded.items():
        model = parent.model.eval()
        total = 0.0
        with torch.no_grad():
            for a in range(0, len(stream) - 1, 512):  # 512-token windows, as it was taught
                x = stream[a:a + 513][None]
                total += causal_lm_loss(model, x)[0].item() * (x.shape[1] - 1)
        losses[name] = round(total / (len(stream) - 1), 4)
    return losses


def grouped(title: str, group: str, groups, configs: list[str]) -> list[str]:
    """Markdown lines of a table of holes per (kind, group) and what each configuration passed
    (``by_source``, ``by_shown``)."""
    out = ["", title, "", f"| kind | {group} | holes | " + " | ".join(configs) + " |",
           "|---|---|---:|" + "---:|" * len(configs)]
    for (kind, name), row in groups:
        out.append(f"| {kind} | {name} | {row['n']} | " +
                   " | ".join(str(row[c]) for c in configs) + " |")
    return out


def table(name: str, pkg: Package, rows: dict, minutes: dict) -> str:
    out = [f"### {name} {pkg.version} (held out: {', '.join(pkg.held_out)})", "",
           "| configuration | line pass@1 | line exact | block pass@1 | block exact | minutes |",
           "|---|---:|---:|---:|---:|---:|"]
    configs = [label for label in rows
               if label not in ("parent loss", "sources", "shown", "grpo trend")]
    for label in configs:
        res = rows[label]
        cells = []
        for kind in ("line", "block"):
            r = res.get(kind, {})
            n = r.get("n", 0)
            cells += [f"{round(r['pass@1'] * n)}/{n}", f"{round(r['exact'] * n)}/{n}"] if n \
                else ["-", "-"]
        # the time to score it (decoding, and the test runs no earlier row shared)
        out.append(f"| {label} | " + " | ".join(cells) + f" | {res.get('minutes', '-')} |")
    out += grouped("holes by where their removed lines already occur (what learning the "
                   "repository could copy), passed per configuration:", "lines found in",
                   rows["sources"].items(), configs)
    out += grouped("holes by whether the context showed their removed lines (each one, in the "
                   "request's context), passed per configuration with context:",
                   "context showed them",
                   (((kind, "yes" if showed else "no"), row)
                    for (kind, showed), row in rows["shown"].items()),
                   [c for c in configs if c.endswith(" + context")])
    if "parent loss" in rows:
        out += ["", "the parent's next-token loss on the held-out files (nats/token): " +
                ", ".join(f"{k} {v}" for k, v in rows["parent loss"].items())]
    if "grpo trend" in rows:
        t = rows["grpo trend"]
        out += ["", f"GRPO's train-split reward: {t['rounds']} rounds" + (
            f", mean per round {t['first_half']} in the first half and {t['second_half']} in "
            f"the second, slope {t['slope']:+.4f} ± {t['slope_se']:.4f} (standard error) per "
            f"round" if t["rounds"] >= 3 else "") + (
            f"; rollouts passing the suite {t['passed_first_half']:.1%} then "
            f"{t['passed_second_half']:.1%}" if "passed_first_half" in t else "")]
    out += ["", "minutes: " + ", ".join(f"{k} {v:.1f}" for k, v in minutes.items()), ""]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--packages", default=",".join(PACKAGES))
    ap.add_argument("--minutes", type=float, default=10.0, help="personalization budget")
    ap.add_argument("--grpo-minutes", type=float, default=10.0,
                    help="coupled-GRPO budget (0: no GRPO, four configurations)")
    ap.add_argument("--partial-credit", action="store_true",
                    help="GRPO's reward gives a failing suite the share of the hole's failing "
                         "tests an answer mends (its suite then runs without -x)")
    ap.add_argument("--holes", type=int, default=60, help="single-line holes (blocks: half)")
    ap.add_argument("--lora-rank", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-4, help="personalization's peak lr")
    ap.add_argument("--replay", type=float, default=0.0,
                    help="personalization's share of general-code examples (0.25 measured: "
                         "no gain)")
    ap.add_argument("--documents", type=float, default=0.0,
                    help="share of personalization's examples that are masked windows of the "
                         "files (default 0)")
    ap.add_argument("--copy-holes", type=float, default=0.0,
                    help="share of personalization's hole examples whose context shows the "
                         "answer (default 0)")
    ap.add_argument("--validation", type=float, default=0.1,
                    help="share of the training side's files personalization validates on, "
                         "writing its best-scoring weights (default 0.1; 0: none)")
    ap.add_argument("--validate-on", choices=VALIDATE_ON, default="text",
                    help="what personalization's validation files are scored on: masked "
                         "windows of their text, or answers to editor requests in them")
    ap.add_argument("--seed", type=int, default=0,
                    help="personalization's seed (which holes it draws, in which order)")
    ap.add_argument("--work", type=Path, default=Path("runs/repo-packages"))
    ap.add_argument("--parent-minutes", type=float, default=0.0,
                    help="personalization's minutes teaching the repository to the parent "
                         "(the rerank's judge; matters with --parent-branches)")
    ap.add_argument("--parent-branches", type=int, default=0,
                    help="the editors' parentBranches when scoring (the parent's rerank; 0 off)")
    ap.add_argument("--base-only", action="store_true",
                    help="score the base model only (no training)")
    ap.add_argument("--fresh", action="store_true",
                    help="decode every answer again (eval repo --fresh): the eval minutes of a "
                         "first run; without it a rerun reuses the base model's kept answers")
    args = ap.parse_args()
    names = args.packages.split(",")
    unknown = [n for n in names if n not in PACKAGES]
    if unknown:
        sys.exit(f"unknown package(s) {', '.join(unknown)}; known: {', '.join(PACKAGES)}")
    args.work = args.work.resolve()
    args.origin = origin_of(resolve_model(None))[:8]  # the embedded model: what is personalized
    args.work.mkdir(parents=True, exist_ok=True)
    for name in names:
        rows, minutes = run_package(name, PACKAGES[name], args)
        print(table(name, PACKAGES[name], rows, minutes), flush=True)


if __name__ == "__main__":
    main()
