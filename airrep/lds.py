"""Rank correlations between subsets' scores and their recorded losses (DESIGN.md section 4).

The one implementation of LDS and of the noise ceiling; every script calls these.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def per_query_spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of each column of ``a`` with the same column of ``b``, across rows.

    Both are ``(n_subsets, n_queries)``. NaN entries are dropped pairwise per column; a column with
    fewer than two usable rows or with no variation gets 0 (DESIGN.md: NaN counts as 0).
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"expected two matrices of the same shape, got {a.shape} and {b.shape}")
    out = np.zeros(a.shape[1])
    for column in range(a.shape[1]):
        keep = np.isfinite(a[:, column]) & np.isfinite(b[:, column])
        if keep.sum() < 2:
            continue
        ra, rb = rankdata(a[keep, column]), rankdata(b[keep, column])
        ra, rb = ra - ra.mean(), rb - rb.mean()
        denominator = np.sqrt((ra * ra).sum() * (rb * rb).sum())
        out[column] = (ra * rb).sum() / denominator if denominator > 0 else 0.0
    return out


def noise_ceiling(losses_a: np.ndarray, losses_b: np.ndarray) -> dict[str, float]:
    """Reliability of one run from two runs of the same subsets with different seeds.

    ``r`` is the mean over queries of the Spearman correlation, across subsets, between the two runs'
    losses; ``sqrt_r`` is the LDS a perfect predictor of the expected loss would reach against one run.
    """
    return ceiling_from_correlations(per_query_spearman(losses_a, losses_b))


def ceiling_from_correlations(per_query: np.ndarray) -> dict[str, float]:
    """``r`` (the mean of per-query run-to-run correlations) and ``sqrt_r``; NaN for no queries."""
    if len(per_query) == 0:
        return {"r": float("nan"), "sqrt_r": float("nan")}
    r = float(np.mean(per_query))
    return {"r": r, "sqrt_r": float(np.sqrt(max(r, 0.0)))}
