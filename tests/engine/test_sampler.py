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
    # shared/reference/diffucoder.md section 2.4, verified there on the real _sample
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


@pytest.mark.parametrize("kwargs", [{"alg": "nope"}, {"steps": 0}, {"temperature": -1},
                                    {"top_p": 1.5}, {"top_k": 0}, {"alg_temp": -0.1}])
def test_bad_settings_raise_config_error(kwargs):
    with pytest.raises(ConfigError):
        SamplerSettings(**kwargs)
