"""A sentence-transformers evaluator that reports LDS on whole held-out splits of a labels dataset."""

from __future__ import annotations

from typing import Any

import numpy as np
from sentence_transformers.base.evaluation.evaluator import BaseEvaluator

from airrep.labels.dataset import LabelsData
from airrep.lds import per_query_spearman
from configuration_airrep import DEFAULT_POOLINGS
from modeling_airrep import group_influence


class LDSEvaluator(BaseEvaluator):
    """LDS (mean over queries of the Spearman correlation between group scores and negated losses) on
    whole splits, with attention and sum pooling.

    By default ``train_airrep.py`` gives it the ``train``-mode splits held out from training
    (validation); the test ``lds`` labels belong to ``eval_lds.py`` alone.
    """

    def __init__(self, data: LabelsData, split_ids: list[int], name: str = "validation", batch_size: int = 64):
        super().__init__()
        if not split_ids:
            raise ValueError("LDSEvaluator needs at least one split")
        self.data, self.split_ids, self.name, self.batch_size = data, split_ids, name, batch_size
        self.primary_metric = "lds_attention"

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        metrics = {f"lds_{p}": float(v.mean()) for p, v in self.per_query(model).items()}
        metrics = self.prefix_name_to_metrics(metrics, self.name)
        self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
        return metrics

    def per_query(self, model) -> dict[str, np.ndarray]:
        """``{pooling: per-query LDS}`` over the queries of every split, in split order.

        ``model`` is anything with ``encode(texts, batch_size=...)``: a SentenceTransformer or an AirRepModel.
        """
        pool_rows = np.unique(np.concatenate([s for i in self.split_ids for s in self.data.splits[i].subsets]))
        position = np.full(len(self.data.pool_texts), -1)
        position[pool_rows] = np.arange(pool_rows.size)
        pool = model.encode([self.data.pool_texts[i] for i in pool_rows], batch_size=self.batch_size)
        per_query = {pooling: [] for pooling in DEFAULT_POOLINGS}
        for split_id in self.split_ids:
            split = self.data.splits[split_id]
            queries = model.encode([self.data.query_texts[i] for i in split.queries], batch_size=self.batch_size)
            subsets = [position[s] for s in split.subsets]
            for pooling in per_query:
                scores = group_influence(queries, pool, subsets, pooling=pooling)
                per_query[pooling].append(per_query_spearman(scores, -split.losses))
        return {p: np.concatenate(v) for p, v in per_query.items()}

    def get_config_dict(self) -> dict[str, Any]:
        return {"splits": self.split_ids}
