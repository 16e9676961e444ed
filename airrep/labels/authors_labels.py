"""Labels in the AirRep authors' formats (github ``sunnweiwei/AirRep``), as this project's labels datasets.

Two formats:

- **An LDS benchmark folder** (their public test sets, ``sunweiwei/airrep-test``, one folder per
  benchmark): ``train.jsonl`` (the pool's records), ``test.jsonl`` (the test queries' records) and
  ``lds.jsonl``, one line per subset model, ``{"train_subset": [rows of train.jsonl], "test_loss":
  [one loss per row of test.jsonl]}``. It becomes an ``lds``-mode labels dataset that ``eval_lds.py``
  scores.
- **Training labels**: their ``train_index.jsonl`` (lines ``{"id": "0-0", "select": [rows],
  "dev": [rows], "dev_id": 0}``, rows of the data the pairs were sampled from) and one
  ``loss-<id>.json`` per trained pair (``{"pair_id", "dev_id", "losses": [one per dev row],
  "mean_loss"}``). With that data they become a ``train``-mode labels dataset that
  ``train_airrep.py`` trains on: each ``dev_id`` is a split, its dev rows are its queries.

Every row index and every loss count is checked; a mismatch is an error naming the file and line.
Seeds are not in the authors' files and are recorded as -1.

    python -m airrep.convert labels airrep-test/flan out/authors/flan-lds
    python -m airrep.convert labels data/flan out/authors/flan-train --data flan.jsonl --loss_dir out/flan_sft
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from airrep.cli import UsageError
from airrep.labels.corpus import fingerprint
from airrep.labels.dataset import card_header, write_labels_dataset

logger = logging.getLogger(__name__)

UNKNOWN_SEED = -1


def read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """``(line number, value)`` of each non-empty line; a line that is not JSON is named."""
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    yield number, json.loads(line)
                except json.JSONDecodeError as error:
                    raise UsageError(f"{path}, line {number}: not JSON ({error})") from None


def _records(path: Path) -> list[dict]:
    if not path.is_file():
        raise UsageError(f"{path} is missing")
    return [record if isinstance(record, dict) else {"text": record} for _, record in read_jsonl(path)]


def _rows(where: str, values: Any, size: int, what: str) -> list[int]:
    """``values`` as a list of row numbers below ``size``; anything else is an error naming ``where``."""
    if not isinstance(values, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise UsageError(f"{where}: {what} must be a list of row numbers")
    bad = [v for v in values if not 0 <= v < size]
    if bad:
        raise UsageError(f"{where}: {what} holds row {bad[0]}, out of range for {size} rows")
    return values


def _losses(where: str, values: Any, count: int, what: str) -> list[float]:
    if not isinstance(values, list) or not all(isinstance(v, (int, float)) or v is None for v in values):
        raise UsageError(f"{where}: {what} must be a list of numbers")
    if len(values) != count:
        raise UsageError(f"{where}: {len(values)} {what} for {count} queries")
    return [math.nan if v is None else float(v) for v in values]


def _shard(pair_id: str, split_id: int, subset: list[int], queries: list[int], losses: list[float]) -> dict:
    return {"pair_id": pair_id, "split_id": split_id, "subset": subset, "queries": queries, "losses": losses,
            "seed": UNKNOWN_SEED, "noise": False, "seconds": 0.0}  # fmt: skip


def convert_lds_benchmark(source: str | Path, output_dir: str | Path) -> dict[str, Any]:
    """An authors' LDS benchmark folder as an ``lds``-mode labels dataset; its summary."""
    folder = Path(source)
    pool, tests = _records(folder / "train.jsonl"), _records(folder / "test.jsonl")
    shards = []
    for number, line in read_jsonl(folder / "lds.jsonl"):
        where = f"{folder / 'lds.jsonl'}, line {number}"
        if not isinstance(line, dict) or not {"train_subset", "test_loss"} <= set(line):
            raise UsageError(f"{where}: expected an object with 'train_subset' and 'test_loss'")
        subset = _rows(where, line["train_subset"], len(pool), "train_subset")
        losses = _losses(where, line["test_loss"], len(tests), "test_loss values")
        shards.append(_shard(str(number - 1), 0, subset, list(range(len(tests))), losses))
    if len(shards) < 2:
        raise UsageError(f"{folder / 'lds.jsonl'}: {len(shards)} subset(s); LDS needs at least 2")
    about = {"format": "authors' LDS benchmark", "source": str(folder), "files": ["train.jsonl", "test.jsonl",
             "lds.jsonl"], "subsets": len(shards)}  # fmt: skip
    return _write(output_dir, "lds", shards, pool, tests, {}, about)


def convert_training_labels(
    index_file: str | Path, data: list[dict], data_source: str, loss_dir: str | Path, output_dir: str | Path
) -> dict[str, Any]:
    """The authors' ``train_index.jsonl`` and ``loss-<id>.json`` files as a ``train``-mode labels dataset.

    Args:
        index_file: Their ``train_index.jsonl``.
        data: The records its rows index (the data the pairs were sampled from), in order.
        data_source: Where ``data`` came from, for the card.
        loss_dir: The folder of their ``loss-<pair id>.json`` files; pairs without one are skipped.
        output_dir: The labels dataset folder to write.
    """
    index_file, loss_dir = Path(index_file), Path(loss_dir)
    if not index_file.is_file():
        raise UsageError(f"{index_file} is missing")
    query_row: dict[tuple[int, int], int] = {}
    query_records, split_ids, pool_rows = [], [], []
    shards, skipped = [], 0
    for number, pair in read_jsonl(index_file):
        where = f"{index_file}, line {number}"
        if not isinstance(pair, dict) or not {"id", "select", "dev", "dev_id"} <= set(pair):
            raise UsageError(f"{where}: expected an object with 'id', 'select', 'dev' and 'dev_id'")
        select = _rows(where, pair["select"], len(data), "select")
        dev = _rows(where, pair["dev"], len(data), "dev")
        split = pair["dev_id"]
        if not isinstance(split, int):
            raise UsageError(f"{where}: dev_id must be a whole number, got {split!r}")
        overlap = sorted(set(select) & set(dev))
        if overlap:
            raise UsageError(f"{where}: select holds dev row {overlap[0]}; a subset never holds its split's dev rows")
        loss_file = loss_dir / f"loss-{pair['id']}.json"
        if not loss_file.is_file():
            skipped += 1
            continue
        try:
            result = json.loads(loss_file.read_text())
        except json.JSONDecodeError as error:
            raise UsageError(f"{loss_file}: not JSON ({error})") from None
        if str(result.get("pair_id")) != str(pair["id"]) or result.get("dev_id", split) != split:
            raise UsageError(f"{loss_file}: pair_id {result.get('pair_id')!r} and dev_id {result.get('dev_id')!r} do "
                             f"not match {where} (id {pair['id']!r}, dev_id {split})")  # fmt: skip
        losses = _losses(str(loss_file), result.get("losses"), len(dev), "losses")
        queries = []
        for row in dev:
            if (split, row) not in query_row:
                query_row[(split, row)] = len(query_records)
                query_records.append(data[row])
                split_ids.append(split)
                pool_rows.append(row)
            queries.append(query_row[(split, row)])
        shards.append(_shard(str(pair["id"]), split, select, queries, losses))
    if not shards:
        raise UsageError(f"no loss-<id>.json file in {loss_dir} matches a pair of {index_file}")
    if skipped:
        logger.warning("%d pair(s) of %s have no loss file in %s and are left out", skipped, index_file, loss_dir)
    about = {"format": "authors' training labels", "source": str(index_file), "loss_dir": str(loss_dir),
             "data": data_source, "pairs": len(shards), "pairs_without_losses": skipped}  # fmt: skip
    extra = {"split_id": split_ids, "pool_index": pool_rows}
    return _write(output_dir, "train", shards, data, query_records, extra, about)


def _write(output_dir, mode, shards, pool, queries, extra, about) -> dict[str, Any]:
    summary = {
        "mode": mode,
        "preset": "authors",
        "converted_from": about,
        "corpus": {
            "name": about["format"],
            "source": about["source"],
            "fingerprint": fingerprint({"pool": pool, "queries": queries}),
        },
        "target_lm": None,
        "settings": None,
        "last_run_wall_seconds": 0.0,
    }
    return write_labels_dataset(Path(output_dir), shards, pool, queries, extra, summary, describe=card)


def card(summary: dict[str, Any], configs: dict[str, str]) -> str:
    """The card of converted labels: what they came from, and what this project's own cards say that they lack."""
    about = summary["converted_from"]
    origin = ", ".join(f"{k}: `{v}`" for k, v in about.items())
    return f"""{card_header(configs)}
# AirRep subset-loss labels ({summary["mode"]} mode), converted from the authors' release format

Each row of `labels` is one subset model of the AirRep authors' pipeline; `losses[i]` is its loss on
`queries[queries[i]]` as their files record it. Converted by `python -m airrep.convert labels`
({origin}). Pool {summary["pool"]} examples, {summary["queries"]} queries, {summary["labels"]} subset models
({summary["diverged"]} with non-finite losses kept apart in `diverged`).

The authors' files do not record the target LM, the SFT settings or the seeds (`seed` is
{UNKNOWN_SEED}), so gradient methods, which need the target LM, cannot be scored on these labels, and
there is no noise ceiling.

```python
from datasets import load_dataset

labels = load_dataset("<this folder or repo id>", "labels", split="train")
```
"""
