"""The training objective against an independent implementation of docs/design.md, "The training loss"."""

import itertools

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer

from airrep.labels.dataset import normalise_losses
from airrep.training.data import set_dropout
from airrep.training.ranking_loss import AirRepRankingLoss, inclusion_probabilities, ranknet_loss


def reference_labels(losses, clip=10.0):
    out = np.full(losses.shape, np.nan)
    for d in range(losses.shape[1]):
        column = losses[:, d]
        seen = column[np.isfinite(column)]
        mean, std = seen.mean(), seen.std()
        std = std if std != 0 else 1.0
        for k in range(losses.shape[0]):
            if np.isfinite(column[k]):
                out[k, d] = min(max((mean - column[k]) / std, -clip), clip)
    return out


def reference_ranknet(scores, targets, t_min, t_max):
    terms = []
    for q in range(scores.shape[0]):
        for j, k in itertools.product(range(scores.shape[1]), repeat=2):
            delta = targets[q, j] - targets[q, k]
            if not np.isfinite(delta) or (delta < t_min if t_min is not None else delta <= 0):
                continue
            x = scores[q, j] - scores[q, k]
            terms.append(min(delta, t_max) * np.log1p(np.exp(-x)))
    return np.mean(terms)


def test_normalised_labels():
    rng = np.random.default_rng(0)
    losses = rng.normal(3, 0.5, size=(9, 5))
    losses[:, 1] = 2.0  # no variation: std counts as 1
    losses[2, 3] = np.nan  # a subset that did not see the query
    losses[4, 4] = 40.0  # an outlier: clipped
    np.testing.assert_allclose(normalise_losses(losses), reference_labels(losses), equal_nan=True)
    np.testing.assert_allclose(normalise_losses(losses, clip=1.5), reference_labels(losses, 1.5), equal_nan=True)
    assert normalise_losses(losses)[:, 1].tolist() == [0.0] * 9


@pytest.mark.parametrize(("t_min", "t_max"), [(0.1, 5.0), (None, 10.0)])
def test_ranknet_matches_pairwise_loops(t_min, t_max):
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(4, 6)) * 3
    targets = rng.normal(size=(4, 6)) * 4
    targets[0, :2] = [1.0, 1.05]  # a pair closer than t_min
    targets[1, 3] = np.nan
    got = ranknet_loss(torch.tensor(scores), torch.tensor(targets), t_min, t_max)
    assert got.item() == pytest.approx(reference_ranknet(scores, targets, t_min, t_max), rel=1e-10)


def test_ranknet_with_no_pairs_is_zero_and_differentiable():
    scores = torch.zeros(2, 3, requires_grad=True)
    loss = ranknet_loss(scores, torch.ones(2, 3))
    loss.backward()
    assert loss.item() == 0.0 and scores.grad is not None


@pytest.fixture(scope="module")
def sentence_model(saved_folder):
    return SentenceTransformer(str(saved_folder), trust_remote_code=True)


def _batch(model):
    texts = [f"Question: what is {i} plus {i}?\nAnswer: {2 * i}" for i in range(12)]
    features = model.preprocess(texts)
    labels = {
        "queries": torch.tensor([0, 5, 9]),
        "members": torch.tensor([[1, 2, 3], [4, 6, 7], [8, 10, 11], [1, 6, 10]]),
        "targets": torch.tensor(reference_labels(np.random.default_rng(2).normal(size=(4, 3))).T),
    }
    return texts, features, labels


@pytest.mark.parametrize("weighting", ["paper", "reference"])
def test_loss_value_is_ranknet_of_attention_pooled_scores(sentence_model, weighting):
    texts, features, labels = _batch(sentence_model)
    loss = AirRepRankingLoss(sentence_model, weighting=weighting, mini_batch_size=None)
    with torch.no_grad():
        value = loss([features], labels).item()
    embeddings = sentence_model.encode(texts, convert_to_numpy=True).astype(np.float64)
    scores = np.zeros((3, 4))
    for r, q in enumerate(labels["queries"].tolist()):
        for k, members in enumerate(labels["members"].tolist()):
            s = embeddings[members] @ embeddings[q]
            w = np.exp(np.abs(s) - np.abs(s).max())
            scores[r, k] = (w / w.sum() * s).sum()
    t_min, t_max = (0.1, 5.0) if weighting == "paper" else (None, 10.0)
    assert value == pytest.approx(reference_ranknet(scores, labels["targets"].numpy(), t_min, t_max), rel=1e-4)


def test_gradcache_gives_the_same_loss_and_gradients(sentence_model):
    _, features, labels = _batch(sentence_model)
    sentence_model.eval()  # no dropout: a plain pass and GradCache's mini-batches draw different masks
    results = []
    for mini_batch_size in (None, 5):
        sentence_model.zero_grad()
        loss = AirRepRankingLoss(sentence_model, mini_batch_size=mini_batch_size)
        value = loss([dict(features)], labels)
        value.backward()
        grads = {n: p.grad.clone() for n, p in sentence_model.named_parameters() if p.grad is not None}
        results.append((value.item(), grads))
    (plain, plain_grads), (cached, cached_grads) = results
    assert cached == pytest.approx(plain, rel=1e-5)
    assert plain_grads.keys() == cached_grads.keys() and len(plain_grads) > 10
    for name, grad in plain_grads.items():
        torch.testing.assert_close(cached_grads[name], grad, rtol=1e-3, atol=1e-6)


def test_config_and_bad_arguments(sentence_model):
    loss = AirRepRankingLoss(sentence_model)
    assert loss.get_config_dict() == {
        "weighting": "paper",
        "t_min": 0.1,
        "t_max": 5.0,
        "pooling": "attention",
        "mini_batch_size": 32,
        "backward_fraction": 1.0,
    }
    assert "2505.18513" in loss.citation
    with pytest.raises(ValueError, match="weighting must be one of"):
        AirRepRankingLoss(sentence_model, weighting="median")


def _bisected_probabilities(weights, fraction):
    """min(1, c w) summing to fraction * n, c found by bisection (an independent route to the same q)."""
    low, high = 0.0, 1e12
    for _ in range(200):
        c = (low + high) / 2
        low, high = (c, high) if np.minimum(1, c * weights).sum() < fraction * weights.size else (low, c)
    return np.minimum(1, high * weights)


def test_inclusion_probabilities_are_capped_proportional_and_sum_to_the_budget():
    weights = np.array([0.0, 1.0, 2.0, 3.0, 100.0, 0.5, 7.0, 0.25])
    for fraction in (0.1, 0.25, 0.5, 0.7):
        q = inclusion_probabilities(torch.tensor(weights), fraction).numpy()
        np.testing.assert_allclose(q, _bisected_probabilities(weights, fraction), atol=1e-9)
        assert q.sum() == pytest.approx(fraction * weights.size) and q.max() <= 1 and q[0] == 0
    np.testing.assert_allclose(inclusion_probabilities(torch.tensor([[0.0, 2.0, 3.0]]), 1.0).numpy(), [[0, 1, 1]])
    # More budget than texts with a gradient: every one of them, never a zero.
    assert inclusion_probabilities(torch.tensor(weights), 0.95).tolist() == [0, 1, 1, 1, 1, 1, 1, 1]
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="fraction must be in"):
            inclusion_probabilities(torch.tensor(weights), bad)
    with pytest.raises(ValueError, match="finite and non-negative"):
        inclusion_probabilities(torch.tensor([1.0, -1.0]), 0.5)


@pytest.fixture()
def dropout_free_model(saved_folder):
    model = SentenceTransformer(str(saved_folder), trust_remote_code=True)
    set_dropout(model[0].auto_model, 0.0)
    return model


@pytest.mark.parametrize("fraction", [0.3, 1.0])
def test_a_sampled_replay_pulls_each_taken_text_through_weighted_by_one_over_its_probability(
    dropout_free_model, fraction
):
    model = dropout_free_model
    _, features, labels = _batch(model)
    params = [p for p in model.parameters() if p.requires_grad]
    # Independently: per-text embedding gradients from one plain pass, then the Horvitz-Thompson sum
    # over the texts the sample takes (drawn from torch's global generator, as the loss documents).
    embeddings = model(dict(features))["sentence_embedding"]
    plain = AirRepRankingLoss(model, mini_batch_size=None)._loss(embeddings, labels)
    (g,) = torch.autograd.grad(plain, embeddings, retain_graph=True)
    q = inclusion_probabilities(g.norm(dim=1), fraction).float()
    torch.manual_seed(7)
    taken = torch.rand(q.shape) < q
    assert 0 < taken.sum() < len(q) if fraction < 1 else taken.all()
    weights = torch.where(taken, 1 / q, 0.0)
    expected = torch.autograd.grad((embeddings * (g * weights[:, None]).detach()).sum(), params)

    model.zero_grad()
    loss = AirRepRankingLoss(model, mini_batch_size=5, backward_fraction=fraction)
    torch.manual_seed(7)
    value = loss([dict(features)], labels)
    value.backward()
    assert value.item() == pytest.approx(plain.item(), rel=1e-5)
    # float32 sums of terms scaled by 1/q (up to ~10 here), grouped otherwise: allow 100 unit roundoffs
    # of the largest gradient entry (some entries, such as the attention keys' bias, are 0 but for roundoff).
    atol = 100 * torch.finfo(torch.float32).eps * max(float(grad.abs().max()) for grad in expected)
    for param, grad in zip(params, expected, strict=True):
        torch.testing.assert_close(param.grad, grad, rtol=1e-3, atol=atol)


def test_a_sampled_replay_needs_gradcache_and_no_dropout(sentence_model, dropout_free_model):
    with pytest.raises(ValueError, match="without dropout"):
        AirRepRankingLoss(sentence_model, backward_fraction=0.5)
    with pytest.raises(ValueError, match="needs a mini_batch_size"):
        AirRepRankingLoss(dropout_free_model, mini_batch_size=None, backward_fraction=0.5)
    with pytest.raises(ValueError, match="backward_fraction must be in"):
        AirRepRankingLoss(dropout_free_model, backward_fraction=0.0)
