"""Lexical baselines: BM25 (bm25s) and TF-IDF cosine (scikit-learn), on the text AirRep sees.

Both run at their library's defaults (bm25s: k1 1.5, b 0.75, word tokens of two or more characters)
with English stop words removed, so nothing about them is tuned on the labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

TEXT_METHODS = ("bm25", "tfidf")


@dataclass
class LexicalScores:
    scores: np.ndarray  # (n_queries, n_pool) float32
    index_bytes: int  # size of the pool-side index


def bm25_scores(pool_texts: Sequence[str], query_texts: Sequence[str]) -> LexicalScores:
    """BM25 (Lucene variant, k1 = 1.5, b = 0.75) of every pool text for every query."""
    import bm25s

    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(list(pool_texts), show_progress=False), show_progress=False)
    queries = bm25s.tokenize(list(query_texts), return_ids=False, show_progress=False)
    scores = np.zeros((len(query_texts), len(pool_texts)), dtype=np.float32)
    for row, tokens in enumerate(queries):
        ids = retriever.get_tokens_ids(tokens)
        if ids:  # a query with no indexed word scores 0 everywhere
            scores[row] = retriever.get_scores_from_ids(ids)
    index_bytes = sum(getattr(v, "nbytes", 0) for v in retriever.scores.values())
    return LexicalScores(scores, int(index_bytes))


def tfidf_scores(pool_texts: Sequence[str], query_texts: Sequence[str]) -> LexicalScores:
    """Cosine similarity of TF-IDF vectors (``TfidfVectorizer`` fitted on the pool)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(stop_words="english")
    pool = vectorizer.fit_transform(pool_texts)
    queries = vectorizer.transform(query_texts)
    scores = (queries @ pool.T).toarray().astype(np.float32)
    index_bytes = pool.data.nbytes + pool.indices.nbytes + pool.indptr.nbytes
    return LexicalScores(scores, int(index_bytes))
