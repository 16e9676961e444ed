"""Peak memory of ``select_data.py --method airrep`` over an embeddings pool, streamed against in memory.

``select_data`` scans the pool's records a batch at a time (keeping a 16-byte digest per row) and
scores an embeddings dataset one stored shard at a time, keeping only the best ``budget`` candidates
per target (``modeling_airrep.select_examples``). The comparison, measured in the same run on the same
files, is the way it worked before: every record as a Python dict, every vector in memory
(``EmbeddingIndex.from_folder``), and the whole (targets x pool) score matrix, then the same rule.
Both must select the same rows.

Each way runs in a fresh process per pool size, with the libraries imported first, and reports the
most resident memory it adds while it runs (sampled every millisecond) and its wall time. The pool
is synthetic (a million texts take hours to encode on CPU): short distinct records, 1% of them
repeated (duplicates are one candidate), with random float16 vectors written in the embeddings
dataset's own layout, and an untrained AirRep of the bundled MiniLM as the checkpoint.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_selection_memory.py --rows 100000 1000000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

MODES = ("in-memory", "streamed")


def build(work: Path, rows: int, dim: int, shard_size: int, n_targets: int) -> dict[str, str]:
    """The checkpoint, the pool dataset, its embeddings dataset and a targets file, under ``work``."""
    from datasets import Dataset

    from airrep.serving.embeddings import _finish, _write_shard, shard_file
    from modeling_airrep import AirRepModel

    model = work / "model"
    if not model.exists():
        AirRepModel.from_encoder().save_pretrained(model)
    pool, embeddings = work / f"pool-{rows}", work / f"embeddings-{rows}"
    if not (embeddings / "embeddings.json").exists():
        source = np.arange(rows)
        source[rows // 100 :: 100] = source[: len(source[rows // 100 :: 100])]  # 1% repeat an earlier record
        (pool / "data").mkdir(parents=True, exist_ok=True)
        Dataset.from_dict(
            {
                "id": [str(i) for i in range(rows)],
                "prompt": [f"Summarise note {i} of the archive." for i in source],
                "response": [f"Note {i} records event {i * 7919 % 1000003}." for i in source],
            }
        ).to_parquet(str(pool / "data" / "train.parquet"))
        rng = np.random.default_rng(0)
        for shard, start in enumerate(range(0, rows, shard_size)):
            size = min(shard_size, rows - start)
            vectors = rng.standard_normal((size, dim), dtype=np.float32).astype(np.float16)
            _write_shard(shard_file(embeddings, shard), [str(i) for i in range(start, start + size)], vectors)
        _finish(embeddings, {"model": str(model), "dataset": str(pool), "config": None, "split": "train",
                             "shard_size": shard_size, "id_column": "id", "rows": rows,
                             "shards": -(-rows // shard_size), "dim": dim, "dtype": "float16"})  # fmt: skip
    targets = work / "targets.jsonl"
    targets.write_text("".join(json.dumps({"prompt": f"Summarise note {i}.", "response": f"Note {i}."}) + "\n"
                               for i in range(n_targets)))  # fmt: skip
    return {"model": str(model), "pool": str(pool), "embeddings": str(embeddings), "targets": str(targets)}


class PeakMemory:
    """The most resident memory this process holds while the block runs, above what it held at its start.

    ``ru_maxrss`` is the peak of the whole process, imports included; this samples ``/proc/self/statm``
    every millisecond instead, so it measures what the block itself adds.
    """

    def __enter__(self) -> PeakMemory:
        self.page = resource.getpagesize()
        self.start = self.peak = self._resident()
        self.running = True
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def _resident(self) -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * self.page

    def _watch(self) -> None:
        while self.running:
            self.peak = max(self.peak, self._resident())
            time.sleep(0.001)

    def __exit__(self, *exc) -> None:
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, self._resident())

    @property
    def added_mb(self) -> float:
        return (self.peak - self.start) / 2**20


def child(mode: str, paths: dict[str, str], budget: int, strategy: str, output: str) -> dict:
    """Run one way in this process (libraries imported first); the memory it adds, its time, its rows."""
    import torch  # noqa: F401  (imported before the measurement, as every way needs it)

    from airrep.serving.index import EmbeddingIndex
    from airrep.serving.selection import SelectArguments, load_records, select, select_data, texts_of
    from modeling_airrep import AirRepModel, distinct_rows, text_digests

    tic = time.perf_counter()
    with PeakMemory() as memory:
        if mode == "streamed":
            arguments = SelectArguments(pool=paths["embeddings"], targets=paths["targets"], output_dir=output,
                                        budget=str(budget), strategy=strategy)  # fmt: skip
            rows = select_data(arguments)["pool_rows"]
        else:
            records = load_records(paths["pool"])
            candidates = distinct_rows(text_digests(texts_of(records, "pool")))
            vectors = EmbeddingIndex.from_folder(paths["embeddings"]).embeddings
            model = AirRepModel.from_pretrained(paths["model"])
            targets = model.encode(texts_of(load_records(paths["targets"]), "targets"))
            scores = targets @ vectors[candidates].astype(np.float32).T
            rows = candidates[select(scores, budget, strategy).rows].tolist()
    return {"added_mb": memory.added_mb, "seconds": time.perf_counter() - tic, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000], help="pool sizes")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--shard_size", type=int, default=10_000)
    parser.add_argument("--targets", type=int, default=16)
    parser.add_argument("--budget", type=int, default=1000)
    parser.add_argument("--strategy", default="round-robin")
    parser.add_argument("--work_dir", default=None, help="where the synthetic pools are kept (default: a temp dir)")
    parser.add_argument("--output", default=None, help="write the results as JSON here")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--paths", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        work = Path(tempfile.mkdtemp())
        print(json.dumps(child(args.child, json.loads(args.paths), args.budget, args.strategy, str(work / "s"))))
        return

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench-selection-memory-"))
    results = {"budget": args.budget, "strategy": args.strategy, "targets": args.targets, "dim": args.dim,
               "shard_size": args.shard_size, "pools": {}}  # fmt: skip
    print("| pool rows | way | memory added (MB) | seconds |\n|---|---|---|---|")
    for rows in args.rows:
        paths = build(work, rows, args.dim, args.shard_size, args.targets)
        measured = {}
        for mode in MODES:
            command = [sys.executable, __file__, "--child", mode, "--paths", json.dumps(paths),
                       "--budget", str(args.budget), "--strategy", args.strategy]  # fmt: skip
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            measured[mode] = json.loads(done.stdout.strip().splitlines()[-1])
        if measured["streamed"].pop("rows") != measured["in-memory"].pop("rows"):
            raise SystemExit(f"{rows} rows: the streamed and the in-memory selections differ")
        for mode, m in measured.items():
            print(f"| {rows:,} | {mode} | {m['added_mb']:,.0f} | {m['seconds']:.1f} |")
        ratio = measured["in-memory"]["added_mb"] / measured["streamed"]["added_mb"]
        print(f"| {rows:,} | in-memory / streamed | {ratio:.1f}x | |")
        results["pools"][str(rows)] = measured | {"ratio": ratio}
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
