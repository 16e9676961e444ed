"""Time and peak memory of one AirRep training step: with and without GradCache, with and without
union encoding, with the step's texts ordered by length or as the subsets list them, on the same
step of a labels dataset.

Each variant runs in a fresh process (peak RSS cannot be reset within one), which loads the untrained
AirRep, builds the same training row, and times forward + backward of AirRepRankingLoss (the median
of ``--repeats`` steps on that row). The memory figure is the rise of the peak RSS during the steps
over the RSS before them.

    python benchmarks/bench_train_step.py --labels out/demo/labels-train --queries 16 --subsets 8
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

VARIANTS = {
    "GradCache + union": {"mini_batch_size": 32, "union": True},
    "GradCache, no union": {"mini_batch_size": 32, "union": False},
    "no GradCache + union": {"mini_batch_size": None, "union": True},
    "no GradCache, no union": {"mini_batch_size": None, "union": False},
    "GradCache + union, layers 0-4 frozen and cached": {"mini_batch_size": 32, "union": True, "frozen_layers": 5},
    "GradCache + union, bf16 autocast": {"mini_batch_size": 32, "union": True, "bf16": True},
    "GradCache + union, layers 0-4 frozen and cached, bf16 autocast": {
        "mini_batch_size": 32, "union": True, "frozen_layers": 5, "bf16": True,
    },
    # Before 2026-12-01 the collator kept the subsets' order, so each mini-batch padded to a random long text.
    "GradCache + union, subset order": {"mini_batch_size": 32, "union": True, "sort_by_length": False},
    "GradCache + union, bf16 autocast, subset order": {
        "mini_batch_size": 32, "union": True, "bf16": True, "sort_by_length": False,
    },
}  # fmt: skip


def rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def one_variant(
    labels: str,
    queries: int,
    subsets: int,
    mini_batch_size: int | None,
    union: bool,
    frozen_layers: int = 0,
    bf16: bool = False,
    sort_by_length: bool = True,
    repeats: int = 1,
) -> dict:
    import tempfile

    from accelerate import Accelerator
    from sentence_transformers import SentenceTransformer

    from airrep.labels.dataset import load_labels
    from airrep.training.data import AirRepDataCollator, freeze_lower_layers, sample_rows
    from airrep.training.ranking_loss import AirRepRankingLoss
    from modeling_airrep import AirRepModel

    data = load_labels(labels)
    row = sample_rows(data, sorted(data.splits), queries, subsets, 1, seed=0)[0]
    with tempfile.TemporaryDirectory() as folder:
        AirRepModel.from_encoder().save_pretrained(folder)
        model = SentenceTransformer(folder, trust_remote_code=True)
    cache, cache_seconds = None, 0.0
    if frozen_layers:
        tic = time.perf_counter()
        cache = freeze_lower_layers(model, data, frozen_layers)  # once per training run, not per step
        cache_seconds = time.perf_counter() - tic
    if bf16:
        # What the trainer does with ``--bf16``: accelerate runs the forward under CPU autocast and
        # returns fp32 outputs; the weights and the loss stay fp32.
        model = Accelerator(cpu=True, mixed_precision="bf16").prepare_model(model)
    model.train()
    batch = AirRepDataCollator(model.preprocess, data, union=union, cache=cache, sort_by_length=sort_by_length)([row])
    features = {k.removeprefix("sentence_0_"): v for k, v in batch.items() if k.startswith("sentence_0_")}
    loss = AirRepRankingLoss(model, mini_batch_size=mini_batch_size)
    texts = features["attention_mask"].shape[0]
    # Warm up autograd and the allocator on two texts so the figure is the step's own memory.
    model(model.preprocess(["warm", "up"]))["sentence_embedding"].sum().backward()
    model.zero_grad()
    before = rss_mib()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        loss([features], batch["label"]).backward()
        times.append(time.perf_counter() - start)
        model.zero_grad()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # Tokens the mini-batches compute, padding included (GradCache trims each one's trailing padding).
    lengths = features["attention_mask"].sum(dim=1)
    step = mini_batch_size or len(lengths)
    computed = sum(int(lengths[i : i + step].max()) * len(lengths[i : i + step]) for i in range(0, len(lengths), step))
    return {
        "texts_encoded": texts,
        "seconds": statistics.median(times),
        "all_seconds": times,
        "tokens": int(lengths.sum()),
        "tokens_computed": computed,
        "peak_rise_mib": peak - before,
        "cache_seconds": cache_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labels", required=True, help="a train-mode labels dataset")
    parser.add_argument("--queries", type=int, default=16, help="R")
    parser.add_argument("--subsets", type=int, default=8, help="K")
    parser.add_argument("--repeats", type=int, default=1, help="steps timed per variant; the median is reported")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--only", nargs="+", choices=list(VARIANTS), help="run these variants (default: all)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(one_variant(args.labels, args.queries, args.subsets, repeats=args.repeats,
                                     **VARIANTS[args.variant])))  # fmt: skip
        return
    figures = {}
    for name in args.only or VARIANTS:
        out = subprocess.run(
            [sys.executable, __file__, "--labels", args.labels, "--queries", str(args.queries),
             "--subsets", str(args.subsets), "--repeats", str(args.repeats), "--variant", name],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        figures[name] = json.loads(out.stdout.strip().splitlines()[-1])
        row = figures[name]
        print(
            f"  {name:<24} {row['texts_encoded']:5d} texts  {row['tokens_computed']:6d} tokens computed  "
            f"{row['seconds']:7.1f} s  peak +{row['peak_rise_mib']:7.0f} MiB"
        )
    base = figures.get("GradCache + union")
    for row in figures.values() if base else []:
        row["time_vs_gradcache_union"] = row["seconds"] / base["seconds"]
        row["memory_vs_gradcache_union"] = row["peak_rise_mib"] / max(base["peak_rise_mib"], 1e-9)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(
                {
                    "labels": args.labels,
                    "R": args.queries,
                    "K": args.subsets,
                    "repeats": args.repeats,
                    "figures": figures,
                },
                handle,
                indent=2,
            )


if __name__ == "__main__":
    main()
