"""Counterfactual removal: take out a test query's top proponents, retrain, and see its loss rise.

The most direct test of an attribution (bergson's QLD; the datamodels' "brittleness" test). For each
of the labels' ``lds`` test queries and each method, the query's ``m`` highest-scored pool examples
are removed, the labels' target LM is fine-tuned on the rest of the pool with the labels' own SFT
settings (``airrep.labels.subset_training``, several models at once), and the query's loss is
recorded. The same is done after removing ``m`` random examples, with the same fine-tuning seed, so
each method's rise over random is paired per query; intervals resample queries. The pool fine-tuned
whole gives the reference loss.

Methods score (query, pool example) pairs as ``select_data.py`` does (``airrep.serving.selection``):
``tfidf``, ``bm25``, ``base-encoder``, ``airrep`` (``--model``), and the gradient methods ``grad-cos``
and ``logra`` on the labels' target LM fine-tuned on the pool.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_removal.py --labels out/demo/labels-lds \\
        --model out/demo/model --removed 10 40 --output out/bench/removal.json
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from datasets import load_dataset
from retraining import Retraining, paired, save_results

from airrep.serving.selection import pair_scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labels", required=True, help="lds labels: their pool, test queries, target LM and SFT")
    parser.add_argument("--model", required=True, help="the AirRep checkpoint of method 'airrep'")
    parser.add_argument("--removed", type=int, nargs="+", default=[10, 40], help="proponents removed (m)")
    parser.add_argument("--queries", type=int, default=100, help="test queries (the labels' first N)")
    parser.add_argument(
        "--methods", nargs="+", default=["tfidf", "bm25", "base-encoder", "grad-cos", "logra", "airrep"]
    )
    parser.add_argument("--projection_dim", type=int, default=4096, help="gradient features per example")
    parser.add_argument("--output", default=None, help="write the results as JSON (and a plot beside it) here")
    args = parser.parse_args()

    retraining = Retraining.from_labels(args.labels)
    pool = retraining.pool
    queries = load_dataset(args.labels, "queries", split="train").to_list()[: args.queries]
    queries = [{k: v for k, v in r.items() if v is not None} for r in queries]
    query_examples = retraining.examples(queries)
    n, q = len(pool), len(queries)

    scores = {}
    for method in args.methods:
        tic = time.perf_counter()
        scores[method], _ = pair_scores(method, [r["text"] for r in pool], [r["text"] for r in queries],
                                        model=args.model, pool_records=pool, target_records=queries,
                                        labels=args.labels, projection_dim=args.projection_dim)  # fmt: skip
        print(f"{method}: pair scores in {time.perf_counter() - tic:.1f} s")

    def kept(removed: np.ndarray) -> np.ndarray:
        return np.setdiff1d(np.arange(n), removed)

    seeds = [1000 + i for i in range(q)]  # one fine-tuning seed per query: every removal of it is paired
    tic = time.perf_counter()
    losses: dict[int, dict[str, np.ndarray]] = {}
    for m in args.removed:
        names = ["random", *args.methods]
        subsets, query_sets, job_seeds = [], [], []
        for name in names:
            for i in range(q):
                if name == "random":
                    removed = np.random.default_rng([i, m]).permutation(n)[:m]
                else:  # the m best-scored, ties to the lower row
                    removed = np.lexsort((np.arange(n), -scores[name][i]))[:m]
                subsets.append(kept(removed))
                query_sets.append(np.array([i]))
                job_seeds.append(seeds[i])
        values = retraining.losses(query_examples, subsets, query_sets, job_seeds)
        losses[m] = {name: values[j * q : (j + 1) * q] for j, name in enumerate(names)}
    # The reference: each query's loss after fine-tuning on the whole pool, with its own seed.
    full_model_losses = retraining.losses(query_examples, [np.arange(n)] * q, [np.array([i]) for i in range(q)], seeds)
    train_seconds = time.perf_counter() - tic

    results = {"labels": args.labels, "model": args.model, "queries": q, "pool": n, "removed": {},
               "whole_pool_loss": float(full_model_losses.mean()), "train_seconds": train_seconds}  # fmt: skip
    print(f"\n{q} queries; mean loss after fine-tuning on the whole pool {full_model_losses.mean():.3f}; "
          f"{sum(len(v) for v in losses.values()) * q + q} fine-tunes in "
          f"{train_seconds:.0f} s. Rise of the query's loss when its m top proponents are removed, minus the "
          "rise when m random examples are, 95% bootstrap over queries.\n")  # fmt: skip
    print("| method | " + " | ".join(f"m = {m}: loss rise | over random" for m in args.removed) + " |")
    print("|---|" + "---|---|" * len(args.removed))
    for name in ["random", *args.methods]:
        cells = []
        for m in args.removed:
            rise = losses[m][name] - full_model_losses
            entry = {"rise": float(rise.mean()), "per_query": losses[m][name].tolist()}
            entry |= paired(losses[m][name], losses[m]["random"])
            results["removed"].setdefault(str(m), {})[name] = entry
            low, high = entry["difference_ci"]
            cells.append(f"{entry['rise']:+.4f} | {entry['difference']:+.4f} [{low:+.4f}, {high:+.4f}]")
        print(f"| {name} | " + " | ".join(cells) + " |")
    if args.output:
        entries = {f"m = {m}": {k: v for k, v in e.items() if k != "random"} for m, e in results["removed"].items()}
        save_results(args.output, results, entries, "loss rise over random removal",
                     f"Removing each of {q} test queries' top proponents, then retraining; 95% intervals")  # fmt: skip


if __name__ == "__main__":
    main()
