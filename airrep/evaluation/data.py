"""The ``lds``-mode labels an evaluation scores methods on, with the records behind their texts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from datasets import load_dataset

from airrep.labels.dataset import LabelsData, LabelsFormatError, labels_folder, load_labels, read_summary
from airrep.lds import ceiling_from_twins


@dataclass
class EvalData:
    source: str
    folder: Path  # the labels' local folder (a Hub snapshot for a repo id)
    labels: LabelsData
    subsets: list[np.ndarray]
    losses: np.ndarray  # (n_subsets, n_queries)
    pool_records: list[dict]
    query_records: list[dict]
    summary: dict[str, Any]
    fingerprint: str

    @property
    def pool_texts(self) -> list[str]:
        return self.labels.pool_texts

    @property
    def query_texts(self) -> list[str]:
        return [self.labels.query_texts[i] for i in self.labels.splits[0].queries]


def load_eval_data(source: str) -> EvalData:
    """Read ``lds``-mode labels (a folder or a Hub id) for evaluation; other modes are an error."""
    folder = labels_folder(source)
    summary = read_summary(folder)
    data = load_labels(str(folder))
    queries = load_dataset(str(folder), "queries", split="train")
    mode = summary.get("mode") or ("train" if len(data.splits) > 1 or "pool_index" in queries.column_names else "lds")
    if mode != "lds":
        raise LabelsFormatError(
            f"{source} holds {mode!r}-mode labels; LDS is measured on 'lds'-mode labels (random halves of the pool "
            "scored on held-out test queries). Make them with: python generate_labels.py --mode lds ..."
        )
    (split,) = data.splits.values()
    pool = load_dataset(str(folder), "pool", split="train")
    labels_table = load_dataset(str(folder), "labels", split="train")
    # Rows keep their formatted `text` beside the original fields; split_record reads the fields first
    # and falls back to `text` only for records that were plain text.
    pool_records = pool.to_list()
    query_records = [queries[int(i)] for i in split.queries]
    return EvalData(
        source, folder, data, split.subsets, split.losses, pool_records, query_records, summary,
        labels_table._fingerprint,
    )  # fmt: skip


def labels_noise_ceiling(data: EvalData) -> dict[str, float] | None:
    """From the labels' summary, or recomputed from their ``noise`` config (same subsets, another seed)."""
    ceiling = data.summary.get("noise_ceiling")
    if ceiling:
        return {"r": ceiling["r"], "sqrt_r": ceiling["sqrt_r"], "subsets": ceiling.get("subsets")}
    try:
        noise = load_dataset(str(data.folder), "noise", split="train")
    except ValueError:
        return None
    labels = load_dataset(str(data.folder), "labels", split="train")
    ceiling = ceiling_from_twins(labels, noise)
    return None if ceiling is None or np.isnan(ceiling["r"]) else ceiling
