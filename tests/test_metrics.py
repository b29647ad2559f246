"""Counts of B' and G per step, and the stopping rules on hand-built accuracy curves."""

import pytest
import torch

from torch_badnet.defense.metrics import accuracy_drop, select_step, step_counts

CURVE = [90.0, 90.0, 89.5, 88.5, 87.9, 86.1, 85.0, 91.0, 79.0]  # drops: 0 0 .5 1.5 2.1 3.9 5 -1 11


def test_step_counts_follow_goodnet_rule():
    truth = torch.tensor([1, 2, 3, 0])
    labels = torch.tensor([
        [1, 2, 0, 0],  # B: 3 of 4 right
        [1, 5, 0, 0],  # B' changes image 1 -> G flags it
        [4, 5, 3, 0],  # B' changes 0, 1, 2; becomes right on image 2 but G flags it anyway
    ])
    counts = step_counts(labels, truth)
    assert counts.n == 4
    assert counts.hits == [3, 2, 2]
    assert counts.goodnet_hits == [3, 2, 1]
    assert counts.flagged == [0, 1, 3]
    assert counts.rate(counts.hits) == [75.0, 50.0, 50.0]


@pytest.mark.parametrize("x, expected", [(2, 4), (4, 6), (10, 8), (0.5, 2), (12, None)])
def test_first_over_is_first_step_with_drop_at_least_x(x, expected):
    assert select_step(CURVE, x, "first-over", "absolute") == expected


@pytest.mark.parametrize("x, expected", [(2, 3), (4, 5), (10, 7), (0.5, 1), (12, 8)])
def test_last_within_is_the_step_before(x, expected):
    assert select_step(CURVE, x, "last-within", "absolute") == expected


def test_relative_drop_is_percent_of_original():
    # 2% of 90 = 1.8 points: step 4 (2.1 points) is the first; 4% = 3.6 points: step 5 (3.9)
    assert accuracy_drop(90.0, 88.2, "relative") == pytest.approx(2.0)
    assert select_step(CURVE, 2, "first-over", "relative") == 4
    assert select_step(CURVE, 4, "first-over", "relative") == 5
    assert select_step(CURVE, 1, "first-over", "relative") == 3  # 0.9 points: 1.5 >= .9, 0.5 < .9
    assert select_step(CURVE, 1, "first-over", "absolute") == 3


def test_exact_drop_counts_as_reached():
    assert select_step([50.0, 49.0, 48.0], 2.0) == 2
    assert select_step([50.0, 49.0, 48.0], 2.0, "last-within") == 1
