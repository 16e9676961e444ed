"""LDS (linear datamodeling score) as an ``evaluate`` metric: ``evaluate.load("metrics/lds")``.

A thin wrapper: the computation is :func:`airrep.lds.lds_summary`, the one implementation that
``eval_lds.py`` also uses, so run it from the repository root (or with the repository on
``PYTHONPATH``).
"""

import datasets
import evaluate
import numpy as np

from airrep.lds import lds_summary

_DESCRIPTION = """\
The linear datamodeling score (Park et al., 2023) of a training-data-attribution method. For each
query, the Spearman correlation across training subsets between the method's predicted group
influence and the negated loss of a model trained on that subset; a NaN correlation counts as 0.
LDS is the mean over queries, returned with a percentile bootstrap interval over queries.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`): one row per query: the method's group score of every subset.
    references (`list` of `list` of `float`): one row per query: the recorded loss after training on each
        subset, in the same subset order.
    n_resamples (`int`, defaults to 1000): bootstrap resamples.
    confidence (`float`, defaults to 0.95): confidence level of the interval.
    seed (`int`, defaults to 0): seed of the bootstrap.
Returns:
    lds (`float`): mean over queries of the per-query Spearman correlation.
    ci_low, ci_high (`float`): the bootstrap interval of `lds`.
Examples:
    >>> lds = evaluate.load("metrics/lds")
    >>> lds.compute(predictions=[[3.0, 2.0, 1.0]], references=[[0.1, 0.2, 0.3]])["lds"]
    1.0
"""

_CITATION = """\
@inproceedings{park2023trak,
  title={TRAK: Attributing Model Behavior at Scale},
  author={Park, Sung Min and Georgiev, Kristian and Ilyas, Andrew and Leclerc, Guillaume and Madry, Aleksander},
  booktitle={ICML},
  year={2023}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Lds(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float64")),
                    "references": datasets.Sequence(datasets.Value("float64")),
                }
            ),
        )

    def _compute(self, predictions, references, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0):
        # One row per query here; airrep.lds works on (subsets, queries) matrices.
        if len({len(row) for row in predictions} | {len(row) for row in references}) > 1:
            raise ValueError("every query needs one prediction and one reference per subset, in the same order")
        summary = lds_summary(
            np.asarray(predictions, dtype=np.float64).T,
            np.asarray(references, dtype=np.float64).T,
            n_resamples=n_resamples,
            confidence=confidence,
            seed=seed,
        )
        low, high = summary["ci"]
        return {"lds": summary["lds"], "ci_low": low, "ci_high": high}
