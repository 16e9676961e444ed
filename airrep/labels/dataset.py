"""The labels dataset: the one home of its contract (docs/design.md, "The labels dataset").

A labels dataset is a Hub dataset folder (or repo) with three configs, read with
``load_dataset(folder, CONFIG, split="train")``:

- ``pool``: the training examples (``id``, ``text``, their original fields);
- ``queries``: the examples whose losses are recorded (``text``; in ``train`` mode also ``split_id``
  and ``pool_index``);
- ``labels``: one row per subset model, with the columns of :data:`LABEL_FEATURES`.

Optional configs: ``noise`` (subsets retrained with another seed, for the noise ceiling) and
``diverged`` (subset models whose losses are not finite). ``summary.json`` records the mode, the
target LM and the SFT settings, and ``README.md`` is the card. This module writes all of it
(:func:`write_labels_dataset`) and reads and checks it (:func:`load_labels`).
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset, Features, List, Value, load_dataset

from airrep.cli import UsageError
from airrep.lds import ceiling_from_twins
from airrep.outputs import configs_yaml, write_json, write_parquet, write_text
from configuration_airrep import format_text

logger = logging.getLogger(__name__)

MODES = ("train", "lds")
CONFIGS = ("pool", "queries", "labels")
LABEL_FEATURES = Features(
    {
        "pair_id": Value("string"),
        "split_id": Value("int64"),
        "subset": List(Value("int64")),  # rows of `pool`
        "queries": List(Value("int64")),  # rows of `queries`
        "losses": List(Value("float32")),  # one per query: mean cross-entropy of its response tokens
        "seed": Value("int64"),
    }
)
LABEL_COLUMNS = tuple(LABEL_FEATURES)
# A labels dataset made elsewhere may lack the seeds; everything else is needed to read it.
REQUIRED_COLUMNS = tuple(c for c in LABEL_COLUMNS if c != "seed")
SUMMARY_FILE = "summary.json"


def normalise_losses(losses: np.ndarray, clip: float = 10.0) -> np.ndarray:
    """Labels from recorded losses: ``y[k, d] = (mean_d - loss[k, d]) / std_d``, clipped to ``+-clip``.

    ``losses`` is ``(n_subsets, n_queries)``; the mean and (population) standard deviation of each
    query are taken over the subsets that saw it, ignoring NaN. A standard deviation of 0 counts as 1.
    Higher ``y`` means the subset helped the query more. NaN stays NaN.
    """
    losses = np.asarray(losses, dtype=np.float64)
    mean = np.nanmean(losses, axis=0, keepdims=True)
    std = np.nanstd(losses, axis=0, keepdims=True)
    std = np.where((std == 0) | ~np.isfinite(std), 1.0, std)
    return np.clip((mean - losses) / std, -clip, clip)


class LabelsFormatError(UsageError):
    """A labels dataset does not follow the contract (docs/design.md, "The labels dataset")."""


@dataclass
class Split:
    """One cross-validation split: its queries, its subsets and their normalised labels."""

    split_id: int
    queries: np.ndarray  # (n_queries,) rows of the queries config
    subsets: list[np.ndarray]  # K_total arrays of pool rows
    losses: np.ndarray  # (K_total, n_queries) recorded losses, NaN where excluded
    targets: np.ndarray  # (K_total, n_queries) normalised, clipped labels


@dataclass
class LabelsData:
    source: str
    pool_texts: list[str]
    query_texts: list[str]
    splits: dict[int, Split]
    excluded_nan: int


def portable_target_lm(target: str, folder: str | os.PathLike) -> str:
    """How a labels folder records its target LM: relative to the folder when the target sits beside it.

    ``generate_labels.py`` builds or converts its target LM in the labels folder's parent, so
    ``"../name"`` keeps the record valid when that parent is moved or cloned elsewhere. Anything else
    (another folder, a Hub id) is recorded as given, as it was before this form existed.
    """
    path = Path(target)
    if not path.exists():
        return target
    path, folder = path.resolve(), Path(folder).resolve()
    return os.path.relpath(path, folder) if path.is_relative_to(folder.parent) else target


def read_summary(folder: str | os.PathLike) -> dict[str, Any]:
    """A labels folder's ``summary.json`` (empty if absent), its target LM resolved to load from here."""
    file = Path(folder) / SUMMARY_FILE
    summary = json.loads(file.read_text()) if file.exists() else {}
    target = summary.get("target_lm")
    if isinstance(target, str) and target.startswith(("./", "../")):
        summary["target_lm"] = str((Path(folder) / target).resolve())
    return summary


def labels_folder(source: str) -> Path:
    """A local folder for ``source``: itself, or the Hub snapshot of a dataset repo id (offline from the cache)."""
    if Path(source).is_dir():
        return Path(source)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source, repo_type="dataset"))
    except Exception as error:
        raise FileNotFoundError(
            f"labels {source!r}: not a folder, and no dataset repo of that name could be fetched or found in the "
            f"Hub cache ({type(error).__name__}: {error})"
        ) from None


def _load_config(folder: str, config: str, source: str) -> Dataset:
    """One config of the labels in ``folder``; errors name ``source``, as the user gave it."""
    try:
        return load_dataset(folder, config, split="train")
    except ValueError as error:
        if "BuilderConfig" in str(error) or "not found" in str(error).lower():
            raise LabelsFormatError(f"{source}: the labels dataset has no config {config!r} ({error})") from None
        raise
    except FileNotFoundError as error:  # a folder without data files, or one of other files
        raise LabelsFormatError(f"{source}: not a labels dataset ({error})") from None


def load_labels(source: str) -> LabelsData:
    """Read and validate a labels dataset (a folder or a Hub id); NaN losses are excluded with a warning.

    Raises:
        LabelsFormatError: a config or column is missing, an index is out of range, or a split has
            fewer than 2 subsets.
    """
    folder = str(labels_folder(source))
    pool, queries, labels = (_load_config(folder, c, source) for c in CONFIGS)
    for name, table, needed in (
        ("pool", pool, ("text",)),
        ("queries", queries, ("text",)),
        ("labels", labels, REQUIRED_COLUMNS),
    ):
        missing = [c for c in needed if c not in table.column_names]
        if missing:
            raise LabelsFormatError(
                f"{source}: config {name!r} lacks the column(s) {missing}; it has {table.column_names}"
            )
    rows: dict[int, list[dict[str, Any]]] = defaultdict(list)
    excluded = 0
    for row in labels:
        subset, query_rows = np.asarray(row["subset"], dtype=np.int64), np.asarray(row["queries"], dtype=np.int64)
        losses = np.asarray(row["losses"], dtype=np.float64)
        where = f"{source}: labels row {row['pair_id']!r}"
        for what, indices, size in (("subset", subset, pool.num_rows), ("query", query_rows, queries.num_rows)):
            bad = indices[(indices < 0) | (indices >= size)]
            if bad.size:
                raise LabelsFormatError(f"{where}: {what} index {bad[0]} is out of range for {size} rows")
        if losses.shape != query_rows.shape:
            raise LabelsFormatError(f"{where}: {losses.size} losses for {query_rows.size} queries")
        excluded += int((~np.isfinite(losses)).sum())
        rows[int(row["split_id"])].append({"subset": subset, "queries": query_rows, "losses": losses})
    if excluded:
        logger.warning("%s: %d non-finite loss value(s) excluded from the labels", source, excluded)

    splits: dict[int, Split] = {}
    for split_id, members in sorted(rows.items()):
        if len(members) < 2:
            raise LabelsFormatError(
                f"{source}: split {split_id} has {len(members)} subset(s); ranking needs at least 2"
            )
        split_queries = np.unique(np.concatenate([m["queries"] for m in members]))
        column = {q: i for i, q in enumerate(split_queries.tolist())}
        losses = np.full((len(members), split_queries.size), np.nan)
        for k, m in enumerate(members):
            finite = np.isfinite(m["losses"])
            losses[k, [column[q] for q in m["queries"][finite].tolist()]] = m["losses"][finite]
        splits[split_id] = Split(
            split_id, split_queries, [m["subset"] for m in members], losses, normalise_losses(losses)
        )
    return LabelsData(source, pool["text"], queries["text"], splits, excluded)


def lds_split(data: LabelsData) -> Split:
    """The one split of ``lds``-mode labels, the labels an ``eval_lds.py`` report is scored on."""
    if len(data.splits) != 1:
        raise LabelsFormatError(
            f"{data.source} has {len(data.splits)} splits; reports are scored on lds labels (one split)"
        )
    return next(iter(data.splits.values()))


# ----------------------------------------------------------------------------- writing


def records_table(records: Sequence[Mapping[str, Any]], extra: dict[str, list] | None = None) -> Dataset:
    """A ``pool`` or ``queries`` table: ``id``, the formatted ``text``, then the records' own fields."""
    rows = []
    for index, record in enumerate(records):
        row = {"id": str(record.get("id", index)), "text": format_text(record, index=index)}
        row |= {k: v for k, v in record.items() if k not in row}
        rows.append(row)
    table = Dataset.from_list(rows)
    for name, values in (extra or {}).items():
        table = table.add_column(name, values)
    return table


def labels_table(rows: Sequence[Mapping[str, Any]]) -> Dataset:
    """A ``labels`` (or ``noise``, ``diverged``) table from per-subset-model records."""
    return Dataset.from_dict({c: [r[c] for r in rows] for c in LABEL_COLUMNS}, features=LABEL_FEATURES)


def write_labels_dataset(
    folder: Path,
    shards: Sequence[Mapping[str, Any]],
    pool: Sequence[Mapping[str, Any]],
    query_records: Sequence[Mapping[str, Any]],
    query_extra: dict[str, list],
    summary: dict[str, Any],
    describe: Callable[[dict[str, Any], dict[str, str]], str] | None = None,
) -> dict[str, Any]:
    """Write the parquet configs, ``summary.json`` and the card of a labels dataset.

    Args:
        shards: One record per subset model: the :data:`LABEL_COLUMNS`, ``noise`` (a retrained twin)
            and ``seconds`` (its training time).
        summary: What the card and ``summary.json`` record about how the labels were made (mode,
            preset, corpus, target LM, settings, precision, wall time); the counts, the noise ceiling
            and the compute time are added here.
        describe: Writes the card from the complete summary and the configs' files (default :func:`card`).

    Returns:
        The complete summary.
    """
    labels = [s for s in shards if not s["noise"]]
    clean = [s for s in labels if all(np.isfinite(x) for x in s["losses"])]
    diverged = [s for s in labels if s not in clean]
    configs = {
        "pool": write_parquet(records_table(pool), folder, "pool"),
        "queries": write_parquet(records_table(query_records, query_extra), folder, "queries"),
    }
    if clean:  # an empty parquet file cannot be loaded; with no clean labels the config is left out
        configs["labels"] = write_parquet(labels_table(clean), folder, "labels")
    if diverged:
        logger.warning("%d subset model(s) diverged (non-finite losses); kept in config 'diverged'", len(diverged))
        configs["diverged"] = write_parquet(labels_table(diverged), folder, "diverged")
    ceiling = None
    noise_rows = [s for s in shards if s["noise"]]
    if noise_rows:
        configs["noise"] = write_parquet(labels_table(noise_rows), folder, "noise")
        ceiling = ceiling_from_twins(labels, noise_rows)
    summary = {
        "mode": summary["mode"],
        "preset": summary["preset"],
        "pool": len(pool),
        "queries": len(query_records),
        "labels": len(clean),
        "diverged": len(diverged),
        "noise_ceiling": ceiling,
        "compute_seconds": float(sum(s["seconds"] for s in shards)),
        **{k: v for k, v in summary.items() if k not in ("mode", "preset")},
    }
    write_json(folder / SUMMARY_FILE, summary)
    write_text(folder / "README.md", (describe or card)(summary, configs))
    return summary


def card_header(configs: dict[str, str]) -> str:
    """A labels card's YAML front matter: each config's data file, and the tags."""
    return f"""---
{configs_yaml({name: {"train": path} for name, path in configs.items()})}
tags:
- data-attribution
- airrep
- datamodels
---
"""


def card(summary: dict[str, Any], configs: dict[str, str]) -> str:
    s = summary["settings"]
    ceiling = summary["noise_ceiling"]
    ceiling_line = (
        f"r = {ceiling['r']:.3f}, sqrt(r) = {ceiling['sqrt_r']:.3f} (from {ceiling['subsets']} subsets retrained "
        f"with another seed; sqrt(r) bounds the LDS of any method)"
        if ceiling
        else "not measured (run with --noise_ceiling K)"
    )
    if summary["mode"] == "train":
        design = (
            f"{s['n_splits']} cross-validation splits of the pool; each holds out {s['queries_per_split']} dev "
            f"queries and trains {s['subsets_per_split']} subsets of {s['train_subset_size']} drawn from the rest."
        )
    else:
        subsets = f"subsets of {s['lds_subset_size']}" if s.get("lds_subset_size") else "halves"
        design = f"{s['lds_subsets']} random {subsets} of the pool, scored on {s['lds_queries']} held-out test queries."
    warm_start = summary["corpus"].get("warm_start")
    warm_start = f"; warm-started on {warm_start}" if warm_start else ""
    return f"""{card_header(configs)}
# AirRep subset-loss labels ({summary["mode"]} mode, preset {summary["preset"]})

Each row of `labels` is one copy of the target LM fine-tuned on a subset of `pool`; `losses[i]` is
the mean token cross-entropy over the response tokens of `queries[queries[i]]` after that fine-tuning.

- Design: {design}
- Corpus: {summary["corpus"].get("name")} (`{summary["corpus"].get("source")}`), fingerprint
  `{summary["corpus"].get("fingerprint")}`; pool {summary["pool"]} examples, {summary["queries"]} queries.
- Target LM: `{summary["target_lm"]}`, {summary["target_lm_parameters"]:,} parameters{warm_start}.
- SFT: AdamW, learning rate {s["learning_rate"]} with linear decay, batch {s["batch_size"]}, {s["epochs"]} epoch(s),
  weight decay {s["weight_decay"]}, response-only loss, {summary["precision"]}; plan seed {s["seed"]},
  corpus seed {s["corpus_seed"]}. Trained: {summary.get("trained_parameters", "every weight of the target LM")}.
- Subset models: {summary["labels"]} in `labels`; {summary["diverged"]} diverged (non-finite loss), kept
  apart in config `diverged` and excluded from `labels`.
- Noise ceiling: {ceiling_line}.
- Compute: {summary["compute_seconds"]:.1f} s of subset training in total;
  last run {summary["last_run_wall_seconds"]:.1f} s wall.

```python
from datasets import load_dataset

labels = load_dataset("<this folder or repo id>", "labels", split="train")
pool = load_dataset("<this folder or repo id>", "pool", split="train")
```
"""
