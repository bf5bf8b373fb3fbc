"""Inspector AUROC (squad.eval.metrics.auroc) against hand-computed values."""
from __future__ import annotations

import itertools
import random

import pytest

from squad.eval.metrics import auroc


def pairwise_auc(labels, scores):
    """The definition: P(score of a positive > score of a negative), ties counting one half."""
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_perfect_separation():
    assert auroc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert auroc([1, 0, 1, 0], [0.9, 0.3, 0.5, 0.4]) == 1.0  # order of rows does not matter


def test_reversed():
    assert auroc([1, 1, 0, 0], [0.1, 0.2, 0.8, 0.9]) == 0.0


def test_all_tied():
    assert auroc([0, 1, 0, 1, 1], [0.5] * 5) == 0.5


def test_mixed_case_by_hand():
    # Positives 0.35 and 0.8, negatives 0.1 and 0.4: 0.35 beats 0.1 only, 0.8 beats both -> 3/4.
    assert auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)


def test_mixed_case_with_a_cross_class_tie():
    # Positives 0.2, 0.9; negatives 0.2, 0.5: 0.2 vs 0.2 ties (1/2), 0.2 < 0.5 (0), 0.9 beats both (2).
    assert auroc([0, 1, 0, 1], [0.2, 0.2, 0.5, 0.9]) == pytest.approx(2.5 / 4)


def test_ties_within_one_class_do_not_matter():
    # 3 positives at 0.7 above 2 negatives at 0.3 and 0.7: 3*1 + 3*0.5 = 4.5 of 6.
    assert auroc([1, 1, 1, 0, 0], [0.7, 0.7, 0.7, 0.3, 0.7]) == pytest.approx(0.75)


def test_unbalanced():
    # One positive at 0.6 among negatives 0.1, 0.5, 0.7, 0.9: it beats 2 of 4.
    assert auroc([0, 1, 0, 0, 0], [0.1, 0.6, 0.5, 0.7, 0.9]) == pytest.approx(0.5)
    assert auroc([0, 1, 0, 0, 0], [0.1, 0.95, 0.5, 0.7, 0.9]) == pytest.approx(1.0)


def test_matches_the_pairwise_definition_on_random_data():
    rng = random.Random(0)
    for _ in range(50):
        n = rng.randint(2, 40)
        labels = [rng.randint(0, 1) for _ in range(n)]
        labels[0], labels[1] = 0, 1
        scores = [round(rng.random(), 1) for _ in range(n)]  # coarse values -> many ties
        assert auroc(labels, scores) == pytest.approx(pairwise_auc(labels, scores))


@pytest.mark.parametrize("labels", [[1, 1, 1], [0, 0], []])
def test_none_when_a_class_is_missing(labels):
    assert auroc(labels, [0.5] * len(labels)) is None
