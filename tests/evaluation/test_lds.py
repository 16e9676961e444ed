"""LDS: per_query_spearman against scipy.stats.spearmanr, a hand-computed example, the bootstrap
interval, the noise ceiling, and the evaluate metric module against the plain function."""

import numpy as np
import pytest
from helpers import REPO
from scipy.stats import spearmanr

from airrep.lds import bootstrap_ci, lds, lds_summary, noise_ceiling, per_query_spearman


def test_matches_scipy_column_by_column():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(30, 6))
    b = a + rng.normal(size=(30, 6))
    b[::4, 2] = b[1, 2]  # ties
    expected = [spearmanr(a[:, j], b[:, j]).statistic for j in range(6)]
    np.testing.assert_allclose(per_query_spearman(a, b), expected, rtol=1e-12)


def test_constant_and_nan_columns_count_as_zero():
    a = np.array([[1.0, 1.0, 1.0], [2.0, 1.0, np.nan], [3.0, 1.0, np.nan]])
    b = np.array([[3.0, 1.0, 1.0], [2.0, 2.0, 2.0], [1.0, 3.0, 3.0]])
    np.testing.assert_allclose(per_query_spearman(a, b), [-1.0, 0.0, 0.0])


def test_noise_ceiling_and_shape_check():
    a = np.arange(12.0).reshape(4, 3)
    assert noise_ceiling(a, a) == {"r": 1.0, "sqrt_r": 1.0}
    assert noise_ceiling(a, -a)["sqrt_r"] == 0.0
    with pytest.raises(ValueError, match="same shape"):
        per_query_spearman(a, a[:2])


def test_lds_on_a_hand_computed_example():
    # Three subsets (rows), three queries (columns). Query 0: the scores order the subsets exactly as
    # the negated losses do (rho = 1). Query 1: scores ranks (1, 2, 3) against (3, 1, 2), so
    # sum d^2 = 4 + 1 + 1 = 6 and rho = 1 - 6 * 6 / (3 * (9 - 1)) = -0.5. Query 2: constant scores,
    # an undefined correlation that counts as 0. LDS = (1 - 0.5 + 0) / 3.
    scores = np.array([[3.0, 1.0, 7.0], [1.0, 2.0, 7.0], [2.0, 3.0, 7.0]])
    losses = np.array([[0.1, 0.1, 0.5], [0.3, 0.3, 0.2], [0.2, 0.2, 0.9]])
    np.testing.assert_allclose(lds(scores, losses), [1.0, -0.5, 0.0])
    summary = lds_summary(scores, losses, n_resamples=500)
    assert summary["lds"] == pytest.approx(1 / 6)
    low, high = summary["ci"]
    assert -0.5 <= low <= 1 / 6 <= high <= 1.0


def test_bootstrap_interval_is_seeded_and_shrinks_with_more_queries():
    rng = np.random.default_rng(0)
    few, many = rng.normal(0.3, 0.2, 20), rng.normal(0.3, 0.2, 2000)
    assert bootstrap_ci(few, seed=1) == bootstrap_ci(few, seed=1)
    assert np.diff(bootstrap_ci(many)) < np.diff(bootstrap_ci(few)) / 4
    assert bootstrap_ci(np.full(5, 0.25)) == (0.25, 0.25)


def test_evaluate_metric_module_matches_the_plain_function():
    import evaluate

    rng = np.random.default_rng(2)
    losses = rng.normal(size=(12, 9))
    scores = -losses + rng.normal(size=(12, 9))
    metric = evaluate.load(str(REPO / "metrics" / "lds"))
    # The metric takes one row per query; the plain function takes (subsets, queries).
    got = metric.compute(predictions=scores.T.tolist(), references=losses.T.tolist(), n_resamples=300, seed=4)
    expected = lds_summary(scores, losses, n_resamples=300, seed=4)
    assert got["lds"] == pytest.approx(expected["lds"], abs=1e-12)
    assert [got["ci_low"], got["ci_high"]] == pytest.approx(expected["ci"], abs=1e-12)
