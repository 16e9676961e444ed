"""group_influence, similarity and top_k against an independent NumPy computation (docs/design.md)."""

import numpy as np
import pytest
import torch

from modeling_airrep import group_influence, similarity, top_k


def reference_group_influence(queries, corpus, subsets, pooling):
    """Direct float64 evaluation, one subset and one query at a time."""
    out = np.zeros((len(subsets), len(queries)))
    for g, subset in enumerate(subsets):
        for t, query in enumerate(queries):
            s = corpus[np.asarray(subset, dtype=int)].astype(np.float64) @ query.astype(np.float64)
            if len(s) == 0:
                continue
            if pooling == "sum":
                out[g, t] = s.sum()
            elif pooling == "softmax":  # the AirRep authors' evaluation: softmax of the raw scores
                weights = np.exp(s - s.max())
                out[g, t] = (weights / weights.sum() * s).sum()
            else:
                weights = np.exp(np.abs(s) - np.abs(s).max())
                out[g, t] = (weights / weights.sum() * s).sum()
    return out


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    queries = rng.normal(size=(7, 16)).astype(np.float32)
    corpus = rng.normal(size=(300, 16)).astype(np.float32)
    subsets = [rng.choice(300, size=int(rng.integers(1, 150)), replace=False) for _ in range(25)]
    subsets.insert(5, np.array([], dtype=np.int64))  # an empty subset scores 0
    subsets.append(np.array([3, 3, 3]))  # repeated members count as separate members
    return queries, corpus, subsets


@pytest.mark.parametrize("pooling", ["attention", "sum", "softmax"])
@pytest.mark.parametrize("chunk_size", [None, 1, 37, 10_000])
def test_matches_reference(data, pooling, chunk_size):
    queries, corpus, subsets = data
    got = group_influence(queries, corpus, subsets, pooling=pooling, chunk_size=chunk_size)
    assert isinstance(got, np.ndarray) and got.shape == (len(subsets), len(queries))
    np.testing.assert_allclose(got, reference_group_influence(queries, corpus, subsets, pooling), rtol=1e-4, atol=1e-4)


def test_attention_is_stable_for_large_scores(data):
    queries, corpus, subsets = data
    queries, corpus = queries * 30, corpus * 30  # scores in the thousands: a naive softmax overflows
    got = group_influence(queries, corpus, subsets, chunk_size=50)
    expected = reference_group_influence(queries, corpus, subsets, "attention")
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-2)


def test_attention_pooling_weights_by_absolute_score():
    # Two members with scores +1 and -3: softmax(|s|) puts weight e^3/(e+e^3) on the -3.
    corpus = np.array([[1.0], [-3.0]], dtype=np.float32)
    got = group_influence(np.array([[1.0]], dtype=np.float32), corpus, [[0, 1]])
    w = np.exp([1.0, 3.0]) / np.exp([1.0, 3.0]).sum()
    assert got[0, 0] == pytest.approx(w[0] * 1 - w[1] * 3, rel=1e-6)
    # Without the absolute value (the authors' evaluation), the weight goes to the +1.
    raw = group_influence(np.array([[1.0]], dtype=np.float32), corpus, [[0, 1]], pooling="softmax")
    w = np.exp([1.0, -3.0]) / np.exp([1.0, -3.0]).sum()
    assert raw[0, 0] == pytest.approx(w[0] * 1 - w[1] * 3, rel=1e-6)


def test_torch_in_torch_out_and_2d_subset_array(data):
    queries, corpus, _ = data
    subsets = np.arange(300).reshape(6, 50)
    got = group_influence(torch.from_numpy(queries), torch.from_numpy(corpus), subsets, pooling="sum")
    assert isinstance(got, torch.Tensor)
    np.testing.assert_allclose(
        got.numpy(), reference_group_influence(queries, corpus, subsets, "sum"), rtol=1e-4, atol=1e-4
    )


def test_memmapped_float16_corpus(tmp_path, data):
    queries, corpus, subsets = data
    path = tmp_path / "corpus.f16"
    mm = np.memmap(path, dtype=np.float16, mode="w+", shape=corpus.shape)
    mm[:] = corpus
    mm.flush()
    mm = np.memmap(path, dtype=np.float16, mode="r", shape=corpus.shape)
    got = group_influence(queries, mm, subsets, chunk_size=64)
    expected = reference_group_influence(queries, np.asarray(mm, dtype=np.float32), subsets, "attention")
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3)


def test_out_of_range_index_names_subset_and_index(data):
    queries, corpus, subsets = data
    subsets = [[0, 1], [2, 300, 4]]
    with pytest.raises(IndexError, match="subset 1 holds index 300, out of range for a corpus of 300 embeddings"):
        group_influence(queries, corpus, subsets)
    with pytest.raises(IndexError, match="subset 0 holds index -1"):
        group_influence(queries, corpus, [[-1]])


def test_non_integer_subset_is_rejected(data):
    queries, corpus, _ = data
    with pytest.raises(TypeError, match="subset 1 must hold integer indices"):
        group_influence(queries, corpus, [[0], [0.5]])


def test_unknown_pooling_and_dimension_mismatch(data):
    queries, corpus, subsets = data
    with pytest.raises(ValueError, match="pooling must be one of"):
        group_influence(queries, corpus, subsets, pooling="mean")
    with pytest.raises(ValueError, match="query embeddings have dimension 16 but corpus embeddings have dimension 8"):
        group_influence(queries, corpus[:, :8], subsets)
    with pytest.raises(ValueError, match="dimension 16 but corpus embeddings have dimension 8"):
        similarity(queries, corpus[:, :8])


def test_similarity_and_top_k(data):
    queries, corpus, _ = data
    scores = similarity(queries, corpus)
    np.testing.assert_allclose(scores, queries.astype(np.float64) @ corpus.T.astype(np.float64), rtol=1e-5, atol=1e-5)
    best_scores, best_indices = top_k(queries, corpus, k=5, chunk_size=17)
    expected = np.argsort(-scores, axis=1)[:, :5]
    np.testing.assert_array_equal(best_indices, expected)
    np.testing.assert_allclose(best_scores, np.take_along_axis(scores, expected, axis=1), rtol=1e-6)
    assert top_k(queries, corpus[:3], k=10)[1].shape == (7, 3)


@pytest.mark.parametrize("pooling", ["attention", "sum"])
def test_gradients_match_a_direct_autograd_computation(pooling):
    torch.manual_seed(0)
    queries = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
    corpus = torch.randn(40, 8, dtype=torch.float64, requires_grad=True)
    subsets = [torch.randperm(40)[:n].numpy() for n in (5, 17, 1, 30)]
    weights = torch.randn(len(subsets), 3, dtype=torch.float64)

    (group_influence(queries, corpus, subsets, pooling=pooling, chunk_size=7) * weights).sum().backward()
    got = queries.grad.clone(), corpus.grad.clone()
    queries.grad = corpus.grad = None

    rows = []
    for subset in subsets:
        s = corpus[torch.as_tensor(subset)] @ queries.T  # (members, queries)
        rows.append(s.sum(0) if pooling == "sum" else (torch.softmax(s.abs(), dim=0) * s).sum(0))
    (torch.stack(rows) * weights).sum().backward()
    torch.testing.assert_close(got[0], queries.grad)
    torch.testing.assert_close(got[1], corpus.grad)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("as_tensor", [False, True], ids=["numpy", "torch"])
def test_a_non_finite_embedding_is_an_error_naming_its_row(bad, as_tensor):
    convert = torch.from_numpy if as_tensor else np.asarray
    queries, corpus = np.ones((2, 4), dtype=np.float32), np.ones((5, 4), dtype=np.float32)
    corpus[1, 0] = bad
    # Softmax pooling used to turn this subset's score into a silent 0.0.
    for pooling in ("attention", "sum"):
        for chunk_size in (None, 1):
            with pytest.raises(ValueError, match=rf"^corpus_embeddings row 1 holds {bad}: embeddings must be finite"):
                group_influence(convert(queries), convert(corpus), [[0, 1]], pooling=pooling, chunk_size=chunk_size)
    with pytest.raises(ValueError, match=r"corpus_embeddings row 1 holds"):
        top_k(convert(queries), convert(corpus), k=2, chunk_size=1)
    with pytest.raises(ValueError, match=r"corpus_embeddings row 1 holds"):
        similarity(convert(queries), convert(corpus))
    # A row no subset reads does not stop the others' scores.
    np.testing.assert_allclose(np.asarray(group_influence(convert(queries), convert(corpus), [[0, 2]])), [[4.0, 4.0]])
    queries[1, 3] = bad
    corpus[1, 0] = 1.0
    calls = (
        lambda: similarity(convert(queries), convert(corpus)),
        lambda: top_k(convert(queries), convert(corpus)),
        lambda: group_influence(convert(queries), convert(corpus), [[0]]),
    )
    for call in calls:
        with pytest.raises(ValueError, match=rf"^query_embeddings row 1 holds {bad}"):
            call()
