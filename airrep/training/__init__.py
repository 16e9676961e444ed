"""Stage 2, training: AirRep trained on ``train``-mode labels with the sentence-transformers trainer.

- :mod:`~airrep.training.data`: training rows from the labels, the frozen-layer cache and the collator
  that embeds each step's texts once;
- :mod:`~airrep.training.ranking_loss`: the weighted pairwise RankNet loss over group scores;
- :mod:`~airrep.training.lds_evaluator`: validation LDS on held-out splits, during training;
- :mod:`~airrep.training.trainer`: the whole stage, as ``train_airrep.py`` runs it.
"""

from airrep import lazy_exports

_EXPORTS = {
    "AirRepDataCollator": "data",
    "FrozenLayerCache": "data",
    "freeze_lower_layers": "data",
    "sample_rows": "data",
    "set_dropout": "data",
    "AirRepRankingLoss": "ranking_loss",
    "WEIGHTINGS": "ranking_loss",
    "ranknet_loss": "ranking_loss",
    "LDSEvaluator": "lds_evaluator",
    "AirRepArguments": "trainer",
    "AirRepTrainer": "trainer",
    "parse_arguments": "trainer",
    "train_airrep": "trainer",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
