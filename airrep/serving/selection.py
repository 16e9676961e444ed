"""Data selection: the pool examples that an attribution method says will teach the target examples.

:func:`select_data` is what ``select_data.py`` runs. A method scores every (target, pool example)
pair: AirRep, its untrained encoder, TF-IDF, BM25, random scores, or a method of :mod:`airrep.evaluation`
that reads the target LM a labels dataset names, fine-tuned on the pool with its SFT settings: the
projected-gradient methods (LESS is ``grad-cos-lora`` under LoRA labels) and the influence functions
``ekfac`` and ``kfac``. A strategy turns those pair scores into one ranked selection of ``budget`` examples:

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
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from airrep.cli import UsageError
from airrep.evaluation.gradient_methods import LORA_GRADIENT_METHODS
from airrep.evaluation.methods import TARGET_LM_METHODS
from airrep.outputs import configs_yaml, write_json, write_parquet, write_text
from configuration_airrep import RecordFormatError, format_text
from modeling_airrep import SELECTION_STRATEGIES as STRATEGIES
from modeling_airrep import Selection, distinct_rows, select_examples, text_digests
from modeling_airrep import check_selection as check_model_selection

logger = logging.getLogger(__name__)

TEXT_METHODS = ("airrep", "base-encoder", "tfidf", "bm25", "random")
METHODS = (*TEXT_METHODS, *TARGET_LM_METHODS)
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
        metadata={"help": "For the methods that read the target LM (gradients, ekfac, kfac): a labels dataset "
                          "(folder or Hub id) whose summary.json names the target LM and the SFT settings; the "
                          "target LM is fine-tuned on the pool with them."},
    )  # fmt: skip
    projection_dim: int = field(
        default=4096, metadata={"help": "Gradient features per example of the gradient methods (LoGra: at most)."}
    )
    batch_size: int = field(default=64, metadata={"help": "Texts per encoder forward."})
    seed: int = field(default=0, metadata={"help": "Seed of method 'random'."})


# ----------------------------------------------------------------------------- strategies


def check_selection(budget: int, n_candidates: int, strategy: str) -> None:
    """An unknown strategy or a budget that does not fit, as a one-line :class:`UsageError`."""
    try:
        check_model_selection(budget, n_candidates, strategy)
    except ValueError as error:
        raise UsageError(str(error)) from None


def select(pair_scores: np.ndarray, budget: int, strategy: str, rows: np.ndarray | None = None) -> Selection:
    """``budget`` columns of ``pair_scores`` (targets x candidates) chosen by ``strategy``.

    The rule is the checkpoint's own (:func:`modeling_airrep.select_examples`), so the Space and this
    command select alike. ``rows`` names the columns (default ``0..n-1``); the selection holds those names.

    Raises:
        UsageError: an unknown strategy, or a budget outside ``[1, n_candidates]``.
    """
    n_targets, n_candidates = pair_scores.shape
    rows = np.arange(n_candidates) if rows is None else np.asarray(rows)
    check_selection(budget, n_candidates, strategy)
    chunk = 65536  # float64 copies of one block of columns at a time
    blocks = ((rows[a : a + chunk], pair_scores[:, a : a + chunk]) for a in range(0, n_candidates, chunk))
    return select_examples(blocks, n_targets, n_candidates, budget, strategy)


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


def open_dataset(source: str, split: str = "train", config: str | None = None, what: str = "pool"):
    """A JSONL file, or one split of a dataset folder or Hub id, as a (memory-mapped) ``datasets.Dataset``."""
    from datasets import load_dataset

    path = Path(source)
    try:
        if path.is_file() and path.suffix in {".jsonl", ".json"}:
            return load_dataset("json", data_files=str(path), split="train")
        return load_dataset(source, config, split=split)
    except (FileNotFoundError, ValueError, OSError) as error:
        raise UsageError(f"{what} {source!r} cannot be read as a JSONL file or a dataset: {error}") from None


def as_records(rows: Iterable[dict]) -> list[dict]:
    """Rows of a table as the records they were written as.

    A table unifies its rows' keys, filling the ones a record lacks with None; without them the record is
    what it was (a JSONL pool may mix schemas).
    """
    return [{k: v for k, v in row.items() if v is not None} for row in rows]


def load_records(source: str, split: str = "train", config: str | None = None, what: str = "pool") -> list[dict]:
    """Records of a JSONL file, or of one split of a dataset folder or Hub id; errors name ``what``."""
    return as_records(open_dataset(source, split, config, what).to_list())


def texts_of(records: Sequence[dict], what: str, start: int = 0) -> list[str]:
    """The text AirRep sees of each record; a record that matches no schema is named (row ``start + i``)."""
    try:
        return [format_text(record, index=start + i) for i, record in enumerate(records)]
    except RecordFormatError as error:
        raise UsageError(f"{what}: {error}") from None


@dataclass
class PoolScan:
    """What one pass over a pool finds: its candidates, the rows of a target task, its fingerprint."""

    candidates: np.ndarray
    task_rows: np.ndarray
    fingerprint: str
    size: int


SCAN_ROWS = 10_000


def scan_pool(pool, what: str, task: str | None = None) -> PoolScan:
    """One pass over ``pool`` (a ``datasets.Dataset``), ``SCAN_ROWS`` records at a time.

    Only 16 bytes a row are kept (the text digests), so a pool of tens of millions of records is
    scanned in bounded memory. Candidates are each distinct text's first row, less the rows of
    ``task`` (the targets, when they are a task of the pool).
    """
    from airrep.labels.corpus import fingerprint

    digests, in_task = [], []

    def records() -> Iterator[dict]:
        for start in range(0, pool.num_rows, SCAN_ROWS):
            batch = as_records(pool.select(range(start, min(start + SCAN_ROWS, pool.num_rows))).to_list())
            digests.append(text_digests(texts_of(batch, what, start)))
            in_task.append(np.array([task is not None and r.get("task") == task for r in batch], dtype=bool))
            yield from batch

    content = fingerprint({"records": records()})
    first = distinct_rows(np.concatenate(digests) if digests else np.zeros(0, "S16"))
    task_mask = np.concatenate(in_task) if in_task else np.zeros(0, dtype=bool)
    return PoolScan(first[~task_mask[first]], np.flatnonzero(task_mask), content, pool.num_rows)


def pair_scores(
    method: str,
    pool_texts: Sequence[str],
    target_texts: Sequence[str],
    model: str | None = None,
    base_encoder: str | None = None,
    seed: int = 0,
    batch_size: int = 64,
    pool_records: Sequence[dict] | None = None,
    target_records: Sequence[dict] | None = None,
    labels: str | None = None,
    projection_dim: int = 4096,
) -> tuple[np.ndarray, str]:
    """``(targets x pool)`` scores of ``method``, and a description of it for the card.

    Args:
        model: The AirRep checkpoint of method ``airrep``.
        pool_records, target_records, labels, projection_dim: What a gradient method needs: the
            records (their prompts and responses), and the labels whose target LM and SFT settings give
            the model whose gradients are taken (:class:`airrep.evaluation.methods.GradientState`).
    """
    from airrep.evaluation.methods import base_normalises, check_checkpoint
    from airrep.evaluation.text_baselines import bm25_scores, tfidf_scores
    from modeling_airrep import AirRepModel

    if method in TARGET_LM_METHODS:
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
    pool_embeddings = encoder.encode(list(pool_texts), batch_size=batch_size, normalize_embeddings=normalize)
    return targets @ pool_embeddings.T, about


def _gradient_scores(method, pool_records, target_records, labels, projection_dim, seed) -> tuple[np.ndarray, str]:
    from airrep.evaluation.methods import GradientState
    from airrep.labels.dataset import SUMMARY_FILE, labels_folder, read_summary
    from airrep.presets import EVAL_PRESETS

    if labels is None:
        raise UsageError(f"method {method!r} needs --labels: the labels dataset whose target LM it takes gradients of")
    folder = labels_folder(labels)
    if not (folder / SUMMARY_FILE).is_file():
        raise UsageError(f"--labels {labels}: no {SUMMARY_FILE} recording the target LM and its SFT settings")
    if projection_dim < 1:
        raise UsageError(f"--projection_dim must be at least 1, got {projection_dim}")
    summary = read_summary(folder)
    if method in LORA_GRADIENT_METHODS and not (summary.get("settings") or {}).get("lora_rank"):
        raise UsageError(f"method {method!r} reads the LoRA adapters, but --labels {labels} was made with full "
                         f"fine-tuning; use {method.removesuffix('-lora')!r}")  # fmt: skip
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
    """Select from ``args.pool`` for ``args.targets`` and write the selection folder; its summary.

    The pool is read a batch at a time and, for method ``airrep`` over an embeddings dataset, scored
    one shard at a time: memory holds the targets, 16 bytes per pool row and the selection.
    """
    if args.method not in METHODS:
        raise UsageError(f"unknown method {args.method!r}; choose from {', '.join(METHODS)}")
    if args.strategy not in STRATEGIES:
        raise UsageError(f"unknown strategy {args.strategy!r}; choose from {', '.join(STRATEGIES)}")
    if args.model is not None and args.method != "airrep":
        raise UsageError(f"--model applies only to method 'airrep', not {args.method!r}")
    if args.labels is not None and args.method not in TARGET_LM_METHODS:
        raise UsageError(f"--labels applies only to the methods that read the target LM "
                         f"({', '.join(TARGET_LM_METHODS)}), not {args.method!r}")  # fmt: skip
    model = args.model  # an embeddings pool supplies its own when none is given
    encoded, pool_source = None, {"source": args.pool, "split": args.split, "config": args.config}
    settings_file = Path(args.pool) / "embeddings.json"
    if settings_file.is_file():  # an embeddings dataset: its vectors, and the records it was made from
        encoded = json.loads(settings_file.read_text())
        if args.method == "airrep" and args.model not in (None, encoded["model"]):
            raise UsageError(f"{args.pool} was encoded by {encoded['model']!r}, not --model {args.model!r}")
        model = model or encoded["model"]
        pool_source = {"source": encoded["dataset"], "split": encoded["split"], "config": encoded["config"]}
    if args.method == "airrep" and model is None:
        raise UsageError("method 'airrep' needs a checkpoint: pass --model FOLDER_OR_ID")
    pool = open_dataset(pool_source["source"], pool_source["split"], pool_source["config"], "pool")
    if encoded is not None and encoded.get("rows", pool.num_rows) != pool.num_rows:
        raise UsageError(f"{args.pool} holds {encoded['rows']} embeddings for a pool of {pool.num_rows} records")
    clash = sorted(set(pool.column_names) & set(ADDED_COLUMNS))
    if clash:
        raise UsageError(f"pool records already have the column(s) {clash} that a selection adds")
    task = args.targets.removeprefix(TASK_PREFIX) if args.targets.startswith(TASK_PREFIX) else None
    scan = scan_pool(pool, f"pool {pool_source['source']}", task)
    if task is not None:
        targets = as_records(pool.select(scan.task_rows).to_list())
    else:
        targets = load_records(args.targets, args.target_split, what="targets")
    if not targets:
        raise UsageError(f"targets {args.targets!r}: no target examples")
    target_texts = texts_of(targets, f"targets {args.targets}")
    candidates = scan.candidates
    budget = parse_budget(args.budget, len(candidates))
    check_selection(budget, len(candidates), args.strategy)

    if encoded is not None and args.method == "airrep":
        blocks, about = _stored_blocks(args.pool, model, target_texts, candidates, args.batch_size)
        chosen = select_examples(blocks, len(targets), len(candidates), budget, args.strategy)
    else:
        records = as_records(pool.select(candidates).to_list())
        scores, about = pair_scores(args.method, texts_of(records, "pool"), target_texts, model, args.base_encoder,
                                    args.seed, args.batch_size, records, targets, args.labels,
                                    args.projection_dim)  # fmt: skip
        chosen = select(scores, budget, args.strategy, rows=candidates)
    chosen_records = as_records(pool.select(chosen.rows).to_list())
    selected = [
        {**record, "score": float(score), "rank": rank, "target": int(target)}
        for rank, (record, score, target) in enumerate(
            zip(chosen_records, chosen.scores, chosen.targets, strict=True), start=1
        )
    ]
    summary = {
        "arguments": {**asdict(args), "model": model},
        "method": about,
        "pool": pool_source,
        "pool_fingerprint": scan.fingerprint,
        "targets_fingerprint": _fingerprint(targets),
        "pool_size": scan.size,
        "distinct_candidates": len(candidates),
        "n_targets": len(targets),
        "budget": budget,
        "pool_rows": chosen.rows.tolist(),
    }
    write_selection(Path(args.output_dir), selected, summary)
    logger.info("selected %d of %d candidates for %d targets with %s (%s) in %s", budget, len(candidates),
                len(targets), args.method, args.strategy, args.output_dir)  # fmt: skip
    return summary


def _stored_blocks(
    folder: str, model: str, target_texts: list[str], candidates: np.ndarray, batch_size: int
) -> tuple[Iterator[tuple[np.ndarray, np.ndarray]], str]:
    """Score blocks of an embeddings dataset's stored vectors, one shard in memory at a time."""
    from airrep.evaluation.methods import check_checkpoint
    from airrep.serving.index import iter_shards
    from modeling_airrep import AirRepModel, score_blocks

    check_checkpoint(model)
    targets = AirRepModel.from_pretrained(model).encode(target_texts, batch_size=batch_size)

    def blocks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for offset, vectors in iter_shards(folder):
            low, high = np.searchsorted(candidates, [offset, offset + len(vectors)])
            for rows, block in score_blocks(targets, vectors, candidates[low:high] - offset):
                yield rows + offset, block

    return blocks(), f"AirRep `{model}` (the stored embeddings of `{folder}`)"


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
