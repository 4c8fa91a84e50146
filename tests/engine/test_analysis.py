"""AR-ness metrics on hand-made decoding orders with hand-computed values."""

from __future__ import annotations

import pytest

from engine.analysis import decoding_sequence, global_ar_ness, local_ar_ness


def test_left_to_right_scores_one():
    order = [0, 1, 2, 3, 4]
    for k in (1, 2, 3):
        assert global_ar_ness(order, k) == 1.0
    # local@k: the first k tokens have no k predecessors
    assert local_ar_ness(order, 1) == pytest.approx(4 / 5)
    assert local_ar_ness(order, 2) == pytest.approx(3 / 5)


def test_right_to_left_scores_zero_locally_and_low_globally():
    order = [4, 3, 2, 1, 0]  # slot 4 decoded first
    assert local_ar_ness(order, 1) == 0.0
    # global@1: only the last decoded token (slot 0, the only one left) is left-most
    assert global_ar_ness(order, 1) == pytest.approx(1 / 5)
    assert global_ar_ness(order, 2) == pytest.approx(2 / 5)


def test_hand_made_mixed_order():
    # decode slots in the sequence 1, 2, 0, 3, 5, 4
    order = [2, 0, 1, 3, 5, 4]
    assert decoding_sequence(order) == [1, 2, 0, 3, 5, 4]
    # local@1 hits: 2 after 1; none else (3 after 0 no; 5 after 3 no; 4 after 5 no) -> 1/6
    assert local_ar_ness(order, 1) == pytest.approx(1 / 6)
    # global@1: masked {0..5}: 1 no; {0,2..5}: 2 no; {0,3,4,5}: 0 yes; {3,4,5}: 3 yes;
    # {4,5}: 5 no; {4}: 4 yes -> 3/6
    assert global_ar_ness(order, 1) == pytest.approx(3 / 6)
    # global@2: every token is among the two left-most masked slots when decoded
    assert global_ar_ness(order, 2) == pytest.approx(6 / 6)


def test_several_tokens_per_step_ties_left_to_right_and_monotone_in_k():
    order = [1, 1, 0, 0]  # step 0 decodes slots 2, 3; step 1 decodes 0, 1
    assert decoding_sequence(order) == [2, 3, 0, 1]
    assert local_ar_ness(order, 1) == pytest.approx(2 / 4)
    values = [global_ar_ness(order, k) for k in (1, 2, 3, 4)]
    assert values == sorted(values) and values[-1] == 1.0
    local = [local_ar_ness(order, k) for k in (1, 2, 3)]
    assert local == sorted(local, reverse=True)


def test_undecoded_slots_are_ignored():
    assert local_ar_ness([-1, -1], 1) == 0.0
    assert global_ar_ness([0, -1, 1], 1) == pytest.approx(1.0)
