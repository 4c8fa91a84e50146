"""Sampler behaviour: Dream's schedule, per-step streaming, seeding, cancellation."""

from __future__ import annotations

import pytest
import torch

from engine.errors import ConfigError
from engine.sampler import SamplerSettings, denoise, num_transfer_tokens


class Uniform:
    """A denoiser with fixed random logits: enough to exercise the schedule."""

    def __init__(self, vocab=50, seed=0):
        self.vocab, self.gen = vocab, torch.Generator().manual_seed(seed)

    def logits(self, x, attention_mask, position_ids):
        out = torch.randn(*x.shape, self.vocab, generator=self.gen)
        out[..., 1] = -1e9  # never predict the mask id (1) itself; upstream would keep it masked
        return out


def per_step_counts(new: int, steps: int) -> list[int]:
    x = torch.cat([torch.full((1, 3), 7), torch.full((1, new), 1)], dim=1)
    return [int(st.decoded.sum()) for st in denoise(Uniform(), x, 1, SamplerSettings(steps=steps))]


@pytest.mark.parametrize("new,steps,expected", [
    (256, 256, [0] + [1] * 254 + [2]),
    (256, 128, [1] + [2] * 126 + [3]),
    (512, 256, [1] + [2] * 254 + [3]),
    (256, 64, [3] + [4] * 62 + [5]),
])
def test_schedule_matches_dream_table(new, steps, expected):
    # the counts upstream _sample produces (Dream generation_utils.py), checked on the real code
    assert per_step_counts(new, steps) == expected


def test_num_transfer_tokens_truncates_like_upstream():
    ts = torch.linspace(1, 1e-3, 17)
    mask = torch.ones(1, 16, dtype=torch.bool)
    assert num_transfer_tokens(mask, ts[0], ts[1], False) == 0
    assert num_transfer_tokens(mask, ts[15], ts[16], True) == 16


def test_every_slot_decoded_exactly_once_and_prompt_untouched():
    x = torch.cat([torch.full((2, 4), 9), torch.full((2, 20), 1)], dim=1)
    seen = torch.zeros_like(x, dtype=torch.int64)
    for st in denoise(Uniform(), x, 1, SamplerSettings(steps=7, alg="topk_margin")):
        seen += st.decoded.long()
    assert (seen[:, 4:] == 1).all() and (seen[:, :4] == 0).all()
    assert (x[:, :4] == 9).all() and (x != 1).all()


def test_seeded_sampling_is_reproducible_and_seed_sensitive():
    def run(seed):
        x = torch.cat([torch.full((1, 2), 9), torch.full((1, 16), 1)], dim=1)
        s = SamplerSettings(steps=4, alg="entropy", temperature=1.0, alg_temp=0.5, top_p=0.9)
        list(denoise(Uniform(seed=1), x, 1, s, torch.Generator().manual_seed(seed)))
        return x

    assert torch.equal(run(5), run(5))
    assert not torch.equal(run(5), run(6))


def test_stopping_iteration_cancels_between_steps():
    calls = []

    class Counting(Uniform):
        def logits(self, x, a, p):
            calls.append(1)
            return super().logits(x, a, p)

    x = torch.cat([torch.full((1, 2), 9), torch.full((1, 16), 1)], dim=1)
    for st in denoise(Counting(), x, 1, SamplerSettings(steps=8)):
        if st.step == 2:
            break
    assert len(calls) == 3 and (x == 1).any()


def decode_steps(x, settings) -> torch.Tensor:
    """Per position, the step it was committed at (-1: never)."""
    at = torch.full(x.shape, -1)
    for st in denoise(Uniform(), x, 1, settings):
        at[st.decoded] = st.step
    return at


def test_block_length_one_decodes_left_to_right_and_never_touches_the_suffix():
    x = torch.cat([torch.full((1, 3), 9), torch.full((1, 10), 1), torch.full((1, 4), 8)], dim=1)
    at = decode_steps(x, SamplerSettings(steps=10, alg="entropy", block_length=1))
    assert at[0, 3:13].tolist() == list(range(10))
    assert (at[0, :3] == -1).all() and (x[0, 13:] == 8).all() and (x != 1).all()


def test_blocks_finish_in_order_with_their_share_of_steps():
    x = torch.cat([torch.full((1, 2), 9), torch.full((1, 10), 1)], dim=1)
    at = decode_steps(x, SamplerSettings(steps=6, alg="maskgit_plus", block_length=4))
    blocks = [at[0, 2:6], at[0, 6:10], at[0, 10:12]]  # 3 blocks: 2 + 2 + 2 steps
    assert blocks[0].max() < blocks[1].min() and blocks[1].max() < blocks[2].min()
    assert int(blocks[2].max()) == 5
    # fewer steps than blocks: one step per block
    x = torch.cat([torch.full((1, 2), 9), torch.full((1, 10), 1)], dim=1)
    assert int(decode_steps(x, SamplerSettings(steps=1, block_length=4)).max()) == 2


def test_one_long_block_splits_evenly_while_no_block_keeps_dreams_schedule():
    x1 = torch.cat([torch.full((1, 2), 9), torch.full((1, 12), 1)], dim=1)
    x2 = x1.clone()
    dream = torch.bincount(decode_steps(x1, SamplerSettings(steps=5))[0, 2:], minlength=5)
    block = torch.bincount(decode_steps(x2, SamplerSettings(steps=5, block_length=64))[0, 2:],
                           minlength=5)
    assert dream.tolist() == [2, 2, 2, 2, 4]  # int(M (1 - s/t)), the rest at the last step
    assert block.tolist() == [3, 3, 2, 2, 2]  # LLaDA: 12 = 5 x 2 + 2, larger first


@pytest.mark.parametrize("kwargs", [{"alg": "nope"}, {"steps": 0}, {"temperature": -1},
                                    {"top_p": 1.5}, {"top_k": 0}, {"alg_temp": -0.1},
                                    {"block_length": 0}])
def test_bad_settings_raise_config_error(kwargs):
    with pytest.raises(ConfigError):
        SamplerSettings(**kwargs)


def test_block_plan_shares_the_steps_by_slots_and_never_an_empty_pass():
    from engine.sampler import block_plan, planned_steps

    x = torch.cat([torch.full((1, 2), 9), torch.full((1, 64), 1), torch.full((1, 3), 8)], dim=1)
    for steps, block in [(64, 8), (16, 8), (64, 1), (10, 7), (3, 8), (40, 30)]:
        plan = block_plan(x, 1, steps, block)
        assert [(b.start, b.end) for b in plan][0] == (2, 2 + min(block, 64))
        assert plan[-1].end == 66 and sum(b.steps for b in plan) == planned_steps(64, steps, block)
        assert all(1 <= b.steps <= b.end - b.start for b in plan)
    assert [b.steps for b in block_plan(x, 1, 16, 8)] == [2] * 8
    assert planned_steps(64, 64, 1) == 64 and planned_steps(32, 64, 1) == 32
    assert planned_steps(64, 3, 8) == 8 and planned_steps(64, 5, None) == 5


def test_every_block_pass_commits_and_the_last_one_no_more_than_the_rest():
    x = torch.cat([torch.full((1, 2), 9), torch.full((1, 64), 1)], dim=1)
    at = decode_steps(x, SamplerSettings(steps=64, alg="entropy", block_length=8))
    assert sorted(at[0, 2:].tolist()) == list(range(64))  # one slot per pass, all 64 passes
    x = torch.cat([torch.full((1, 2), 9), torch.full((1, 10), 1)], dim=1)
    at = decode_steps(x, SamplerSettings(steps=4, alg="entropy", block_length=5))
    per_step = torch.bincount(at[0, 2:], minlength=4).tolist()
    assert per_step == [3, 2, 3, 2]  # LLaDA's even split inside each block of 5


@pytest.mark.parametrize("alg_temp", [None, 0.5])
def test_non_finite_probabilities_fall_back_to_argmax_like_upstream(alg_temp):
    # fp16 at a low temperature overflows to inf/nan; torch.multinomial would raise
    from engine.sampler import confidence_step, sample_tokens

    logits = torch.tensor([[60000.0, 1.0, 0.0], [0.0, 5.0, 1.0]], dtype=torch.float16)
    s = SamplerSettings(temperature=0.01, alg="maskgit_plus", alg_temp=alg_temp)
    gen = torch.Generator().manual_seed(0)
    logits[0, 0] = float("inf")
    conf, x0 = sample_tokens(logits, s, gen)
    assert x0.tolist()[1] == 1
    x = torch.tensor([[7, 3, 3]])
    confidence_step(x, x == 3, logits, 1, s, 3, gen)
    assert (x == 3).sum() == 1


class Peaked:
    """A denoiser whose slot j (counted from the first masked one) predicts token 5 with a
    fixed probability: confidences known in advance (0.95, 0.3, 0.95, 0.3, ...)."""

    def __init__(self, first: int, vocab: int = 20):
        self.first, self.vocab = first, vocab

    def logits(self, x, attention_mask, position_ids):
        import math

        out = torch.zeros(*x.shape, self.vocab)
        for j in range(x.shape[1]):
            p = 0.95 if (j + 1 - self.first) % 2 == 0 else 0.3  # row j predicts slot j + 1
            rest = (1 - p) / (self.vocab - 1)
            out[:, j, 5] = math.log(p / rest)
        return out


def test_confidence_threshold_commits_every_confident_slot_in_one_pass():
    x = torch.cat([torch.full((1, 2), 9), torch.full((1, 8), 1)], dim=1)
    steps = list(denoise(Peaked(first=2), x, 1, SamplerSettings(alg="confidence_threshold",
                                                                threshold=0.9)))
    first = steps[0].decoded[0, 2:].tolist()
    assert first == [True, False] * 4  # the four 0.95 slots at once, none of the 0.3 ones
    assert all(int(st.decoded.sum()) >= 1 for st in steps) and (x != 1).all()
    assert len(steps) == 5  # 4 confident at once, then the rest one per pass (0.3 < 0.9)


def test_eb_sampler_bounds_the_entropy_committed_per_pass():
    x = torch.cat([torch.full((1, 2), 9), torch.full((1, 8), 1)], dim=1)
    one = list(denoise(Peaked(first=2), x.clone(), 1, SamplerSettings(alg="eb", gamma=0.0)))
    assert [int(st.decoded.sum()) for st in one] == [1] * 8  # gamma 0: one slot per pass
    every = list(denoise(Peaked(first=2), x.clone(), 1, SamplerSettings(alg="eb", gamma=100.0)))
    assert len(every) == 1 and int(every[0].decoded.sum()) == 8
    some = list(denoise(Peaked(first=2), x.clone(), 1, SamplerSettings(alg="eb", gamma=1.0)))
    assert 1 < len(some) < 8


def test_parallel_rules_respect_blocks_left_to_right():
    x = torch.cat([torch.full((1, 2), 9), torch.full((1, 8), 1)], dim=1)
    at = torch.full(x.shape, -1)
    for st in denoise(Peaked(first=2), x, 1, SamplerSettings(alg="eb", gamma=100.0,
                                                             block_length=4)):
        at[st.decoded] = st.step
    assert at[0, 2:].tolist() == [0] * 4 + [1] * 4


class Looping:
    """A denoiser stuck in a loop: it always prefers the token after its input's previous
    one in the cycle 5, 6 (then 7 as a second choice), as a greedy model falls into
    ``1, 1, 1, ...``."""

    def logits(self, x, attention_mask, position_ids):
        out = torch.zeros(*x.shape, 12)
        nxt = torch.where(x == 5, 6, 5)  # row j predicts slot j + 1 from token j
        out.scatter_(-1, nxt[..., None], 4.0)
        out[..., 7] = 2.0
        return out


def longest_run(ids: list[int], p: int) -> int:
    """Most consecutive copies of any p-token unit in ``ids``."""
    best = 1
    for a in range(len(ids) - p + 1):
        n = 1
        while ids[a + n * p:a + (n + 1) * p] == ids[a:a + p]:
            n += 1
        best = max(best, n)
    return best


@pytest.mark.parametrize("alg,block", [("entropy", 1), ("confidence_threshold", 4)])
def test_max_repeats_stops_greedy_loops(alg, block):
    # left to right (the embedded model's order, and blocks) every slot is judged; in Dream's
    # any-order mode a slot whose left neighbour is still masked cannot be
    x = torch.cat([torch.full((1, 2), 9), torch.full((1, 24), 1)], dim=1)
    free = x.clone()
    for _ in denoise(Looping(), free, 1, SamplerSettings(steps=24, alg=alg, block_length=block)):
        pass
    assert max(longest_run(free[0, 2:].tolist(), p) for p in (1, 2)) >= 6  # the loop
    for n in (2, 3):
        guarded = x.clone()
        for _ in denoise(Looping(), guarded, 1, SamplerSettings(steps=24, alg=alg,
                                                                 block_length=block,
                                                                 max_repeats=n)):
            pass
        canvas = guarded[0].tolist()
        assert 1 not in canvas
        assert all(longest_run(canvas, p) <= n for p in (1, 2, 3))
        assert 7 in canvas  # the next best token broke the loop


def test_max_repeats_is_validated():
    with pytest.raises(ConfigError, match="max-repeats"):
        SamplerSettings(max_repeats=-1)
