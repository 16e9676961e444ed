"""From a ``train``-mode labels dataset to training rows, and the collator that embeds each step's texts once."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from datasets import Dataset

from airrep.labels.dataset import LabelsData

logger = logging.getLogger(__name__)


def sample_rows(
    data: LabelsData, split_ids: list[int], queries_per_row: int, subsets_per_row: int, n_rows: int, seed: int
) -> Dataset:
    """Training rows: each is one split with R of its queries and K of its subsets.

    As in the reference, the least-seen queries and subsets of a split are taken first (ties broken
    at random), so every query and subset is used about equally often.
    """
    if not split_ids:
        raise ValueError("no training splits left: lower --validation_splits")
    rng = np.random.default_rng(seed)
    seen_queries = {s: np.zeros(data.splits[s].queries.size) for s in split_ids}
    seen_subsets = {s: np.zeros(len(data.splits[s].subsets)) for s in split_ids}
    out: dict[str, list] = {"split_id": [], "query_columns": [], "subset_rows": []}
    order: list[int] = []
    while len(order) < n_rows:  # every split once per cycle, in a fresh random order
        order += rng.permutation(split_ids).tolist()
    for split in order[:n_rows]:
        q_order = np.lexsort((rng.random(seen_queries[split].size), seen_queries[split]))[:queries_per_row]
        k_order = np.lexsort((rng.random(seen_subsets[split].size), seen_subsets[split]))[:subsets_per_row]
        seen_queries[split][q_order] += 1
        seen_subsets[split][k_order] += 1
        out["split_id"].append(split)
        out["query_columns"].append(np.sort(q_order).tolist())
        out["subset_rows"].append(np.sort(k_order).tolist())
    return Dataset.from_dict(out)


class FrozenLayerCache:
    """The hidden states entering encoder layer ``layers`` for every pool and query text of a labels
    dataset, computed once: training the layers above then never runs the frozen ones again.

    The frozen part runs in eval mode (no dropout), so each text's cached states are exactly what
    those layers give it; [`AirRepModel`]'s ``forward(layer_inputs=...)`` continues from there.
    """

    def __init__(self, model, data: LabelsData, layers: int, batch_size: int = 64) -> None:
        airrep = model[0].auto_model
        if not 0 < layers <= airrep.config.num_hidden_layers:
            raise ValueError(f"frozen layers must be between 1 and {airrep.config.num_hidden_layers}, got {layers}")
        self.layers = layers
        self.states: dict[tuple[str, int], torch.Tensor] = {}
        keyed = [(("q", i), t) for i, t in enumerate(data.query_texts)] + [
            (("p", i), t) for i, t in enumerate(data.pool_texts)
        ]
        keyed.sort(key=lambda item: -len(item[1]))  # similar lengths per batch: little padding
        was_training = airrep.training
        airrep.eval()
        try:
            with torch.no_grad():
                for start in range(0, len(keyed), batch_size):
                    chunk = keyed[start : start + batch_size]
                    features = model.preprocess([text for _, text in chunk])
                    names = ("input_ids", "attention_mask", "token_type_ids")
                    inputs = {k: v.to(airrep.device) for k, v in features.items() if k in names}
                    hidden = airrep.bert(**inputs, output_hidden_states=True).hidden_states[layers]
                    for row, (key, _) in enumerate(chunk):
                        length = int(inputs["attention_mask"][row].sum())
                        self.states[key] = hidden[row, :length].cpu().clone()
        finally:
            airrep.train(was_training)

    def batch(self, keys: list[tuple[str, int]]) -> dict[str, torch.Tensor]:
        """Right-padded ``layer_inputs`` and ``attention_mask`` for the texts named by ``keys``."""
        rows = [self.states[key] for key in keys]
        width = max(r.shape[0] for r in rows)
        inputs = torch.zeros(len(rows), width, rows[0].shape[1], dtype=rows[0].dtype)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            inputs[i, : r.shape[0]] = r
            mask[i, : r.shape[0]] = 1
        return {"layer_inputs": inputs, "attention_mask": mask}


def _longest_first(features: dict[str, Any], positions: list[int]) -> tuple[dict[str, Any], list[int]]:
    """Reorder a padded column longest text first (ties keep their order) and remap ``positions``."""
    lengths = features["attention_mask"].sum(dim=1)
    order = torch.argsort(lengths, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel())
    n = order.numel()
    sorted_features = {}
    for name, value in features.items():
        if not isinstance(value, torch.Tensor):  # per-column metadata, such as sentence-transformers' "modality"
            sorted_features[name] = value
        elif value.dim() > 0 and value.shape[0] == n:
            sorted_features[name] = value[order]
        else:
            raise ValueError(f"cannot reorder the column's field {name!r}: expected one row per text ({n})")
    return sorted_features, rank[torch.tensor(positions, dtype=torch.long)].tolist()


def set_dropout(airrep: torch.nn.Module, p: float) -> None:
    """Give every dropout of ``airrep`` (an AirRepModel) probability ``p``, and record it in its config.

    BERT's modules read their rate when they are built, so changing the config alone would not do.
    """
    if not 0 <= p < 1:
        raise ValueError(f"dropout must be in [0, 1), got {p}")
    for module in airrep.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = p
    airrep.config.hidden_dropout_prob = airrep.config.attention_probs_dropout_prob = p


def freeze_lower_layers(model, data: LabelsData, layers: int) -> FrozenLayerCache:
    """Freeze the embeddings and the lower ``layers`` encoder layers of ``model`` (a SentenceTransformer
    around an AirRep), record that in its config, and cache their output for every text of ``data``."""
    airrep = model[0].auto_model
    airrep.config.frozen_layers = layers
    for module in (airrep.bert.embeddings, *airrep.bert.encoder.layer[:layers]):
        module.requires_grad_(False)
    return FrozenLayerCache(model, data, layers)


class AirRepDataCollator:
    """Tokenizes the union of a step's texts once: a pool example in several subsets is encoded once.

    Produces one text column (``sentence_0_*``) and the label ``{"queries", "members", "targets"}``
    that [`AirRepRankingLoss`] reads. One row (one split) per step. With a [`FrozenLayerCache`], the
    column holds the cached ``layer_inputs`` instead of token ids.

    The column is ordered by length, longest first. GradCache embeds it in mini-batches of
    consecutive texts and trims each mini-batch's trailing padding, so grouping similar lengths cuts
    the tokens a demo step computes by 1.66x (in the order the subsets list them, 42% were padding).
    The label's indices point into the sorted column, so the loss does not depend on the order.
    """

    valid_label_columns: tuple[str, ...] = ()

    def __init__(
        self,
        preprocess,
        data: LabelsData,
        union: bool = True,
        cache: FrozenLayerCache | None = None,
        sort_by_length: bool = True,
    ) -> None:
        self.preprocess = preprocess
        self.data = data
        self.union = union
        self.cache = cache
        self.sort_by_length = sort_by_length

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        if len(rows) != 1:
            raise ValueError(f"AirRep trains on one split per step; set the batch size to 1 (got {len(rows)} rows)")
        row = rows[0]
        split = self.data.splits[row["split_id"]]
        query_rows = split.queries[row["query_columns"]]
        subsets = [split.subsets[k] for k in row["subset_rows"]]
        keys = [("q", int(q)) for q in query_rows] + [("p", int(p)) for s in subsets for p in s]
        if self.union:
            index: dict[tuple[str, int], int] = {}
            for key in keys:
                index.setdefault(key, len(index))
            order = list(index)
            positions = [index[key] for key in keys]
        else:
            order, positions = keys, list(range(len(keys)))
        if self.cache is not None:
            features = self.cache.batch(order)
        else:
            texts = [self.data.query_texts[i] if kind == "q" else self.data.pool_texts[i] for kind, i in order]
            features = self.preprocess(texts)
        if self.sort_by_length:
            features, positions = _longest_first(features, positions)
        n_q = len(query_rows)
        width = max(len(s) for s in subsets)
        members = torch.full((len(subsets), width), -1, dtype=torch.long)  # -1 pads unequal subsets
        start = n_q
        for k, subset in enumerate(subsets):
            members[k, : len(subset)] = torch.tensor(positions[start : start + len(subset)])
            start += len(subset)
        targets = torch.tensor(split.targets[np.ix_(row["subset_rows"], row["query_columns"])].T, dtype=torch.float32)
        batch = {f"sentence_0_{key}": value for key, value in features.items()}
        batch["label"] = {"queries": torch.tensor(positions[:n_q]), "members": members, "targets": targets}
        return batch
