"""``unmask train grpo``: coupled-GRPO (DiffuCoder, Gong et al. 2025) with the repository's own
tests as the reward.

Each round: take tasks (test-verified holes of the repository's non-excluded files, mined once by
``training.holes``, the miner ``unmask eval repo`` uses); roll out G completions per task with
the engine's own sampler (temperature 1.2, top-p 0.95), each asked and decoded as the editors
ask and decode: a window and the repository context (``context_tokens``), the context cache
(``cache_refresh``), a single line stopping at its newline;
reward = 2.0 x (the suite passes with the completion, run in ``engine.sandbox.RepoSandbox``,
cached by completion text; with ``partial_credit``, the share of the tests the blanked hole breaks
that the completion mends) + 0.5 x (the filled file parses), the paper's weights; advantages
leave-one-out within the group. A group whose rewards are all equal has no advantage, so no
policy gradient: it is not scored or updated on, and another task is drawn in its place (DAPO's
dynamic sampling, Yu et al. 2025; rollouts cost a fraction of an update on this CPU). Then
``iterations`` policy updates, each with its own mask seed: coupled per-token scores
(``training.coupled``), PPO clipping, k3 KL to the frozen initial model.
An explicit loop (no TRL), resumable after a kill (weights, optimizer, round; every random draw
is a function of (seed, round), so a resumed run continues the same run), one JSONL line per
update and a PNG reward curve in the output folder; data parallel under ``torchrun``.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import random
import resource
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from engine.errors import ConfigError
from engine.healing import plan_healing
from engine.repo import CONTEXT_TOKENS, RepoIndex
from engine.scope import limit_scope
from engine.syntax_guard import parses
from training.coupled import coupled_scores, grpo_loss, leave_one_out, mask_ratio, mask_uniforms
from training.holes import Hole, load_holes, save_holes
from training.holes import mine as mine_holes
from training.personalize import with_context
from training.pretrain import (find_checkpoint, load_checkpoint, origin_of, resumed_log,
                               save_checkpoint, setup_distributed)

log = logging.getLogger(__name__)


@dataclass
class GrpoConfig:
    repo: str
    """Repository root (only read; tests run on a temporary copy)."""
    out: str
    """Output folder: the trained model (or adapter), log.jsonl, reward.png, checkpoint/."""
    init: str | None = None
    """Model to start from (default: the embedded one); also the KL reference."""
    exclude: list[str] = field(default_factory=list)
    """Globs never read (hold out the files ``unmask eval repo`` scores)."""
    test_cmd: str | None = None
    """The suite's command (default ``python -m pytest -x -q``; ``-x`` dropped with
    ``partial_credit``, which needs every failing test)."""
    test_timeout: float = 120.0
    minutes: float = 10.0
    """Wall-clock budget, resumed runs included."""
    max_rounds: int = 0
    """If > 0, stop after this many rollout rounds (tests, smoke runs)."""
    group: int = 4
    """Completions per task, G (the paper: 10)."""
    tasks: int = 2
    """Tasks per round per process whose groups are updated on."""
    draws: int = 3
    """Tasks drawn per round per process, at most ``draws`` x ``tasks``, to find ``tasks``
    groups whose rewards differ; 1: update on every drawn group, equal rewards or not."""
    iterations: int = 2
    """Policy updates per round, mu, each with its own mask seed (the paper: 2)."""
    beta: float = 0.01
    epsilon: float = 0.5
    lr: float = 5e-5
    """The paper's 1e-6 moves a 7B model over 40 GPU-hours; CPU runs of minutes on small
    models need a larger step (the clip range and the KL still bound each update)."""
    max_grad_norm: float = 0.2
    temperature: float = 1.2
    top_p: float = 0.95
    canvas: int = 24
    """Completion slots per rollout."""
    window: int = 512
    """Prompt tokens (prefix + suffix around the hole, and the context) per task."""
    cache_refresh: int = 8
    """Rollouts decode on the context cache refreshed every this many passes, as the editors do
    (their ``cacheRefresh`` default); 0: exact passes."""
    context_tokens: int = CONTEXT_TOKENS
    """Repository context in each rollout's prompt, at most a quarter of ``window``, as the
    editors ask (the default retrieval: the file's lines the window leaves out) and as the
    ``personalized + GRPO + context`` row is scored; 0: none."""
    holes: int = 24
    """Verified holes to mine (two thirds single lines, a third blocks)."""
    code_weight: float = 2.0
    format_weight: float = 0.5
    partial_credit: bool = False
    """Code reward for a failing suite too: of the tests that fail with the hole blanked (B),
    the share the completion makes pass, less the ones it breaks anew (F: its failures),
    |B - F| / (|B| + |F - B|); all-or-nothing (the paper's) when off. A 135M model's rollouts
    seldom pass a whole suite, so the all-or-nothing term is mostly silent."""
    seed: int = 0
    lora_rank: int = 0
    """0: train every weight (small models); r > 0: a rank-r LoRA adapter (7B)."""
    lora_alpha: float = 16.0
    checkpoint_seconds: float = 60.0
    bf16: bool = True

    def __post_init__(self) -> None:
        if self.test_cmd is None:
            self.test_cmd = "python -m pytest -q" if self.partial_credit else \
                "python -m pytest -x -q"
        if self.partial_credit and ({"-x", "--exitfirst"} & set(self.test_cmd.split())):
            raise ConfigError("--partial-credit needs every failing test, but --test-cmd stops "
                              "at the first (-x); drop -x from it")
        if self.group < 2:
            raise ConfigError(f"--group must be at least 2 (leave-one-out), got {self.group}")
        if self.minutes <= 0 or min(self.tasks, self.iterations, self.draws) < 1:
            raise ConfigError("--minutes, --tasks, --draws and --iterations must be positive")
        if not 0 < self.epsilon < 1 or self.beta < 0:
            raise ConfigError("--epsilon must be in (0, 1) and --beta non-negative")


@dataclass
class Group:
    """G rollouts of one task, same length: what a policy update needs."""

    ids: torch.Tensor
    """(G, L) prompt + canvas + suffix."""
    completion: torch.Tensor
    """(G, L) bool: canvas slots up to and including the first end token (the scored ones)."""
    advantages: torch.Tensor
    """(G,)"""
    uids: list[int]
    """Stable ids of the rollouts: their mask draws depend on these only."""


class Rewarder:
    """2.0 x tests pass (or their share, ``partial_credit``) + 0.5 x parses, cached by (hole,
    completion text)."""

    def __init__(self, sandbox, cfg: GrpoConfig) -> None:
        self.sandbox, self.cfg = sandbox, cfg
        self.cache: dict[tuple[str, str], tuple[float, bool, bool]] = {}
        self.blank_failures: dict[str, set[str]] = {}
        self.runs = 0
        self.statuses: dict[str, int] = {}

    def __call__(self, hole: Hole, text: str) -> tuple[float, bool, bool]:
        key = (hole.key, text)
        if key not in self.cache:
            filled = hole.filled(text)
            ok = parses(filled)
            passed, credit = False, 0.0
            if ok:  # a file that does not parse cannot pass: no test run
                result = self._run({hole.path: filled})
                passed = result.passed
                if passed:
                    credit = 1.0
                elif self.cfg.partial_credit:
                    credit = self._share(hole, result.failed_tests)
            self.cache[key] = (credit, passed, ok)
        credit, passed, ok = self.cache[key]
        return self.cfg.code_weight * credit + self.cfg.format_weight * ok, passed, ok

    def _run(self, files: dict[str, str]):
        result = self.sandbox.run(files)
        self.runs += 1
        self.statuses[result.status] = self.statuses.get(result.status, 0) + 1
        return result

    def _share(self, hole: Hole, failed: tuple[str, ...]) -> float:
        """|B - F| / (|B| + |F - B|): B the tests failing with the hole blanked (one run per
        hole, kept), F the completion's; a test file that failed to import stands for every
        test in it. 0 when either run listed none (a timeout, a crash before pytest's summary)
        or the completion's run stopped at collection (a file that failed to import: pytest
        then runs no test at all)."""
        if hole.key not in self.blank_failures:
            blank = self._run({hole.path: hole.prefix + hole.suffix})
            self.blank_failures[hole.key] = set(blank.failed_tests)
        b = self.blank_failures[hole.key]
        if not b or not failed or any("::" not in t for t in failed):
            return 0.0

        def hit(test: str, group: set[str] | tuple[str, ...]) -> bool:
            return any(t == test or test.startswith(t + "::") or t.startswith(test + "::")
                       for t in group)
        mended = sum(not hit(t, failed) for t in b)
        return mended / (len(b) + sum(not hit(t, b) for t in failed))


def completion_text(engine, hole: Hole, canvas: list[int]) -> str:
    """What the editor would insert: the first line for a single-line hole, else the canvas
    cut to the hole's scope (``engine.scope``, as block requests are)."""
    text = plan_healing(engine.tokenizer, hole.prefix, hole.suffix).completion(
        engine.tokenizer.decode(engine.trim(canvas)))
    return text.split("\n", 1)[0] + "\n" if hole.kind == "line" else \
        limit_scope(text, hole.prefix, hole.suffix, engine.ran_out(canvas))


def scored_slots(engine, canvas: list[int]) -> list[bool]:
    """Canvas slots up to and including the first end token (``<|im_end|>``'s role upstream),
    or up to the first slot still masked where the rollout stopped early (a single line at its
    newline): the tokens the completion is made of."""
    n = len(canvas)
    for i, tok in enumerate(canvas):
        if tok in engine.end_ids or tok == engine.mask_id:
            n = i + (tok != engine.mask_id)
            break
    return [i < n for i in range(len(canvas))]


def rollout(engine, hole: Hole, cfg: GrpoConfig, seed: int, rewarder: Rewarder, uid0: int,
            index: RepoIndex | None = None) -> tuple[Group, dict]:
    """G completions of one hole, their rewards and the group ready for updates; with
    ``index`` (and ``cfg.context_tokens``), asked with repository context. Each completion is
    decoded as the editors decode (``cfg.cache_refresh``; a single line stops at its newline,
    where the editors cut it), one after the other with its own seed: with the cache, four
    requests in turn cost a fraction of one exact batch of four."""
    settings = engine.settings(temperature=cfg.temperature, top_p=cfg.top_p,
                               max_new_tokens=cfg.canvas, steps=cfg.canvas, length="fixed",
                               cache_refresh=cfg.cache_refresh, parent_branches=0,
                               stop=("\n",) if hole.kind == "line" else ())
    request = (hole.prefix, hole.suffix, "")
    if index is not None and cfg.context_tokens > 0:
        request = with_context(hole, index, engine.tokenizer, cfg.window,
                               min(cfg.context_tokens, cfg.window // 4))
    with torch.autocast(engine.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
        done = [engine.infill(*request[:2], replace(settings, seed=seed + j),
                              context=request[2]) for j in range(cfg.group)]
    pre, suf, _ = engine.infill_prompt(*request[:2], cfg.canvas, request[2])
    rewards, passed, parsed, rows, comp = [], 0, 0, [], []
    for c in done:
        r, ok_tests, ok_parse = rewarder(hole, completion_text(engine, hole, c.token_ids))
        rewards.append(r)
        passed += ok_tests
        parsed += ok_parse
        rows.append(pre + list(c.token_ids) + suf)
        comp.append([False] * len(pre) + scored_slots(engine, c.token_ids) + [False] * len(suf))
    r = torch.tensor(rewards)
    dev = engine.device
    group = Group(torch.tensor(rows, device=dev), torch.tensor(comp, device=dev),
                  leave_one_out(r).to(dev), list(range(uid0, uid0 + cfg.group)))
    return group, {"reward": float(r.mean()), "passed": passed, "parsed": parsed,
                   "zero_std": bool(r.std() == 0)}


def draw_groups(policy, holes: list[Hole], cfg: GrpoConfig, rnd: int, rank: int, world: int,
                rewarder: Rewarder, index: RepoIndex | None) -> tuple[list[Group], list[dict]]:
    """This process's groups for round ``rnd``: tasks drawn (a function of seed, round and
    rank) until ``cfg.tasks`` groups have rewards that differ, at most ``cfg.tasks`` x
    ``cfg.draws`` draws. Returns the kept groups (the last drawn one if none differ, so that
    every process takes part in the update) and every drawn group's info: the logged reward is
    the policy's over all draws, not over the ones the filter kept."""
    pick = random.Random(seed_of(cfg.seed, "tasks", rnd, rank))
    kept, infos = [], []
    for d in range(cfg.tasks * cfg.draws):
        if len(kept) == cfg.tasks:
            break
        uid0 = ((rnd * world + rank) * cfg.tasks * cfg.draws + d) * cfg.group
        g, info = rollout(policy, pick.choice(holes), cfg,
                          seed_of(cfg.seed, "rollout", rnd, rank, d) % 2**31, rewarder, uid0,
                          index)
        infos.append(info)
        if not info["zero_std"] or cfg.draws == 1:
            kept.append(g)
    return kept or [g], infos


@torch.no_grad()
def fixed_scores(model, groups: list[Group], seed: int, mask_id: int, bf16: bool
                 ) -> list[torch.Tensor]:
    """Scores of ``groups`` under a model that does not move during the update (the rollout
    policy's for the ratio, the reference's for the KL)."""
    t = mask_ratio(seed)
    out = []
    for g in groups:
        with torch.autocast(g.ids.device.type, dtype=torch.bfloat16, enabled=bf16):
            out.append(coupled_scores(model, g.ids, g.completion, t, _uniforms(seed, g),
                                      mask_id).float())
    return out


def _uniforms(seed: int, g: Group) -> torch.Tensor:
    return mask_uniforms(seed, g.uids, g.ids.shape[1]).to(g.ids.device)


def policy_update(model, groups: list[Group], old: list[torch.Tensor] | None,
                  ref: list[torch.Tensor], seed: int, cfg: GrpoConfig, mask_id: int,
                  denominator: float) -> dict:
    """Accumulate the gradient of one update over ``groups`` (``model`` may be DDP-wrapped:
    gradients are all-reduced once, at the last group). ``old`` None: the model is still the
    rollout policy (the round's first update), whose scores are these very scores, detached
    (no dropout anywhere, so the ratio is exactly 1, as TRL does for the first iteration).
    Returns summed statistics."""
    t = mask_ratio(seed)
    totals = {"loss": 0.0, "kl_sum": 0.0, "clipped": 0.0, "tokens": 0.0}
    for i, g in enumerate(groups):
        last = i == len(groups) - 1
        sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") \
            else model.no_sync()
        with sync:
            with torch.autocast(g.ids.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                scores = coupled_scores(model, g.ids, g.completion, t, _uniforms(seed, g),
                                        mask_id)
            scores = scores.float()
            loss, stats = grpo_loss(scores, scores.detach() if old is None else old[i], ref[i],
                                    g.advantages,
                                    g.completion.float(), cfg.epsilon, cfg.beta, denominator)
            loss.backward()
        totals["loss"] += float(loss.detach())
        for k in ("kl_sum", "clipped", "tokens"):
            totals[k] += stats[k]
    return totals


def global_tokens(groups: list[Group], world: int) -> float:
    """Scored tokens in this update over every process."""
    n = torch.tensor(float(sum(int(g.completion.sum()) for g in groups)),
                     device=groups[0].ids.device if groups else "cpu")  # NCCL wants the GPU
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(n)
    return float(n)


def slowest(elapsed: float, world: int, device) -> float:
    """The largest ``elapsed`` over every process, so that all of them take the same decision
    about the next round (one that stopped alone would leave the others waiting in DDP)."""
    if world == 1:
        return elapsed
    import torch.distributed as dist

    t = torch.tensor(elapsed, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def another_round_fits(state: dict, budget: float) -> bool:
    """Whether the next rollout round is expected to end within the budget (seconds): the first
    always runs, a later one only if the mean round so far still fits. A round cannot be cut
    once its rollouts are scored, and a 10-minute budget used to end past 12."""
    if state["round"] == 0:
        return True
    return state["elapsed"] * (state["round"] + 1) / state["round"] <= budget


def seed_of(*parts) -> int:
    return int(hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:12], 16)


def grpo(cfg: GrpoConfig, progress=None) -> dict:
    """Train; returns the run's summary (also in ``out/grpo.json``)."""
    from engine.api import Engine, SpecialIds, TorchDenoiser, model_generation_config, pad_cycle
    from engine.loading import LoadedModel, base_folder, load_model, resolve_model
    from engine.sandbox import RepoSandbox
    from engine.tokenizer import DreamTokenizer

    try:
        import matplotlib  # noqa: F401  (the reward curve; fail before training, not after)
    except ModuleNotFoundError as err:
        raise ConfigError("unmask train grpo draws its reward curve with matplotlib; "
                          "pip install 'unmask[train]'") from err
    rank, world, device = setup_distributed()
    repo, out = Path(cfg.repo), Path(cfg.out)
    ckpt = out / "checkpoint"
    out.mkdir(parents=True, exist_ok=True)
    index = RepoIndex(repo, cfg.exclude)  # bad root / no files / vain exclude: ConfigError
    files = index.files
    base = resolve_model(cfg.init)
    loaded = load_model(base, "cpu", "float32")
    model = loaded.model
    reference = copy.deepcopy(model).eval() if not cfg.lora_rank else None
    if cfg.lora_rank:
        from training.lora import add_lora

        add_lora(model, cfg.lora_rank, cfg.lora_alpha)
    trained = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trained, lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.1)
    origin = origin_of(base, lora_rank=cfg.lora_rank)
    state = {"round": 0, "update": 0, "elapsed": 0.0, "rollouts": 0, "rollout_s": 0.0,
             "origin": origin}
    if (found := find_checkpoint(ckpt)) is not None:
        state = load_checkpoint(found, model, opt, origin)
        log.info("resumed %s at round %d", ckpt, state["round"])
    model.to(device)
    if reference is not None:
        reference.to(device)
    wrapped = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        wrapped = DistributedDataParallel(model)
    tok = DreamTokenizer.from_folder(base_folder(base))  # an adapter reads its base's
    mcfg = loaded.config
    ids = SpecialIds(mcfg.mask_token_id, mcfg.eos_token_id, mcfg.pad_token_id,
                     min(mcfg.max_position_embeddings, cfg.window + cfg.canvas + 1),
                     pad_cycle(model_generation_config(base)))
    policy = Engine(base, tok, TorchDenoiser(LoadedModel(base, mcfg, model, device,
                                                         torch.float32)), ids, device)
    with RepoSandbox(repo, cfg.test_cmd, cfg.test_timeout) as sandbox:
        holes = _tasks(sandbox, files, out, cfg, rank, world)
        rewarder = Rewarder(sandbox, cfg)
        budget, start = cfg.minutes * 60, time.time() - state["elapsed"]
        last_save = time.time()
        # a round's lines are written before its checkpoint: drop those of an unfinished round
        logfile = resumed_log(out / "log.jsonl", "round", state["round"] - 1) \
            if rank == 0 else None
        while another_round_fits(state, budget) and not (cfg.max_rounds and
                                                         state["round"] >= cfg.max_rounds):
            rnd = state["round"]
            # 1. rollouts with the current policy
            model.eval()
            began = time.time()
            groups, infos = draw_groups(policy, holes, cfg, rnd, rank, world, rewarder, index)
            state["rollout_s"] += time.time() - began
            state["rollouts"] += len(infos) * cfg.group * world
            # 2. the rollout policy's scores (for the updates after the first: see
            # policy_update) and the reference's, one mask seed per update
            seeds = [seed_of(cfg.seed, "mask", rnd, i) % 4096 for i in range(cfg.iterations)]
            old = [None] + [fixed_scores(model, groups, s, mcfg.mask_token_id, cfg.bf16)
                            for s in seeds[1:]]
            with _reference(model, reference) as ref_model:
                ref = [fixed_scores(ref_model, groups, s, mcfg.mask_token_id, cfg.bf16)
                       for s in seeds]
            denominator = global_tokens(groups, world) / world
            # 3. mu policy updates
            model.train()
            for i, s in enumerate(seeds):
                opt.zero_grad(set_to_none=True)
                totals = policy_update(wrapped, groups, old[i], ref[i], s, cfg,
                                       mcfg.mask_token_id, max(denominator, 1.0))
                grad_norm = float(torch.nn.utils.clip_grad_norm_(trained, cfg.max_grad_norm))
                opt.step()
                state["update"] += 1
                record = _record(state, rnd, i, infos, len(groups), totals, grad_norm,
                                 rewarder, start)
                if logfile:
                    logfile.write(json.dumps(record) + "\n")
                    logfile.flush()
                if progress is not None and rank == 0:
                    progress(dict(record, budget_s=budget))
            state["round"] += 1
            state["elapsed"] = slowest(time.time() - start, world, device)
            if rank == 0 and time.time() - last_save >= cfg.checkpoint_seconds:
                save_checkpoint(ckpt, model, opt, state, trainable_only=bool(cfg.lora_rank))
                last_save = time.time()
        if logfile:
            logfile.close()
    summary = {}
    if rank == 0:
        save_checkpoint(ckpt, model, opt, state, trainable_only=bool(cfg.lora_rank))
        summary = _finish(model, base, out, cfg, state, len(holes))
    if world > 1:
        import torch.distributed as dist

        dist.barrier()  # a rank that leaves while rank 0 still writes aborts gloo (SIGABRT)
        dist.destroy_process_group()
    return summary


def task_kinds(n: int) -> dict[str, int]:
    """How many of ``n`` tasks are single lines (two thirds) and blocks."""
    n_line = max(1, round(n * 2 / 3))
    return {"line": n_line, "block": n - n_line}


def _tasks(sandbox, files: dict[str, str], out: Path, cfg: GrpoConfig, rank: int,
           world: int) -> list[Hole]:
    """The run's verified holes: mined once (rank 0) and kept in ``out/holes.jsonl``."""
    path = out / "holes.jsonl"
    if rank == 0 and not path.exists():
        found = mine_holes(sandbox, files, task_kinds(cfg.holes))
        if not found:
            raise ConfigError(f"no hole in {cfg.repo} makes its test suite fail when blanked, so "
                              "no reward can be verified; point --repo at a repository whose "
                              "tests cover its code")
        save_holes(path, found)
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    return load_holes(path)


@contextlib.contextmanager
def _reference(model, reference):
    """The frozen initial model: a copy, or for LoRA the same model with its adapters off."""
    if reference is not None:
        yield reference
        return
    from training.lora import LoRALinear

    scales = {m: m.scale for m in model.modules() if isinstance(m, LoRALinear)}
    try:
        for m in scales:
            m.scale = 0.0
        yield model
    finally:
        for m, s in scales.items():
            m.scale = s


def _record(state: dict, rnd: int, i: int, infos: list[dict], kept: int, totals: dict,
            grad_norm: float, rewarder: Rewarder, start: float) -> dict:
    tokens = max(totals["tokens"], 1.0)
    elapsed = time.time() - start
    return {"update": state["update"], "round": rnd, "iteration": i,
            "reward": round(sum(x["reward"] for x in infos) / len(infos), 4),
            "tests_passed": sum(x["passed"] for x in infos),
            "parsed": sum(x["parsed"] for x in infos),
            "groups_drawn": len(infos), "zero_std_groups": sum(x["zero_std"] for x in infos),
            "groups_kept": kept,
            "loss": round(totals["loss"], 6), "kl": round(totals["kl_sum"] / tokens, 6),
            "clip_fraction": round(totals["clipped"] / tokens, 4),
            "grad_norm": round(grad_norm, 4), "test_runs": rewarder.runs,
            "test_statuses": dict(rewarder.statuses),  # timeouts and kills show up here
            "elapsed_s": round(elapsed, 1), "rounds_per_min": round((rnd + 1) / elapsed * 60, 3),
            "rollouts_per_s": round(state["rollouts"] / max(state["rollout_s"], 1e-9), 3),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def _finish(model, base: Path, out: Path, cfg: GrpoConfig, state: dict, n_holes: int) -> dict:
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    summary = {"base": str(base), "repo": str(Path(cfg.repo).resolve()), "holes": n_holes,
               "rounds": state["round"], "updates": state["update"],
               "minutes": round(state["elapsed"] / 60, 2),
               "rollouts_per_s": round(state["rollouts"] / max(state["rollout_s"], 1e-9), 3),
               "first_rewards": [r["reward"] for r in records[:4]],
               "last_rewards": [r["reward"] for r in records[-4:]],
               "reward_trend": reward_trend(records, cfg.group), "config": asdict(cfg)}
    plot_rewards(records, out / "reward.png")
    if cfg.lora_rank:
        from training.lora import save_adapter
        from training.personalize import write_generation_config

        save_adapter(model, out, str(base), cfg.lora_rank, cfg.lora_alpha)
        write_generation_config(base, out)
        (out / "grpo.json").write_text(json.dumps(summary, indent=2))
    else:
        from training.personalize import write_model_folder

        write_model_folder(model, base, out, summary, "grpo.json")
    return summary


def per_round(records: list[dict], key: str) -> list[float]:
    """One value per round from the log (a round's updates repeat its rollouts' values)."""
    return list({r["round"]: r[key] for r in records}.values())


def reward_trend(records: list[dict], group: int) -> dict:
    """Whether the train-split reward rose: the mean reward per round over the first and the
    second half of the rounds, the least-squares slope per round with its standard error (a
    rise is a slope above about two standard errors), and the share of the rollouts (``group``
    per drawn task) that passed the suite over each half."""
    ys = per_round(records, "reward")
    n = len(ys)
    if n < 3:
        return {"rounds": n}
    xm, ym = (n - 1) / 2, sum(ys) / n
    sxx = sum((x - xm) ** 2 for x in range(n))
    slope = sum((x - xm) * (y - ym) for x, y in enumerate(ys)) / sxx
    resid = sum((y - ym - slope * (x - xm)) ** 2 for x, y in enumerate(ys))
    half = n // 2
    out = {"rounds": n, "first_half": round(sum(ys[:half]) / half, 4),
           "second_half": round(sum(ys[half:]) / (n - half), 4), "slope": round(slope, 5),
           "slope_se": round((resid / (n - 2) / sxx) ** 0.5, 5)}
    if all("groups_drawn" in r for r in records):  # logs before dynamic sampling lack it
        passed, drawn = per_round(records, "tests_passed"), per_round(records, "groups_drawn")
        out["passed_first_half"] = round(sum(passed[:half]) / (sum(drawn[:half]) * group), 4)
        out["passed_second_half"] = round(sum(passed[half:]) / (sum(drawn[half:]) * group), 4)
    return out


def plot_rewards(records: list[dict], path: Path) -> None:
    """Mean reward per round (and its running mean) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ys = per_round(records, "reward")
    xs = list(range(len(ys)))
    run = [sum(ys[max(0, i - 9):i + 1]) / len(ys[max(0, i - 9):i + 1]) for i in range(len(ys))]
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    ax.plot(xs, ys, ".", alpha=0.5, label="round")
    ax.plot(xs, run, "-", label="mean of last 10")
    ax.set_xlabel("round")
    ax.set_ylabel("reward (2 x tests + 0.5 x parses)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
