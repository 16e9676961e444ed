"""per_query_spearman against scipy.stats.spearmanr, column by column, and the noise ceiling."""

import numpy as np
import pytest
from scipy.stats import spearmanr

from airrep.lds import noise_ceiling, per_query_spearman


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
