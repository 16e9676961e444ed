"""Rank correlations between subsets' scores and their recorded losses (docs/design.md, "LDS" and "The noise ceiling").

The one implementation of LDS and of the noise ceiling; every script calls these.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from scipy.stats import bootstrap, rankdata


def per_query_spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of each column of ``a`` with the same column of ``b``, across rows.

    Both are ``(n_subsets, n_queries)``. NaN entries are dropped pairwise per column; a column with
    fewer than two usable rows or with no variation gets 0 (docs/design.md: an undefined correlation counts as 0).
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


def ceiling_from_twins(
    first: Iterable[Mapping[str, Any]], second: Iterable[Mapping[str, Any]]
) -> dict[str, Any] | None:
    """The noise ceiling from subset models trained twice, as rows with ``pair_id``, ``split_id`` and ``losses``.

    A row of ``second`` is the retrained twin of the ``first`` row whose ``pair_id`` it carries with a
    ``-noise`` suffix. Correlations are taken within each split (its subsets share one query set) that
    has at least 3 twins, then averaged over queries. Returns None when no row has a twin.
    """
    by_id = {row["pair_id"]: row for row in first}
    twins = [
        (by_id[row["pair_id"].removesuffix("-noise")], row)
        for row in second
        if row["pair_id"].removesuffix("-noise") in by_id
    ]
    if not twins:
        return None
    per_query: list[np.ndarray] = []
    for split in sorted({a["split_id"] for a, _ in twins}):
        in_split = [(a, b) for a, b in twins if a["split_id"] == split]
        if len(in_split) >= 3:
            a = np.array([x["losses"] for x, _ in in_split])
            b = np.array([y["losses"] for _, y in in_split])
            per_query.append(per_query_spearman(a, b))
    correlations = np.concatenate(per_query) if per_query else np.zeros(0)
    return {"subsets": len(twins), **ceiling_from_correlations(correlations)}


def ceiling_from_correlations(per_query: np.ndarray) -> dict[str, float]:
    """``r`` (the mean of per-query run-to-run correlations) and ``sqrt_r``; NaN for no queries."""
    if len(per_query) == 0:
        return {"r": float("nan"), "sqrt_r": float("nan")}
    r = float(np.mean(per_query))
    return {"r": r, "sqrt_r": float(np.sqrt(max(r, 0.0)))}


def lds(scores: np.ndarray, losses: np.ndarray) -> np.ndarray:
    """Per-query linear datamodeling score: the Spearman correlation, across subsets, between a
    method's group scores and the negated recorded losses (a higher score should mean a lower loss).

    Both are ``(n_subsets, n_queries)``, rows in the order of the labels config. NaN counts as 0.
    LDS itself is the mean of the result (see :func:`lds_summary`).
    """
    return per_query_spearman(scores, -np.asarray(losses, dtype=np.float64))


def bootstrap_ci(
    per_query: np.ndarray, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over queries (queries resampled with replacement)."""
    per_query = np.asarray(per_query, dtype=np.float64)
    if per_query.size == 0:
        return float("nan"), float("nan")
    if np.all(per_query == per_query[0]):  # no spread: scipy would warn about a degenerate distribution
        return float(per_query[0]), float(per_query[0])
    result = bootstrap(
        (per_query,),
        np.mean,
        n_resamples=n_resamples,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def lds_summary(
    scores: np.ndarray, losses: np.ndarray, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> dict[str, object]:
    """``{"lds", "ci", "per_query"}``: LDS (the mean of :func:`lds` over queries) with its bootstrap interval."""
    per_query = lds(scores, losses)
    return {
        "lds": float(per_query.mean()) if per_query.size else float("nan"),
        "ci": list(bootstrap_ci(per_query, n_resamples, confidence, seed)),
        "per_query": per_query,
    }


def paired_summary(
    per_query: np.ndarray, difference: np.ndarray, n_resamples: int = 1000, seed: int = 0
) -> dict[str, object]:
    """``{"lds", "ci", "difference", "difference_ci"}`` for one method scored on the same queries as a
    reference: its mean per-query LDS and the mean of ``difference`` (per-query, against the reference),
    each with a percentile bootstrap interval. Queries are resampled together for both methods, which
    cancels the per-query noise that two separate intervals carry."""
    return {
        "lds": float(per_query.mean()),
        "ci": list(bootstrap_ci(per_query, n_resamples, seed=seed)),
        "difference": float(difference.mean()),
        "difference_ci": list(bootstrap_ci(difference, n_resamples, seed=seed)),
    }
