"""Losses on hand-made inputs: masking rules, 1/t weighting, infilling examples."""

from __future__ import annotations

import math

import torch

from engine.model import DreamConfig, DreamModel
from training.objectives import (Parent, Specials, before_first, canvas_padding, causal_lm_loss,
                                 infill_batch, infill_example, line_starts,
                                 masked_diffusion_loss, pick_hole, random_masking)

SP = Specials(mask_id=1, pad_id=2, eos_id=0)


def tiny(tied: bool = True, seed: int = 0):
    torch.manual_seed(seed)
    return DreamModel(DreamConfig(vocab_size=40, hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=1, num_attention_heads=2,
                                  num_key_value_heads=1, tie_word_embeddings=tied))


def test_zero_init_head_gives_uniform_ce():
    m = tiny()
    torch.nn.init.zeros_(m.lm_head.weight)  # tied: logits are all 0 -> CE = ln V
    x = torch.randint(3, 40, (2, 16))
    loss, _ = causal_lm_loss(m, x)
    assert math.isclose(loss.item(), math.log(40), rel_tol=1e-5)
    noisy, masked, t = random_masking(x, SP, 1e-3, torch.Generator().manual_seed(0))
    dl, stats = masked_diffusion_loss(m, x, masked, noisy, t, torch.full((2,), 15.0))
    expected = (masked.sum(1) / t).sum().item() * math.log(40) / 30
    assert math.isclose(dl.item(), expected, rel_tol=1e-4)
    assert math.isclose(stats["masked_ce"], math.log(40), rel_tol=1e-5)


def test_random_masking_never_masks_position_zero():
    x = torch.randint(3, 40, (64, 8))
    noisy, masked, t = random_masking(x, SP, 1e-3, torch.Generator().manual_seed(1))
    assert not masked[:, 0].any()
    assert torch.equal(noisy[masked], torch.full((int(masked.sum()),), 1))
    assert ((t >= 1e-3) & (t <= 1)).all()


def test_diffusion_loss_uses_shifted_logits():
    """Hidden state i-1 predicts token i: a change *after* position j leaves j's loss unaffected
    under causal attention, so shifting is visible through a causal probe."""
    m = tiny()
    x = torch.randint(3, 40, (1, 10))
    masked = torch.zeros(1, 10, dtype=torch.bool)
    masked[0, 5] = True
    logits = m(x, select=masked.nonzero(as_tuple=True))
    direct = m(x)[0, 5]
    assert torch.allclose(logits[0], direct)  # select picks the row asked for
    rows, cols = masked.nonzero(as_tuple=True)
    shifted = m(x, select=(rows, cols - 1))
    assert torch.allclose(shifted[0], m(x)[0, 4])


def test_infill_example_pads_middle_and_keeps_length():
    ends = torch.zeros(40, dtype=torch.bool)
    ends[39] = True  # token 39 ends a line
    row = torch.tensor(([5, 6, 7, 39] * 32)[:128])
    gen = torch.Generator().manual_seed(0)
    seen_multi = False
    for holes in (1, 1, 4, 4, 4, 4) * 4:
        ex = infill_example(row, SP, ends, 12, gen, holes=holes)
        if ex is None:
            continue
        seq, spans = ex
        assert seq.numel() == 128 and 1 <= len(spans) <= holes and spans[0][0] >= 8
        seen_multi |= len(spans) > 1
        assert torch.equal(seq[:spans[0][0]], row[:spans[0][0]])
        for (start, n), nxt in zip(spans, spans[1:] + [(128, 0)]):
            assert start + n + 8 <= nxt[0] or nxt[0] == 128  # clean context between holes
            canvas = seq[start:start + n].tolist()
            if 2 in canvas:  # pads only at the right end of each canvas
                first = canvas.index(2)
                assert all(t == 2 for t in canvas[first:])
        assert (seq != 2).sum() >= 128 - sum(n for _, n in spans)
    assert seen_multi


def test_single_line_share_sets_how_many_line_holes_are_one_line():
    ends = torch.zeros(40, dtype=torch.bool)
    ends[39] = True  # every line is 4 tokens: 5 6 7 39
    row = torch.tensor(([5, 6, 7, 39] * 32)[:128])
    starts = line_starts(row, ends)
    starts = starts[(starts > 8) & (starts < 112)]

    def one_line_holes(share: float) -> int:
        gen = torch.Generator().manual_seed(3)
        holes = [pick_hole(row, starts, 40, gen, share) for _ in range(400)]
        return sum(a % 4 == 0 and b - a == 4 for a, b in holes)

    # 70 % of holes are line holes: all of them one line at 1.0, none at 0.0
    assert one_line_holes(1.0) > 240 and one_line_holes(0.0) < 20
    assert one_line_holes(0.0) < one_line_holes(0.5) < one_line_holes(1.0)


def test_rainbow_padding_is_one_end_then_the_cycle():
    rainbow = Specials(mask_id=1, pad_id=2, eos_id=0, pad_cycle=(30, 31, 32))
    assert canvas_padding(0, rainbow) == [] and canvas_padding(1, rainbow) == [2]
    assert canvas_padding(6, rainbow) == [2, 30, 31, 32, 30, 31]
    assert canvas_padding(3, SP) == [2, 2, 2]
    ends = torch.zeros(40, dtype=torch.bool)
    ends[39] = True
    row = torch.tensor(([5, 6, 7, 39] * 32)[:128])
    gen = torch.Generator().manual_seed(1)
    padded = 0
    for _ in range(20):
        ex = infill_example(row, rainbow, ends, 12, gen, holes=2)
        for start, n in ex[1] if ex else []:
            canvas = ex[0][start:start + n].tolist()
            if 2 in canvas:  # the middle, one end, then the cycle from its start
                first = canvas.index(2)
                assert canvas[first + 1:] == canvas_padding(n - first, rainbow)[1:]
                assert not {30, 31, 32} & set(canvas[:first])
                padded += n - first > 3
    assert padded  # the cycle was exercised


def test_infill_batch_masks_only_canvas():
    ends = torch.zeros(40, dtype=torch.bool)
    ends[39] = True
    x = torch.tensor([([5, 6, 7, 39] * 32)[:96]] * 4)
    seqs, noisy, masked, t, eligible = infill_batch(x, SP, ends, 1e-3, 16,
                                                    torch.Generator().manual_seed(2), 3)
    assert masked.any(dim=1).all()
    assert (noisy[masked] == 1).all() and (noisy[~masked] == seqs[~masked]).all()
    assert (eligible <= 95).all()


def test_parent_term_vanishes_when_the_model_reads_as_its_parent():
    """The KL compares the model with the parent reading the clean row causally: a model that
    is the parent and sees the same causal view has KL 0, so the loss is (1 - w) * CE; any
    other parent adds a positive KL."""
    m = tiny()
    x = torch.randint(3, 40, (2, 16))
    _, masked, t = random_masking(x, SP, 0.3, torch.Generator().manual_seed(2))
    causal = torch.ones(16, 16, dtype=torch.bool).tril().expand(2, 1, 16, 16)
    eligible = torch.full((2,), 15.0)
    plain, _ = masked_diffusion_loss(m, x, masked, x, t, eligible, causal)
    same, stats = masked_diffusion_loss(m, x, masked, x, t, eligible, causal, Parent(m, 0.25))
    assert abs(stats["parent_kl"]) < 1e-5
    assert torch.allclose(same, 0.75 * plain, atol=1e-5)
    other = tiny(tied=False, seed=5)  # tied, tiny() predicts its input token: so would it
    _, stats = masked_diffusion_loss(m, x, masked, x, t, eligible, causal, Parent(other, 0.25))
    assert stats["parent_kl"] > 1e-2


def test_parent_term_skips_positions_after_canvas_padding():
    seqs = torch.tensor([[5, 6, 7, 2, 2, 8, 9], [5, 6, 7, 8, 9, 10, 11]])
    ok = before_first(seqs, SP.pad_id)
    assert ok[0].tolist() == [True, True, True, False, False, False, False]
    assert ok[1].all()
    m, other = tiny(), tiny(tied=False, seed=5)
    masked = torch.zeros(2, 7, dtype=torch.bool)
    masked[0, 5] = True  # after the padding: the parent's view would hold pad tokens
    t, eligible = torch.full((2,), 0.5), torch.full((2,), 6.0)
    noisy = torch.where(masked, torch.full_like(seqs, SP.mask_id), seqs)
    _, stats = masked_diffusion_loss(m, seqs, masked, noisy, t, eligible, None,
                                     Parent(other, 0.5), ok)
    assert stats["parent_kl"] == 0.0  # no position qualified
    _, stats = masked_diffusion_loss(m, seqs, masked, noisy, t, eligible, None, Parent(other, 0.5))
    assert stats["parent_kl"] > 1e-2  # the same position, unfiltered
