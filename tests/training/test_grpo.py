"""Coupled-GRPO: the estimator and loss against hand computation, clipping and KL at their
boundaries, complementary masks, resume after a kill, 2-process DDP against one process, and
the bad inputs (no verifiable hole, a completion that attacks the sandbox)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from training.coupled import (coupled_masks, coupled_scores, grpo_loss, leave_one_out,
                              mask_ratio, mask_uniforms)
from training.grpo import Group, another_round_fits, global_tokens, policy_update

from .repos import SHAPES, tree_hash

ROOT = Path(__file__).resolve().parents[2]


def tiny_dream(seed: int = 0, vocab: int = 40):
    from engine.model import DreamConfig, DreamModel

    torch.manual_seed(seed)
    cfg = DreamConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=64, mask_token_id=1, pad_token_id=2,
                      eos_token_id=0)
    model = DreamModel(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model


def groups_for_test(n_groups: int, G: int = 3, L: int = 12, seed: int = 5) -> list[Group]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for k in range(n_groups):
        ids = torch.randint(3, 40, (G, L), generator=gen)
        completion = torch.zeros(G, L, dtype=torch.bool)
        completion[:, 5:9] = True
        completion[0, 8] = False  # rows score different numbers of tokens
        adv = leave_one_out(torch.rand(G, generator=gen))
        out.append(Group(ids, completion, adv, list(range(k * G, k * G + G))))
    return out


def test_masks_are_complementary_and_cover_every_completion_token_once():
    completion = torch.zeros(4, 30, dtype=torch.bool)
    completion[:, 10:25] = True
    u = mask_uniforms(7, [0, 1, 2, 3], 30)
    t = mask_ratio(7)
    assert 0.2 <= t <= 0.8
    m1, m2 = coupled_masks(completion, t, u)
    assert not (m1 & m2).any()
    assert torch.equal(m1 | m2, completion)  # every completion token exactly once
    assert not ((m1 | m2) & ~completion).any()  # the prompt is never masked
    assert 0 < int(m1.sum()) < int(completion.sum())
    # a rollout's draw depends on (seed, uid) only: the same whichever batch scores it
    assert torch.equal(mask_uniforms(7, [2], 30)[0], u[2])


def test_coupled_scores_equal_a_hand_computation_over_three_views():
    model = tiny_dream().eval()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12], [13, 14, 15, 16, 17, 18, 19, 20]])
    completion = torch.zeros_like(ids, dtype=torch.bool)
    completion[:, 3:6] = True
    t = 0.3
    u = torch.tensor([[0.9, 0.9, 0.9, 0.1, 0.5, 0.2, 0.9, 0.9],
                      [0.9, 0.9, 0.9, 0.7, 0.05, 0.6, 0.9, 0.9]])
    with torch.no_grad():
        got = coupled_scores(model, ids, completion, t, u, mask_id=1)
        want = torch.zeros(2, 8)
        for b in range(2):
            full = ids[b].clone()
            full[3:6] = 1
            v1, v2 = ids[b].clone(), ids[b].clone()
            for k in range(3, 6):
                if u[b, k] < t:
                    v1[k] = 1
                else:
                    v2[k] = 1
            lps = [torch.log_softmax(model(v[None])[0], -1) for v in (full, v1, v2)]
            for k in range(3, 6):
                lp0, lp1, lp2 = (lp[k - 1, ids[b, k]] for lp in lps)  # i-1 predicts i
                want[b, k] = (lp0 + (lp1 / t if u[b, k] < t else lp2 / (1 - t))) / 2
    assert torch.allclose(got, want, atol=1e-5)
    assert (got[~completion] == 0).all()


def test_loss_equals_a_hand_computed_value():
    scores = torch.tensor([[0.0, -1.0, -2.0]])
    old = torch.tensor([[0.0, -1.1, -1.5]])
    ref = torch.tensor([[0.0, -0.9, -2.0]])
    weight = torch.tensor([[0.0, 1.0, 1.0]])
    loss, stats = grpo_loss(scores, old, ref, torch.tensor([2.0]), weight, epsilon=0.2,
                            beta=0.1, denominator=2.0)
    # token 1: ratio e^0.1 = 1.105 inside [0.8, 1.2] -> objective 2 * 1.105
    # token 2: ratio e^-0.5 = 0.607 < 0.8 with A > 0 -> min(0.607 * 2, 0.8 * 2) = 1.213
    r1, r2 = math.exp(0.1), math.exp(-0.5)
    kl1 = math.exp(0.1) - 0.1 - 1  # ref - scores = 0.1
    want = (-(2 * r1) + 0.1 * kl1 - (2 * r2)) / 2.0
    assert float(loss) == pytest.approx(want, rel=1e-6)
    assert stats["clipped"] == 0.0  # low side clipped only counts when A < 0
    assert stats["tokens"] == 2.0
    assert stats["kl_sum"] == pytest.approx(kl1, abs=1e-6)  # float32


def test_clipping_and_kl_at_their_boundaries():
    eps = 0.5

    def grad_of(delta: float, adv: float, beta: float = 0.0, ref_delta: float = 0.0):
        s = torch.tensor([[delta]], requires_grad=True)
        loss, stats = grpo_loss(s, torch.zeros(1, 1), torch.tensor([[ref_delta]]),
                                torch.tensor([adv]), torch.ones(1, 1), eps, beta, 1.0)
        loss.backward()
        return float(s.grad), stats

    inside = math.log(1 + eps) - 1e-4
    beyond = math.log(1 + eps) + 1e-3
    g_in, st_in = grad_of(inside, 1.0)
    g_out, st_out = grad_of(beyond, 1.0)
    assert g_in < 0 and st_in["clipped"] == 0  # still pushed up just inside the range
    assert g_out == 0 and st_out["clipped"] == 1  # no push once clipped
    g_low, st_low = grad_of(math.log(1 - eps) - 1e-3, -1.0)
    assert g_low == 0 and st_low["clipped"] == 1
    # a ratio below 1 - eps with a positive advantage is not clipped: still pushed up
    g_low_pos, st = grad_of(math.log(1 - eps) - 1e-3, 1.0)
    assert g_low_pos < 0 and st["clipped"] == 0
    # k3 KL: zero, with zero gradient, at the reference; positive and restoring away from it
    g0, st0 = grad_of(0.0, 0.0, beta=1.0, ref_delta=0.0)
    assert st0["kl_sum"] == 0.0 and g0 == 0.0
    g1, st1 = grad_of(0.3, 0.0, beta=1.0, ref_delta=0.0)
    assert st1["kl_sum"] > 0 and g1 > 0  # descending the loss lowers the score back


def test_a_round_starts_only_if_the_mean_round_still_fits_the_budget():
    assert another_round_fits({"round": 0, "elapsed": 0.0}, 1.0)  # the first one always runs
    assert another_round_fits({"round": 0, "elapsed": 0.0}, 0.0)
    # 3 rounds in 450 s (150 s each): a fourth ends at ~600 s
    assert another_round_fits({"round": 3, "elapsed": 450.0}, 600.0)
    assert not another_round_fits({"round": 3, "elapsed": 450.0}, 599.0)
    assert not another_round_fits({"round": 4, "elapsed": 610.0}, 600.0)


def test_leave_one_out_advantages():
    adv = leave_one_out(torch.tensor([1.0, 0.0, 0.0, 3.0]))
    assert torch.allclose(adv, torch.tensor([0.0, -4 / 3, -4 / 3, 8 / 3]))
    assert float(leave_one_out(torch.tensor([0.5, 0.5])).abs().sum()) == 0.0


def _ddp_worker(rank: int, world: int, init: str, out: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from training.grpo import GrpoConfig, global_tokens

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    model = tiny_dream()
    ddp = DistributedDataParallel(model)
    groups = groups_for_test(4)
    mine = groups[rank * 2:(rank + 1) * 2]
    cfg = GrpoConfig(repo=".", out=".", beta=0.05, epsilon=0.2, bf16=False)
    old = [torch.zeros(g.ids.shape) - 3.0 for g in mine]
    ref = [torch.zeros(g.ids.shape) - 2.5 for g in mine]
    denom = global_tokens(mine, world) / world
    policy_update(ddp, mine, old, ref, 11, cfg, 1, denom)
    torch.optim.SGD(model.parameters(), lr=0.5).step()
    if rank == 0:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.state_dict().items()
                   if k != "lm_head.weight" or not model.config.tie_word_embeddings}, out)
    dist.barrier()  # as training does: no rank leaves while rank 0 still writes
    dist.destroy_process_group()


def test_two_process_ddp_gives_the_same_update_as_one_process(tmp_path):
    import torch.multiprocessing as mp

    from training.grpo import GrpoConfig, global_tokens

    out = tmp_path / "ddp.safetensors"
    mp.spawn(_ddp_worker, args=(2, f"file://{tmp_path / 'store'}", str(out)), nprocs=2,
             join=True)
    model = tiny_dream()
    groups = groups_for_test(4)
    cfg = GrpoConfig(repo=".", out=".", beta=0.05, epsilon=0.2, bf16=False)
    old = [torch.zeros(g.ids.shape) - 3.0 for g in groups]
    ref = [torch.zeros(g.ids.shape) - 2.5 for g in groups]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    policy_update(model, groups, old, ref, 11, cfg, 1, global_tokens(groups, 1))
    torch.optim.SGD(model.parameters(), lr=0.5).step()
    from safetensors.torch import load_file

    ddp = load_file(str(out))
    moved = 0.0
    for k, v in model.state_dict().items():
        if k not in ddp:
            continue
        assert torch.allclose(ddp[k], v, atol=1e-6), k
        moved += float((v - before[k]).abs().sum())
    assert moved > 0  # the update did something


def _grpo_cmd(repo: Path, model: Path | None, out: Path, rounds: int) -> list[str]:
    """The command line; ``model`` None: the embedded model, whose completions sometimes parse
    (reward 0.5) and sometimes not, so the groups have real advantages to learn from."""
    init = ["--init", str(model)] if model else []
    return [sys.executable, "-m", "cli.main", "train", "grpo", "--repo", str(repo), *init,
            "--out", str(out), "--max-rounds", str(rounds), "--holes", "4",
            "--group", "3", "--tasks", "2", "--canvas", "8", "--lr", "1e-3", "--minutes", "30",
            "--checkpoint-seconds", "0"]


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1")


def _rounds(state: Path) -> int:
    try:
        return json.loads(state.read_text())["round"]
    except (OSError, ValueError):  # not written yet, or being swapped in
        return -1


def test_resume_after_a_kill_continues_the_same_run(repo, tmp_path):
    from safetensors.torch import load_file

    before = tree_hash(repo)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(_grpo_cmd(repo, None, straight, 4), cwd=ROOT, env=_env(),
                   check=True, capture_output=True)
    proc = subprocess.Popen(_grpo_cmd(repo, None, killed, 4), cwd=ROOT, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = killed / "checkpoint" / "state.json"
    deadline = time.time() + 120
    while time.time() < deadline and _rounds(state) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 2 <= _rounds(state) < 4  # killed midway
    subprocess.run(_grpo_cmd(repo, None, killed, 4), cwd=ROOT, env=_env(),
                   check=True, capture_output=True)
    a = load_file(str(straight / "model.safetensors"))
    b = load_file(str(killed / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    log_a = [json.loads(x) for x in (straight / "log.jsonl").read_text().splitlines()]
    log_b = [json.loads(x) for x in (killed / "log.jsonl").read_text().splitlines()]
    assert [r["update"] for r in log_b] == list(range(1, 9))  # no round logged twice
    assert any(r["groups_drawn"] > r["zero_std_groups"] and r["grad_norm"] > 0
               for r in log_a)  # it learned
    assert sum(log_a[-1]["test_statuses"].values()) == log_a[-1]["test_runs"]
    assert [(r["reward"], r["loss"]) for r in log_a] == [(r["reward"], r["loss"]) for r in log_b]
    assert (straight / "reward.png").read_bytes()[:4] == b"\x89PNG"
    assert tree_hash(repo) == before  # the user's tree is never written


def test_a_repository_without_verifiable_holes_is_refused(repo, tiny_model, tmp_path):
    (repo / "tests" / "test_geometry.py").write_text("def test_nothing():\n    pass\n")
    run = subprocess.run(_grpo_cmd(repo, tiny_model, tmp_path / "o", 1), cwd=ROOT,
                         env=_env(), capture_output=True, text=True)
    assert run.returncode == 2
    errors = [x for x in run.stderr.splitlines() if x.startswith("unmask: error:")]
    assert len(errors) == 1 and "Traceback" not in run.stderr
    assert "no hole" in errors[0] and "makes its test suite fail" in errors[0]
    assert not (tmp_path / "o" / "model.safetensors").exists()


def test_a_completion_that_deletes_files_or_opens_sockets_is_contained(repo):
    from engine.sandbox import RepoSandbox, network_jail

    before = tree_hash(repo)
    attack = SHAPES.replace('    result = side * side\n', '''    import shutil, socket
    shutil.rmtree("geometry", ignore_errors=True)
    shutil.rmtree("tests", ignore_errors=True)
    socket.create_connection(("127.0.0.1", 22), timeout=2)
    result = side * side
''')
    with RepoSandbox(repo, timeout_s=30) as sandbox:
        hit = sandbox.run({"geometry/shapes.py": attack})
        assert not hit.passed
        assert sandbox.restored >= 3  # the deleted files were put back in the copy
        assert sandbox.run().passed  # so the next run sees the real repository
        if network_jail():
            probe = SHAPES + ("\nimport socket\ntry:\n    socket.create_connection(('127.0.0.1', "
                              "9), timeout=2)\nexcept OSError as err:\n"
                              "    assert err.errno == 101, err\n")
            assert sandbox.run({"geometry/shapes.py": probe}).passed  # unreachable: no network
    assert tree_hash(repo) == before


def test_rollouts_ask_with_the_file_context_the_editors_send(repo, tiny_engine):
    """A rollout's prompt is the editors' request: a window around the hole, and before it the
    file's own lines that the window leaves out (what ``personalized + GRPO + context`` is
    scored with); ``context_tokens`` 0 asks with the window alone."""
    from engine.repo import RepoIndex
    from training.grpo import GrpoConfig, rollout
    from training.holes import Hole

    twin = "def f():\n    a = 1\n    b = 2\n    c = 3\n    d = 4\n    e = 5\n    g = 6\n"
    filler = "".join(f"x{i} = {i}\n" for i in range(80))
    before = twin + filler + "def k():\n    a = 1\n    b = 2\n    c = 3\n"
    hole = Hole("t.py", 0, 1, "line", before, "    d = 4\n", "")
    index = RepoIndex(repo)

    def prompt(context_tokens: int) -> str:
        cfg = GrpoConfig(repo=".", out=".", group=2, canvas=4, window=240, bf16=False,
                         context_tokens=context_tokens)
        group, _ = rollout(tiny_engine, hole, cfg, 0, lambda h, t: (float(len(t)), False, True),
                           0, index=index)
        return tiny_engine.tokenizer.decode(group.ids[0].tolist())

    with_ctx, without = prompt(192), prompt(0)
    # the twin above, out of the window's sight, continues the lines before the hole
    assert "# t.py\n" in with_ctx and "    g = 6\n" in with_ctx
    assert "# t.py" not in without and "g = 6" not in without


def test_scored_slots_end_at_the_end_token_or_where_the_rollout_stopped(tiny_engine):
    from training.grpo import scored_slots

    e = tiny_engine
    a, b = 40, 41
    assert scored_slots(e, [a, b, e.eos_id, a]) == [True, True, True, False]
    # a single line stopped at its newline: the slots still masked were never sampled
    assert scored_slots(e, [a, b, e.mask_id, a]) == [True, True, False, False]
    assert scored_slots(e, [a, b, a]) == [True, True, True]


def test_groups_whose_rewards_are_all_equal_are_replaced_by_new_draws(tiny_engine):
    """A group of equal rewards has no advantage: another task is drawn in its place, up to
    draws x tasks; every drawn group's reward is still reported (the policy's, unfiltered)."""
    from training.grpo import GrpoConfig, draw_groups
    from training.holes import Hole

    flat = Hole("flat.py", 0, 1, "line", "x = 1\n", "y = 2\n", "")
    live = Hole("live.py", 0, 1, "line", "a = 1\n", "b = 2\n", "")
    calls = []

    def rewarder(hole, text):  # the live hole's rewards always differ within a group
        calls.append(hole)
        return (0.5 if hole is flat else float(len(calls)), False, True)

    def rounds(draws: int):
        cfg = GrpoConfig(repo=".", out=".", group=2, tasks=1, draws=draws, canvas=4,
                         window=240, bf16=False, context_tokens=0)
        return [draw_groups(tiny_engine, [flat, live], cfg, rnd, 0, 1, rewarder, None)
                for rnd in range(6)]

    replaced = 0
    for kept, infos in rounds(3):
        assert len(kept) == 1 and 1 <= len(infos) <= 3
        assert [x["zero_std"] for x in infos[:-1]] == [True] * (len(infos) - 1)
        if not infos[-1]["zero_std"]:
            assert kept[0].advantages.abs().sum() > 0  # the live group, not a flat one
        replaced += len(infos) > 1 and not infos[-1]["zero_std"]
    assert replaced  # some round drew the flat hole first and updated on another draw
    kept_all = rounds(1)
    assert all(len(kept) == len(infos) == 1 for kept, infos in kept_all)
    assert any(x["zero_std"] for _, infos in kept_all for x in infos)  # kept although flat


def test_the_first_update_scores_the_rollout_policy_itself():
    """``old`` None (the round's first update) gives the gradient that the rollout policy's own
    precomputed scores give: no extra scoring pass is needed for it."""
    from training.grpo import GrpoConfig, fixed_scores

    cfg = GrpoConfig(repo=".", out=".", bf16=False)
    groups = groups_for_test(2)
    ref = [torch.zeros(g.ids.shape) - 2.5 for g in groups]
    grads = []
    for old in (None, fixed_scores(tiny_dream(), groups, 11, 1, False)):
        model = tiny_dream()
        policy_update(model, groups, old, ref, 11, cfg, 1, global_tokens(groups, 1))
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert grads[0].abs().sum() > 0
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_reward_trend_reads_the_log_per_round():
    """Two log lines per round (mu = 2) count once; the slope is least squares over rounds
    with its standard error, and the pass share is over every drawn rollout."""
    from training.grpo import reward_trend

    rewards = [0.1, 0.5, 0.2, 0.6, 0.4, 0.9]
    records = [{"round": r, "reward": y, "tests_passed": r % 2, "groups_drawn": 2}
               for r, y in enumerate(rewards) for _ in range(2)]
    t = reward_trend(records, group=4)
    x = torch.arange(6.0)
    slope = float(((x - x.mean()) * (torch.tensor(rewards) - sum(rewards) / 6)).sum()
                  / ((x - x.mean()) ** 2).sum())
    assert t["rounds"] == 6 and math.isclose(t["slope"], slope, abs_tol=1e-5)
    assert 0 < t["slope_se"] < t["slope"]
    assert math.isclose(t["first_half"], 0.8 / 3, abs_tol=1e-4)
    assert math.isclose(t["second_half"], 1.9 / 3, abs_tol=1e-4)
    assert t["passed_first_half"] == round(1 / 24, 4)  # round 1 passed 1 of its 8 rollouts
    assert t["passed_second_half"] == round(2 / 24, 4)
    flat = reward_trend([{"round": r, "reward": 0.3, "tests_passed": 0, "groups_drawn": 1}
                         for r in range(5)], group=4)
    assert flat["slope"] == 0 and flat["slope_se"] == 0
    assert reward_trend(records[:4], group=4) == {"rounds": 2}  # too few rounds for a line


CLAMP = "def clamp(x, lo, hi):\n    x = max(x, lo)\n    x = min(x, hi)\n    return x\n"
CLAMP_TESTS = '''from clamp import clamp


def test_low():
    assert clamp(-1, 0, 5) == 0


def test_high():
    assert clamp(9, 0, 5) == 5


def test_middle():
    assert clamp(3, 0, 5) == 3


def test_unrelated():
    assert 1 + 1 == 2
'''


@pytest.mark.parametrize("completion, credit", [
    ("    x = min(max(x, lo), hi)\n", 1.0),  # the suite passes
    ("    x = max(x, lo)\n", 1 / 2),  # mends test_low of the blank's two failures
    ("    x = 0\n", 1 / 3),  # mends test_low, breaks test_middle anew
    ("    x = x\n", 0.0),  # the blank's failures exactly
    ("    x = (\n", None),  # does not parse: no run, no credit
    # parses, but the suite stops at collection (the module fails to import): no test ran
    ("    return x\nimport no_such_module\n\n\ndef _unused(x):\n", 0.0),
])
def test_partial_credit_is_the_share_of_the_blanks_failures_mended(tmp_path, completion, credit):
    from engine.sandbox import RepoSandbox
    from training.grpo import GrpoConfig, Rewarder
    from training.holes import Hole

    (tmp_path / "clamp.py").write_text(CLAMP)
    (tmp_path / "test_clamp.py").write_text(CLAMP_TESTS)
    head, hole_lines, tail = CLAMP.partition("    x = max(x, lo)\n    x = min(x, hi)\n")
    hole = Hole("clamp.py", 1, 3, "block", head, hole_lines, tail)
    cfg = GrpoConfig(repo=str(tmp_path), out=".", partial_credit=True)
    assert cfg.test_cmd == "python -m pytest -q"
    with RepoSandbox(tmp_path, cfg.test_cmd, timeout_s=60) as sandbox:
        blank = sandbox.run({"clamp.py": head + tail})
        assert blank.failed_tests == ("test_clamp.py::test_low", "test_clamp.py::test_high")
        reward, passed, parsed = Rewarder(sandbox, cfg)(hole, completion)
        binary, _, _ = Rewarder(sandbox, replace(cfg, partial_credit=False))(hole, completion)
    assert parsed == (credit is not None) and passed == (credit == 1.0)
    assert math.isclose(reward, 2.0 * (credit or 0.0) + 0.5 * parsed)
    assert binary == 2.0 * passed + 0.5 * parsed  # all or nothing, the paper's


def test_partial_credit_refuses_a_test_command_that_stops_at_the_first_failure():
    from engine.errors import ConfigError
    from training.grpo import GrpoConfig

    with pytest.raises(ConfigError, match="drop -x"):
        GrpoConfig(repo=".", out=".", partial_credit=True, test_cmd="python -m pytest -x -q")
    assert GrpoConfig(repo=".", out=".").test_cmd == "python -m pytest -x -q"
