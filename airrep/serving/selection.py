"""Data selection: the pool examples that an attribution method says will teach the target examples.

:func:`select_data` is what ``select_data.py`` runs. A method scores every (target, pool example)
pair: AirRep, its untrained encoder, TF-IDF, BM25, random scores, or a gradient method of
:mod:`airrep.evaluation` (on the target LM a labels dataset names, fine-tuned on the pool with its
SFT settings). A strategy turns those pair scores into one ranked selection of ``budget`` examples:

- ``round-robin`` (the authors' rule): the targets take turns, each taking its best example not yet
  taken;
- ``max``, ``mean``, ``sum``: each candidate's best, mean or total score over the targets;
- ``attention``: each candidate's attention-pooled score against the whole target set
  (``modeling_airrep.group_influence`` with the candidate as the query and the targets as the group).

Ties go to the earlier pool row, so a selection is deterministic. A text that occurs several times in
the pool is a candidate once (its first row). The result is a Hub dataset folder of the selected
records, their original fields plus ``score``, ``rank`` and ``target`` (the row of the target they
were chosen for), with ``selection.json`` and a card recording how it was made.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from airrep.cli import UsageError
from airrep.outputs import configs_yaml, write_json, write_parquet, write_text
from configuration_airrep import RecordFormatError, format_text
from modeling_airrep import group_influence

logger = logging.getLogger(__name__)

TEXT_METHODS = ("airrep", "base-encoder", "tfidf", "bm25", "random")
GRADIENT_METHODS = ("grad-dot", "grad-cos", "tracin", "logra")
METHODS = (*TEXT_METHODS, *GRADIENT_METHODS)
STRATEGIES = ("round-robin", "max", "mean", "sum", "attention")
SELECTION_FILE = "selection.json"
ADDED_COLUMNS = ("score", "rank", "target")
TASK_PREFIX = "task:"


@dataclass
class SelectArguments:
    pool: str = field(
        metadata={"help": "The pool to select from: a dataset folder or Hub id, a JSONL file, or an embeddings "
                          "dataset folder from `python -m airrep.serving.embeddings` (for pools that do not fit "
                          "in memory as text)."},
    )  # fmt: skip
    targets: str = field(
        metadata={"help": "The examples to select for: a dataset folder or Hub id, a JSONL file, or task:NAME "
                          "for the pool's records whose `task` is NAME (those records are then not candidates)."},
    )  # fmt: skip
    output_dir: str = field(metadata={"help": "The selection dataset folder to write."})
    method: str = field(default="airrep", metadata={"help": f"How pairs are scored: {', '.join(METHODS)}."})
    model: str | None = field(
        default=None,
        metadata={"help": "AirRep checkpoint folder or Hub id for method 'airrep' (default: the model an "
                          "embeddings pool was encoded with)."},
    )  # fmt: skip
    budget: str = field(
        default="0.1", metadata={"help": "Examples to select: a count (100) or a fraction of the pool (0.1)."}
    )
    strategy: str = field(
        default="round-robin", metadata={"help": f"How pair scores become one selection: {', '.join(STRATEGIES)}."}
    )
    split: str = field(default="train", metadata={"help": "Split of a dataset pool."})
    config: str | None = field(default=None, metadata={"help": "Config of a dataset pool, such as a labels' 'pool'."})
    target_split: str = field(default="train", metadata={"help": "Split of a dataset of targets."})
    base_encoder: str | None = field(
        default=None, metadata={"help": "Encoder of method 'base-encoder' (default: the bundled all-MiniLM-L6-v2)."}
    )
    labels: str | None = field(
        default=None,
        metadata={"help": "For the gradient methods: a labels dataset (folder or Hub id) whose summary.json names "
                          "the target LM and the SFT settings; the target LM is fine-tuned on the pool with them."},
    )  # fmt: skip
    projection_dim: int = field(
        default=4096, metadata={"help": "Gradient features per example of the gradient methods (LoGra: at most)."}
    )
    batch_size: int = field(default=64, metadata={"help": "Texts per encoder forward."})
    seed: int = field(default=0, metadata={"help": "Seed of method 'random'."})


@dataclass
class Selection:
    """Pool rows in selection order, each with its score and the target (row) it was chosen for."""

    rows: np.ndarray
    scores: np.ndarray
    targets: np.ndarray


# ----------------------------------------------------------------------------- strategies


def _best_first(scores: np.ndarray) -> np.ndarray:
    """Column order by descending score, ties to the lower column."""
    return np.lexsort((np.arange(scores.size), -scores))


def select(pair_scores: np.ndarray, budget: int, strategy: str) -> Selection:
    """``budget`` columns of ``pair_scores`` (targets x candidates) chosen by ``strategy``.

    Raises:
        UsageError: an unknown strategy, or a budget outside ``[1, n_candidates]``.
    """
    if strategy not in STRATEGIES:
        raise UsageError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
    n_targets, n_candidates = pair_scores.shape
    check_budget(budget, n_candidates)
    if strategy == "round-robin":
        orders = [_best_first(row) for row in pair_scores]
        position = [0] * n_targets
        taken = np.zeros(n_candidates, dtype=bool)
        rows, targets = [], []
        while len(rows) < budget:
            for target in range(n_targets):
                order = orders[target]
                while position[target] < n_candidates and taken[order[position[target]]]:
                    position[target] += 1
                if len(rows) == budget or position[target] == n_candidates:
                    continue
                candidate = order[position[target]]
                taken[candidate] = True
                rows.append(candidate)
                targets.append(target)
        rows, targets = np.asarray(rows), np.asarray(targets)
        return Selection(rows, pair_scores[targets, rows], targets)
    if strategy == "attention":
        # Candidate i as the query, the targets as one group: q_i . e_j = pair_scores[j, i].
        pooled = group_influence(pair_scores.T, np.eye(n_targets, dtype=pair_scores.dtype), [np.arange(n_targets)])
        combined = np.asarray(pooled, dtype=np.float64)[0]
    else:
        combined = {"max": np.max, "mean": np.mean, "sum": np.sum}[strategy](pair_scores.astype(np.float64), axis=0)
    rows = _best_first(combined)[:budget]
    return Selection(rows, combined[rows], np.argmax(pair_scores[:, rows], axis=0))


def check_budget(budget: int, n_candidates: int) -> None:
    """A selection takes at least one example and at most every distinct one."""
    if not 1 <= budget <= n_candidates:
        raise UsageError(f"a budget of {budget} examples does not fit a pool of {n_candidates} distinct examples")


def parse_budget(budget: str | int | float, n_pool: int) -> int:
    """A count (``"100"``) or a fraction of the pool (``"0.1"``) as a number of examples."""
    try:
        value = float(budget)
    except ValueError:
        raise UsageError(f"--budget must be a count or a fraction of the pool, got {budget!r}") from None
    if "." in str(budget) or isinstance(budget, float):
        if not 0 < value <= 1:
            raise UsageError(f"--budget as a fraction must be in (0, 1], got {budget}")
        return max(1, round(value * n_pool))
    return int(value)


# ----------------------------------------------------------------------------- inputs


def load_records(source: str, split: str = "train", config: str | None = None, what: str = "pool") -> list[dict]:
    """Records of a JSONL file, or of one split of a dataset folder or Hub id; errors name ``what``."""
    from datasets import load_dataset

    path = Path(source)
    try:
        if path.is_file() and path.suffix in {".jsonl", ".json"}:
            table = load_dataset("json", data_files=str(path), split="train")
        else:
            table = load_dataset(source, config, split=split)
    except (FileNotFoundError, ValueError, OSError) as error:
        raise UsageError(f"{what} {source!r} cannot be read as a JSONL file or a dataset: {error}") from None
    # A table unifies its rows' keys, filling the ones a record lacks with None; the record is what it
    # was written as without them (a JSONL pool may mix schemas).
    return [{k: v for k, v in record.items() if v is not None} for record in table.to_list()]


def texts_of(records: Sequence[dict], what: str) -> list[str]:
    """The text AirRep sees of each record; a record that matches no schema is named with ``what``."""
    try:
        return [format_text(record, index=i) for i, record in enumerate(records)]
    except RecordFormatError as error:
        raise UsageError(f"{what}: {error}") from None


def distinct(texts: Sequence[str]) -> np.ndarray:
    """Rows of the first occurrence of each text, in pool order."""
    first: dict[str, int] = {}
    for row, text in enumerate(texts):
        first.setdefault(text, row)
    return np.fromiter(first.values(), dtype=np.int64, count=len(first))


def pair_scores(
    method: str,
    pool_texts: Sequence[str],
    target_texts: Sequence[str],
    model: str | None = None,
    base_encoder: str | None = None,
    seed: int = 0,
    batch_size: int = 64,
    pool_embeddings: np.ndarray | None = None,
    pool_records: Sequence[dict] | None = None,
    target_records: Sequence[dict] | None = None,
    labels: str | None = None,
    projection_dim: int = 4096,
) -> tuple[np.ndarray, str]:
    """``(targets x pool)`` scores of ``method``, and a description of it for the card.

    Args:
        model: The AirRep checkpoint of method ``airrep``.
        pool_embeddings: The pool's embeddings by ``model``, when they are stored (an embeddings dataset).
        pool_records, target_records, labels, projection_dim: What a gradient method needs: the
            records (their prompts and responses), and the labels whose target LM and SFT settings give
            the model whose gradients are taken (:class:`airrep.evaluation.methods.GradientState`).
    """
    from airrep.evaluation.methods import base_normalises, check_checkpoint
    from airrep.evaluation.text_baselines import bm25_scores, tfidf_scores
    from modeling_airrep import AirRepModel

    if method in GRADIENT_METHODS:
        return _gradient_scores(method, pool_records, target_records, labels, projection_dim, seed)
    if method == "random":
        scores = np.random.default_rng(seed).random(len(pool_texts))
        return np.broadcast_to(scores, (len(target_texts), len(pool_texts))), f"random (seed {seed})"
    if method in ("tfidf", "bm25"):
        function = {"tfidf": tfidf_scores, "bm25": bm25_scores}[method]
        return function(pool_texts, target_texts).scores, method
    if method == "airrep":
        check_checkpoint(model)
        encoder, normalize, about = AirRepModel.from_pretrained(model), False, f"AirRep `{model}`"
    else:
        encoder = AirRepModel.from_encoder(base_encoder)
        normalize = base_normalises(base_encoder)
        about = f"untrained `{base_encoder or 'all-MiniLM-L6-v2'}`" + (", L2-normalised" if normalize else "")
    targets = encoder.encode(list(target_texts), batch_size=batch_size, normalize_embeddings=normalize)
    if pool_embeddings is None:
        pool_embeddings = encoder.encode(list(pool_texts), batch_size=batch_size, normalize_embeddings=normalize)
    scores = np.empty((len(targets), len(pool_embeddings)), dtype=np.float32)
    chunk = 65536  # a float16 pool is converted a chunk at a time: memory stays bounded
    for start in range(0, len(pool_embeddings), chunk):
        scores[:, start : start + chunk] = targets @ np.asarray(pool_embeddings[start : start + chunk], np.float32).T
    return scores, about


def _gradient_scores(method, pool_records, target_records, labels, projection_dim, seed) -> tuple[np.ndarray, str]:
    from airrep.evaluation.methods import GradientState
    from airrep.labels.dataset import SUMMARY_FILE, labels_folder
    from airrep.presets import EVAL_PRESETS

    if labels is None:
        raise UsageError(f"method {method!r} needs --labels: the labels dataset whose target LM it takes gradients of")
    summary_file = labels_folder(labels) / SUMMARY_FILE
    if not summary_file.is_file():
        raise UsageError(f"--labels {labels}: no {SUMMARY_FILE} recording the target LM and its SFT settings")
    if projection_dim < 1:
        raise UsageError(f"--projection_dim must be at least 1, got {projection_dim}")
    summary = json.loads(summary_file.read_text())
    preset = replace(EVAL_PRESETS["demo"], projection_dim=projection_dim, seed=seed)
    state = GradientState(summary.get("target_lm"), summary.get("settings"), pool_records, target_records, preset,
                          [projection_dim], source=labels)  # fmt: skip
    features = state.features(method, projection_dim)
    return features.pair_scores(), features.description


def _fingerprint(records: Sequence[dict]) -> str:
    from airrep.labels.corpus import fingerprint

    return fingerprint({"records": list(records)})


# ----------------------------------------------------------------------------- the run


def select_data(args: SelectArguments) -> dict[str, Any]:
    """Select from ``args.pool`` for ``args.targets`` and write the selection folder; its summary."""
    if args.method not in METHODS:
        raise UsageError(f"unknown method {args.method!r}; choose from {', '.join(METHODS)}")
    if args.strategy not in STRATEGIES:
        raise UsageError(f"unknown strategy {args.strategy!r}; choose from {', '.join(STRATEGIES)}")
    if args.model is not None and args.method != "airrep":
        raise UsageError(f"--model applies only to method 'airrep', not {args.method!r}")
    model = args.model  # an embeddings pool supplies its own when none is given
    pool_embeddings, pool_source = None, {"source": args.pool, "split": args.split, "config": args.config}
    settings_file = Path(args.pool) / "embeddings.json"
    if settings_file.is_file():  # an embeddings dataset: its vectors, and the records it was made from
        from airrep.serving.index import EmbeddingIndex

        encoded = json.loads(settings_file.read_text())
        if args.method == "airrep" and args.model not in (None, encoded["model"]):
            raise UsageError(f"{args.pool} was encoded by {encoded['model']!r}, not --model {args.model!r}")
        model = model or encoded["model"]
        pool_source = {"source": encoded["dataset"], "split": encoded["split"], "config": encoded["config"]}
        if args.method == "airrep":
            pool_embeddings = EmbeddingIndex.from_folder(args.pool).embeddings
    if args.method == "airrep" and model is None:
        raise UsageError("method 'airrep' needs a checkpoint: pass --model FOLDER_OR_ID")
    pool = load_records(pool_source["source"], pool_source["split"], pool_source["config"], "pool")
    if pool_embeddings is not None and len(pool_embeddings) != len(pool):
        raise UsageError(f"{args.pool} holds {len(pool_embeddings)} embeddings for a pool of {len(pool)} records")
    pool_texts = texts_of(pool, f"pool {pool_source['source']}")
    candidates = distinct(pool_texts)
    if args.targets.startswith(TASK_PREFIX):
        task = args.targets.removeprefix(TASK_PREFIX)
        in_task = np.array([r.get("task") == task for r in pool])
        targets = [r for r, hit in zip(pool, in_task, strict=True) if hit]
        candidates = candidates[~in_task[candidates]]
    else:
        targets = load_records(args.targets, args.target_split, what="targets")
    if not targets:
        raise UsageError(f"targets {args.targets!r}: no target examples")
    target_texts = texts_of(targets, f"targets {args.targets}")
    clash = sorted({c for r in pool for c in ADDED_COLUMNS if c in r})
    if clash:
        raise UsageError(f"pool records already have the column(s) {clash} that a selection adds")
    budget = parse_budget(args.budget, len(candidates))
    check_budget(budget, len(candidates))

    embeddings = None if pool_embeddings is None else pool_embeddings[candidates]
    if args.labels is not None and args.method not in GRADIENT_METHODS:
        raise UsageError(f"--labels applies only to the gradient methods {GRADIENT_METHODS}, not {args.method!r}")
    scores, about = pair_scores(args.method, [pool_texts[i] for i in candidates], target_texts, model,
                                args.base_encoder, args.seed, args.batch_size, embeddings,
                                [pool[i] for i in candidates], targets, args.labels,
                                args.projection_dim)  # fmt: skip
    chosen = select(scores, budget, args.strategy)
    rows = candidates[chosen.rows]
    selected = [
        {**pool[row], "score": float(score), "rank": rank, "target": int(target)}
        for rank, (row, score, target) in enumerate(zip(rows, chosen.scores, chosen.targets, strict=True), start=1)
    ]
    summary = {
        "arguments": {**asdict(args), "model": model},
        "method": about,
        "pool": pool_source,
        "pool_fingerprint": _fingerprint(pool),
        "targets_fingerprint": _fingerprint(targets),
        "pool_size": len(pool),
        "distinct_candidates": len(candidates),
        "n_targets": len(targets),
        "budget": budget,
        "pool_rows": rows.tolist(),
    }
    write_selection(Path(args.output_dir), selected, summary)
    logger.info("selected %d of %d candidates for %d targets with %s (%s) in %s", budget, len(candidates),
                len(targets), args.method, args.strategy, args.output_dir)  # fmt: skip
    return summary


def write_selection(folder: Path, selected: list[dict], summary: dict[str, Any]) -> None:
    """The selection as a Hub dataset folder: one parquet file, ``selection.json`` and a card."""
    from datasets import Dataset

    path = write_parquet(Dataset.from_list(selected), folder, "selection")
    write_json(folder / SELECTION_FILE, summary)
    a = summary["arguments"]
    write_text(
        folder / "README.md",
        f"""---
{configs_yaml({"default": {"train": path}})}
tags:
- airrep
- data-selection
---

# Data selected by {a["method"]} ({a["strategy"]})

{summary["budget"]} of the {summary["distinct_candidates"]} distinct examples of the pool
`{summary["pool"]["source"]}` (split `{summary["pool"]["split"]}`, fingerprint `{summary["pool_fingerprint"]}`),
selected for {summary["n_targets"]} target examples (`{a["targets"]}`, fingerprint `{summary["targets_fingerprint"]}`).

- Method: {summary["method"]}.
- Strategy: `{a["strategy"]}`; budget `{a["budget"]}`.
- Columns: the pool records' own fields, plus `score` (the strategy's score), `rank` (1 = chosen first)
  and `target` (the row of the target the example was chosen for: its turn in `round-robin`, its
  best-scoring target otherwise).

```python
from datasets import load_dataset
selection = load_dataset("<this folder or repo id>", split="train")
```
""",
    )
