"""Top-k and group-influence queries over an embeddings dataset (``airrep.serving.embeddings``).

Exact search (chunked matrix products, :func:`modeling_airrep.top_k`) is the reference. FAISS
(``faiss-cpu``) serves the same queries where it is faster: ``flat`` is FAISS's own exact
inner-product search, and ``ivf`` is an inverted-file index that scans only ``nprobe`` of ``nlist``
clusters, trading recall for speed. :func:`recall_at_k` measures that trade against exact search.
Group influence always pools exact scores (:func:`modeling_airrep.group_influence`): a subset's
score needs every member, which an approximate index does not give.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from modeling_airrep import group_influence, top_k

BACKENDS = ("exact", "faiss-flat", "faiss-ivf")


def shard_files(folder: str | os.PathLike) -> tuple[dict, list[Path]]:
    """The summary (``embeddings.json``) and the shard files, in row order, of a finished embeddings dataset.

    Raises:
        FileNotFoundError: the folder is not an embeddings dataset.
        ValueError: shards are missing (the encoding has not finished).
    """
    folder = Path(folder)
    settings = folder / "embeddings.json"
    if not settings.exists():
        raise FileNotFoundError(f"{folder} is not an embeddings dataset: embeddings.json is missing")
    summary = json.loads(settings.read_text())
    files = sorted((folder / "data").glob("shard-*.parquet"))
    if "shards" in summary and len(files) != summary["shards"]:
        raise ValueError(f"{folder} has {len(files)} of {summary['shards']} shards: finish the encoding first")
    return summary, files


def read_shard(file: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """The ids and the ``(rows, dim)`` float16 vectors of one shard file."""
    import pyarrow.parquet

    table = pyarrow.parquet.read_table(file)
    flat = table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return table.column("id").to_pylist(), np.asarray(flat, dtype=np.float16).reshape(table.num_rows, -1)


def iter_shards(folder: str | os.PathLike) -> Iterator[tuple[int, np.ndarray]]:
    """``(first row, vectors)`` of each shard in turn: one shard in memory at a time."""
    offset = 0
    for file in shard_files(folder)[1]:
        vectors = read_shard(file)[1]
        yield offset, vectors
        offset += len(vectors)


class EmbeddingIndex:
    """A corpus of embeddings (rows) with their ids, answering top-k and group-influence queries.

    Args:
        embeddings: ``(n, dim)``; kept as given (float16 stays float16), so a memory map works.
        ids: One id per row.
    """

    def __init__(self, embeddings: np.ndarray, ids: Sequence[str]) -> None:
        if embeddings.ndim != 2 or len(ids) != embeddings.shape[0]:
            raise ValueError(f"expected (n, dim) embeddings and n ids, got {embeddings.shape} and {len(ids)} ids")
        self.embeddings, self.ids = embeddings, list(ids)
        self._faiss = None
        self.backend = "exact"

    @classmethod
    def from_folder(cls, folder: str | os.PathLike) -> EmbeddingIndex:
        """Load an embeddings dataset folder written by ``airrep.serving.embeddings`` (all shards, in order)."""
        ids: list[str] = []
        blocks = []
        for file in shard_files(folder)[1]:
            shard_ids, vectors = read_shard(file)
            ids += shard_ids
            blocks.append(vectors)
        return cls(np.concatenate(blocks) if blocks else np.zeros((0, 0), np.float16), ids)

    def build_faiss(self, kind: str = "ivf", nlist: int | None = None, nprobe: int = 16, seed: int = 0) -> None:
        """Build a FAISS inner-product index over the rows; later :meth:`top_k` calls use it.

        ``kind="flat"`` is exact; ``kind="ivf"`` clusters the rows into ``nlist`` lists (default about
        ``4 sqrt(n)``), trained on at most 256 rows per list, and scans ``nprobe`` of them per query.
        """
        import faiss

        vectors = np.ascontiguousarray(self.embeddings, dtype=np.float32)
        dim = vectors.shape[1]
        if kind == "flat":
            index = faiss.IndexFlatIP(dim)
        elif kind == "ivf":
            nlist = nlist or max(1, int(4 * np.sqrt(len(vectors))))
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
            rng = np.random.default_rng(seed)
            sample = vectors[rng.choice(len(vectors), size=min(len(vectors), 256 * nlist), replace=False)]
            index.cp.seed = seed
            index.train(sample)
            index.nprobe = min(nprobe, nlist)
        else:
            raise ValueError(f"kind must be 'flat' or 'ivf', got {kind!r}")
        index.add(vectors)
        self._faiss, self.backend = index, f"faiss-{kind}"

    def set_nprobe(self, nprobe: int) -> None:
        """Lists an IVF index scans per query: more is slower and closer to exact."""
        if self.backend != "faiss-ivf":
            raise RuntimeError("nprobe applies to an IVF index: call build_faiss('ivf') first")
        self._faiss.nprobe = min(nprobe, self._faiss.nlist)

    def top_k(self, queries: np.ndarray, k: int = 10, backend: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, rows)`` of the ``k`` best rows per query, best first, by dot product."""
        backend = backend or self.backend
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        if backend == "exact":
            return top_k(queries, self.embeddings, k)
        if self._faiss is None or self.backend != backend:
            raise RuntimeError(f"call build_faiss({backend.removeprefix('faiss-')!r}) before searching with {backend}")
        scores, rows = self._faiss.search(np.ascontiguousarray(queries), min(k, len(self.ids)))
        return scores, rows

    def group_influence(
        self, queries: np.ndarray, subsets: Sequence[Sequence[int]], pooling: str = "attention"
    ) -> np.ndarray:
        """``(len(subsets), n_queries)`` group scores, exact."""
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        return group_influence(queries, self.embeddings, subsets, pooling=pooling)


def recall_at_k(approximate_rows: np.ndarray, exact_rows: np.ndarray) -> float:
    """Mean over queries of the share of the exact top-k rows that the approximate search also returns."""
    hits = [
        len(set(a.tolist()) & set(e.tolist())) / max(len(e), 1)
        for a, e in zip(approximate_rows, exact_rows, strict=True)
    ]
    return float(np.mean(hits)) if hits else float("nan")
