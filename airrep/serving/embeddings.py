"""Encode a corpus of any size into an embeddings dataset: ids plus float16 vectors in parquet shards.

    python -m airrep.serving.embeddings --model out/demo/model --dataset out/demo/corpus --split train \
        --output_dir out/demo/embeddings
    ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 -m airrep.serving.embeddings --model ... --output_dir ...

The input is a dataset folder or Hub id, read with ``streaming=True`` so that it never has to fit in
memory. Rows are cut into shards of ``--shard_size``; shard ``i`` holds rows ``[i * size, (i + 1) *
size)`` and is written atomically as ``data/shard-XXXXX.parquet`` when it is done. Under ``torchrun``
rank ``r`` encodes shards ``r, r + world, ...``, so any number of processes (or GPUs) writes the
same files. A killed run resumes with the shards that are missing. The result is itself a Hub
dataset folder (``load_dataset(folder)``), with a card and ``embeddings.json`` describing it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from airrep import cli
from airrep.cli import UsageError
from airrep.outputs import claim, write_json, write_text
from airrep.serving.index import shard_files

logger = logging.getLogger(__name__)
SETTINGS_FILE = "embeddings.json"


def shard_file(folder: Path, shard: int) -> Path:
    return folder / "data" / f"shard-{shard:05d}.parquet"


def _rows(dataset: str, split: str, config: str | None) -> Iterator[dict[str, Any]]:
    from datasets import load_dataset

    return iter(load_dataset(dataset, config, split=split, streaming=True))


def _shards(rows: Iterator[dict[str, Any]], shard_size: int) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    for shard in itertools.count():
        chunk = list(itertools.islice(rows, shard_size))
        if not chunk:
            return
        yield shard, chunk


def _write_shard(path: Path, ids: list[str], vectors: np.ndarray) -> None:
    from datasets import Dataset, Features, List, Value

    features = Features({"id": Value("string"), "embedding": List(Value("float16"), length=vectors.shape[1])})
    table = Dataset.from_dict({"id": ids, "embedding": vectors.astype(np.float16)}, features=features)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.parquet")
    table.to_parquet(str(tmp))
    os.replace(tmp, path)


def encode_corpus(
    model_name: str,
    dataset: str,
    output_dir: str | os.PathLike,
    split: str = "train",
    config: str | None = None,
    shard_size: int = 10000,
    batch_size: int = 64,
    id_column: str = "id",
    precision: str = "auto",
    compile: bool = False,
) -> dict[str, Any]:
    """Encode every row of ``dataset[split]`` with the AirRep checkpoint ``model_name`` (see the module doc).

    ``precision`` is ``AirRepModel.encode``'s; the default, ``"auto"``, encodes under bf16 autocast where
    the device has bf16 kernels; how far that is from fp32, in embedding cosine and in LDS, is measured in
    benchmarks/README.md ("Encoding at the machine's limit"). The precision that ran is recorded, and a
    resumed run must use the same one. ``compile`` runs the encoder through ``torch.compile`` (a C++
    compiler is needed); it changes the speed, not the embeddings' precision, so it is not recorded and a
    resumed run may turn it on or off.

    Returns:
        The summary written to ``embeddings.json`` (on the main process; other ranks return theirs).
    """
    from accelerate import PartialState
    from tqdm.auto import tqdm

    from modeling_airrep import AirRepModel, compile_refusal

    if shard_size < 1 or batch_size < 1:
        raise UsageError("--shard_size and --batch_size must be at least 1")
    import torch

    state = PartialState(cpu=not torch.cuda.is_available())
    folder = Path(output_dir)
    model = AirRepModel.from_pretrained(model_name).to(state.device)
    try:
        precision = model.resolve_precision(precision)
    except ValueError as error:
        raise UsageError(f"--precision: {error}") from None
    refusal = compile_refusal(precision, state.device) if compile else None
    if refusal:
        raise UsageError(f"--compile: {refusal}")
    settings = {"model": model_name, "dataset": dataset, "config": config, "split": split,
                "shard_size": shard_size, "id_column": id_column}  # fmt: skip
    if precision != "fp32":  # folders written before the option existed are fp32 and record none
        settings["precision"] = precision
    if state.is_main_process:
        claim(folder, "embedding_settings.json", settings,
              "use another --output_dir, or delete the folder to start over")  # fmt: skip
    state.wait_for_everyone()

    done = encoded = 0
    n_rows = 0
    progress = tqdm(desc=f"embedding shards (rank {state.process_index})", disable=not state.is_local_main_process)
    for shard, rows in _shards(_rows(dataset, split, config), shard_size):
        n_rows += len(rows)
        if shard % state.num_processes != state.process_index:
            continue
        path = shard_file(folder, shard)
        if path.exists():
            done += 1
            continue
        ids = [str(row.get(id_column, shard * shard_size + i)) for i, row in enumerate(rows)]
        # A bad record is named by its row in the whole split, not in the shard.
        texts = []
        for i, row in enumerate(rows):
            try:
                texts.append(model.config.format_text(row, index=shard * shard_size + i))
            except ValueError as error:
                raise UsageError(f"{dataset} (split {split}): {error}") from None
        vectors = model.encode(texts, batch_size=batch_size, show_progress_bar=False, precision=precision,
                               compile=compile)  # fmt: skip
        _write_shard(path, ids, vectors)
        encoded += 1
        progress.update(1)
    progress.close()
    if done:
        logger.info("rank %d: %d shard(s) were already done", state.process_index, done)
    state.wait_for_everyone()
    summary = {**settings, "rows": n_rows, "shards": -(-n_rows // shard_size), "dim": model.projector.out_features,
               "dtype": "float16"}  # fmt: skip
    if state.is_main_process:
        _finish(folder, summary)
    return summary


def _finish(folder: Path, summary: dict[str, Any]) -> None:
    stale = sorted(p.name for p in (folder / "data").glob("shard-*.parquet") if int(p.stem[6:]) >= summary["shards"])
    if stale:
        raise RuntimeError(f"{folder}/data holds shards beyond the {summary['shards']} this corpus has: {stale[:3]}")
    write_json(folder / SETTINGS_FILE, summary)
    # datasets 5.2 keys its cache for a local folder by the card's configs (names and path patterns),
    # not by the files (see airrep.outputs.write_parquet). Shards keep their resumable names, so the
    # config's name carries what makes this folder's rows its own: the shards' names, sizes and times.
    stamp = json.dumps([(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in shard_files(folder)[1]])
    config_name = "embeddings-" + hashlib.sha256(stamp.encode()).hexdigest()[:12]
    write_text(
        folder / "README.md",
        f"""---
configs:
- config_name: {config_name}
  default: true
  data_files:
  - split: train
    path: data/shard-*.parquet
tags:
- airrep
- embeddings
---

# AirRep embeddings of `{summary["dataset"]}` (split `{summary["split"]}`)

{summary["rows"]:,} rows embedded by `{summary["model"]}` into {summary["dim"]}-dimensional float16 vectors,
in {summary["shards"]} parquet shard(s) of {summary["shard_size"]:,} rows. Columns: `id` (the row's
`{summary["id_column"]}` column, or its row number) and `embedding`.

```python
from airrep.serving.index import EmbeddingIndex
index = EmbeddingIndex.from_folder("<this folder>")
scores, rows = index.top_k(query_embeddings, k=100)
```
""",
    )


@dataclass
class EmbeddingsArguments:
    model: str = field(metadata={"help": "AirRep checkpoint folder or Hub id."})
    dataset: str = field(metadata={"help": "Dataset folder or Hub id (read with streaming)."})
    output_dir: str = field(metadata={"help": "The embeddings dataset folder to write (and resume)."})
    split: str = field(default="train", metadata={"help": "Split of the dataset to encode."})
    config: str | None = field(default=None, metadata={"help": "Dataset config, such as 'pool' of a labels dataset."})
    shard_size: int = field(default=10000, metadata={"help": "Rows per parquet shard."})
    batch_size: int = field(default=64, metadata={"help": "Texts per encoder forward."})
    id_column: str = field(default="id", metadata={"help": "Column holding row ids (default: row numbers)."})
    precision: str = field(
        default="auto",
        metadata={"help": "Encoder precision: fp32, bf16 (autocast), int8, or auto (bf16 where the device has bf16 "
                          "kernels, else fp32). Vectors are stored in float16 either way."},
    )  # fmt: skip
    compile: bool = field(
        default=False, metadata={"help": "Encode through torch.compile: faster under bf16; needs a C++ compiler."}
    )


def main(argv: list[str]) -> None:
    (args,) = cli.parse(EmbeddingsArguments, argv, __doc__)
    encode_corpus(args.model, args.dataset, args.output_dir, args.split, args.config, args.shard_size,
                  args.batch_size, args.id_column, args.precision, args.compile)  # fmt: skip


if __name__ == "__main__":
    sys.exit(cli.run(main, prog="python -m airrep.serving.embeddings"))
