"""Top-100 query latency over 1 million 384-dimensional float16 embeddings: exact search against FAISS.

In one run, on the same corpus and queries (``airrep.serving.index.EmbeddingIndex``):

- ``exact``: chunked matrix products over the float16 corpus (:func:`modeling_airrep.top_k`), the reference;
- ``faiss-flat``: FAISS's exact inner-product search over a float32 copy;
- ``faiss-ivf``: an inverted-file index (``--nlist`` lists) at several ``nprobe``, with recall@k
  against exact search.

The corpus is synthetic (encoding a million texts takes hours on CPU): a mixture of ``--clusters``
Gaussian clusters, so that, like real embeddings, it has structure for the IVF index to use. The
queries come from the same mixture. Latency is reported per query, for one query at a time and for
a batch of ``--queries``.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_index.py --n 1000000 --queries 100
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from airrep.serving.index import EmbeddingIndex, recall_at_k


def mixture(rng: np.random.Generator, n: int, dim: int, centers: np.ndarray, noise: float) -> np.ndarray:
    out = np.empty((n, dim), dtype=np.float16)
    for start in range(0, n, 100_000):  # in blocks, so float64 temporaries stay small
        size = min(100_000, n - start)
        labels = rng.integers(0, len(centers), size)
        out[start : start + size] = centers[labels] + noise * rng.standard_normal((size, dim), dtype=np.float32)
    return out


def per_query_ms(index: EmbeddingIndex, queries: np.ndarray, k: int, backend: str, singles: int) -> dict[str, float]:
    tic = time.perf_counter()
    _, rows = index.top_k(queries, k, backend)
    batch = (time.perf_counter() - tic) / len(queries)
    one = []
    for q in queries[:singles]:
        tic = time.perf_counter()
        index.top_k(q[None], k, backend)
        one.append(time.perf_counter() - tic)
    return {"batch_ms_per_query": 1e3 * batch, "single_ms_median": 1e3 * statistics.median(one)}, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--singles", type=int, default=10, help="queries also timed one at a time")
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--clusters", type=int, default=2000)
    parser.add_argument("--noise", type=float, default=0.6, help="spread of each cluster (centres have unit scale)")
    parser.add_argument("--nlist", type=int, default=1024)
    parser.add_argument("--nprobe", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--output", default=None)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    centers = rng.standard_normal((args.clusters, args.dim), dtype=np.float32)
    index = EmbeddingIndex(mixture(rng, args.n, args.dim, centers, args.noise), [str(i) for i in range(args.n)])
    queries = mixture(rng, args.queries, args.dim, centers, args.noise).astype(np.float32)
    results: dict[str, dict] = {"n": args.n, "dim": args.dim, "k": args.k, "noise": args.noise,
                                "corpus_bytes": int(index.embeddings.nbytes)}  # fmt: skip

    results["exact"], exact_rows = per_query_ms(index, queries, args.k, "exact", args.singles)
    tic = time.perf_counter()
    index.build_faiss("flat")
    results["faiss-flat"], rows = per_query_ms(index, queries, args.k, "faiss-flat", args.singles)
    results["faiss-flat"] |= {"build_s": time.perf_counter() - tic, "recall": recall_at_k(rows, exact_rows)}
    tic = time.perf_counter()
    index.build_faiss("ivf", nlist=args.nlist)
    build = time.perf_counter() - tic
    for nprobe in args.nprobe:
        index.set_nprobe(nprobe)
        name = f"faiss-ivf{args.nlist}-nprobe{nprobe}"
        results[name], rows = per_query_ms(index, queries, args.k, "faiss-ivf", args.singles)
        results[name] |= {"build_s": build, "recall": recall_at_k(rows, exact_rows)}
    print(json.dumps(results, indent=2))
    base = results["exact"]
    for name, entry in results.items():
        if isinstance(entry, dict) and name != "exact":
            print(f"{name}: {base['batch_ms_per_query'] / entry['batch_ms_per_query']:.1f}x faster in a batch, "
                  f"{base['single_ms_median'] / entry['single_ms_median']:.1f}x one at a time, "
                  f"recall@{args.k} {entry['recall']:.3f}")  # fmt: skip
    if args.output:
        with open(args.output, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
