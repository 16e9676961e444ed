"""EK-FAC and K-FAC through kronfluence against a brute-force influence computation on a tiny Llama:
per-token activations and output gradients from hooks, one backward per example, explicit
eigendecompositions and an explicit eigenvalue refit, all in float64."""

import json

import numpy as np
import pytest
import torch
from kronfluence.analyzer import Analyzer
from transformers import LlamaConfig, LlamaForCausalLM

from airrep.evaluation.influence_functions import (
    ResponseLossTask,
    collate_sft,
    kronecker_influence,
    query_batch_size,
    tracked_layers,
)
from airrep.labels.target_lm import IGNORE_INDEX, SFTExample, collate, response_losses

PAD = 0


def tiny_llama(seed: int = 0, tie: bool = False) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
                         tie_word_embeddings=tie, pad_token_id=PAD)  # fmt: skip
    return LlamaForCausalLM(config).double().eval()


@pytest.fixture(scope="module")
def examples():
    # 30 examples of 3-10 tokens: about 200 real tokens, more than any layer's width (24), so every
    # activation factor is full rank and its eigenvectors are unique.
    rng = np.random.default_rng(0)
    out = []
    for _ in range(30):
        prompt, response = rng.integers(1, 40, rng.integers(2, 6)), rng.integers(1, 40, rng.integers(1, 5))
        out.append(SFTExample([*prompt, *response], [IGNORE_INDEX] * len(prompt) + [*response]))
    return out


def brute_force_influence(model, train, queries, strategy):
    """``g_q^T (F + 0.1 mean(eig) I)^-1 g_i`` with F Kronecker-factored per layer, from first principles."""
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]
    modules = dict(model.named_modules())

    def statistics(example):
        inputs, outputs = {}, {}

        def keep(name):
            def hook(_module, args, output):
                inputs[name], outputs[name] = args[0][0], output

            return hook

        handles = [modules[n].register_forward_hook(keep(n)) for n in names]
        ids, labels = collate([example], PAD)
        summed, count = response_losses(model(input_ids=ids).logits, labels)
        deltas = torch.autograd.grad(summed[0] / count[0], [outputs[n] for n in names])
        for handle in handles:
            handle.remove()
        # per layer: activations (tokens, in), output gradients (tokens, out), weight gradient (out, in)
        return {n: (inputs[n], d[0], d[0].T @ inputs[n]) for n, d in zip(names, deltas, strict=True)}

    train_stats = [statistics(e) for e in train]
    query_stats = [statistics(e) for e in queries]
    n_tokens = sum(len(e.input_ids) for e in train)
    total = torch.zeros(len(queries), len(train), dtype=torch.float64)
    for n in names:
        activations = torch.cat([s[n][0] for s in train_stats])
        deltas = torch.cat([s[n][1] for s in train_stats])
        eig_a, q_a = torch.linalg.eigh(activations.T @ activations / n_tokens)
        eig_s, q_s = torch.linalg.eigh(deltas.T @ deltas / n_tokens)
        g_train = torch.stack([s[n][2] for s in train_stats])
        g_query = torch.stack([s[n][2] for s in query_stats])
        refitted = ((q_s.T @ g_train @ q_a) ** 2).mean(0)  # EK-FAC's eigenvalues
        eigenvalues = refitted if strategy == "ekfac" else eig_s[:, None] * eig_a[None, :]
        eigenvalues = eigenvalues + 0.1 * eigenvalues.mean()
        preconditioned = q_s @ ((q_s.T @ g_query @ q_a) / eigenvalues) @ q_a.T
        total += torch.einsum("qoi,noi->qn", preconditioned, g_train)
    return total.detach().numpy()


@pytest.mark.parametrize("strategy", ["ekfac", "kfac"])
def test_kronfluence_scores_equal_the_brute_force_influence(examples, strategy):
    model = tiny_llama()
    expected = brute_force_influence(model, examples, examples[:6], strategy)
    got = kronecker_influence(tiny_llama(), examples, examples[:6], PAD, strategy, batch_size=7,
                              empirical_fisher=True, dtype=torch.float64)  # fmt: skip
    assert got.scores.shape == (6, 30) and got.n_tracked == 2 * 7 and got.factor_bytes > 0
    # float64 throughout, batched against one example at a time. The rotary embedding is computed in
    # float32, but from an outer product of positions and frequencies (one rounding, no sums), so a
    # position gets the same angles in any batch, on either machine kind (checked with AVX2 kernels too).
    np.testing.assert_allclose(got.scores, expected, rtol=1e-9, atol=1e-9 * np.abs(expected).max())
    # The queries are the first 6 training examples, and the preconditioner is symmetric.
    np.testing.assert_allclose(got.scores[:, :6], got.scores[:, :6].T, rtol=1e-9)


def test_query_batches_and_training_batches_do_not_change_the_scores(examples):
    first = kronecker_influence(tiny_llama(), examples, examples[:5], PAD, "ekfac", batch_size=30,
                                empirical_fisher=True, dtype=torch.float64)  # fmt: skip
    # 1e-9 GiB holds less than one query's gradient: one query per pass over the training set.
    second = kronecker_influence(tiny_llama(), examples, examples[:5], PAD, "ekfac", batch_size=4, memory_gib=1e-9,
                                 empirical_fisher=True, dtype=torch.float64)  # fmt: skip
    np.testing.assert_allclose(second.scores, first.scores, rtol=1e-9, atol=1e-12)


def test_a_stopped_job_resumes_after_its_last_finished_stage(examples, tmp_path, monkeypatch):
    workdir = tmp_path / "ekfac"
    options = dict(batch_size=7, memory_gib=1e-9, empirical_fisher=False, dtype=torch.float64)  # a pass per query
    whole = kronecker_influence(tiny_llama(), examples, examples[:3], PAD, "ekfac", workdir=workdir, **options)
    progress = json.loads((workdir / "progress.json").read_text())
    stages = ["covariances", "eigendecomposition", "eigenvalue refit", "queries 0-1", "queries 1-2", "queries 2-3"]
    assert list(progress["seconds"]) == stages
    assert whole.fit_seconds == pytest.approx(sum(progress["seconds"][s] for s in stages[:3]))
    # Stopped during the last pass: a rerun recomputes that pass only, and the scores are the same.
    del progress["seconds"]["queries 2-3"]
    (workdir / "progress.json").write_text(json.dumps(progress))
    passes = []
    compute = Analyzer.compute_pairwise_scores

    def counted(self, scores_name, **kwargs):
        passes.append(scores_name)
        return compute(self, scores_name, **kwargs)

    def refused(*args, **kwargs):
        raise AssertionError("a finished fit stage was run again")

    monkeypatch.setattr(Analyzer, "compute_pairwise_scores", counted)
    for stage in ("fit_covariance_matrices", "perform_eigendecomposition", "fit_lambda_matrices"):
        monkeypatch.setattr(Analyzer, stage, refused)
    resumed = kronecker_influence(tiny_llama(), examples, examples[:3], PAD, "ekfac", workdir=workdir, **options)
    assert passes == ["queries-2-3"]
    np.testing.assert_array_equal(resumed.scores, whole.scores)
    assert resumed.fit_seconds == whole.fit_seconds
    monkeypatch.undo()
    # With room for every query: one new pass, and the three smaller ones are not counted in its time.
    one_pass = kronecker_influence(tiny_llama(), examples, examples[:3], PAD, "ekfac", workdir=workdir,
                                   **{**options, "memory_gib": 1.0})  # fmt: skip
    np.testing.assert_allclose(one_pass.scores, whole.scores, rtol=1e-9, atol=1e-15)
    seconds = json.loads((workdir / "progress.json").read_text())["seconds"]
    assert one_pass.score_seconds == seconds["queries 0-3"] and one_pass.fit_seconds == whole.fit_seconds
    # Without a workdir (a temporary one) the sampled Fisher, seeded per stage, gives the same scores.
    again = kronecker_influence(tiny_llama(), examples, examples[:3], PAD, "ekfac", **options)
    np.testing.assert_allclose(again.scores, whole.scores, rtol=1e-12, atol=1e-15)
    # Another model's job does not reuse the folder.
    other = kronecker_influence(tiny_llama(seed=1), examples, examples[:3], PAD, "ekfac", workdir=workdir, **options)
    assert not np.allclose(other.scores, whole.scores)
    assert json.loads((workdir / "progress.json").read_text())["job"] != progress["job"]


def test_the_true_fisher_samples_targets_at_response_positions_only_and_is_seeded(examples):
    model = tiny_llama()
    task = ResponseLossTask(tracked_layers(model), select_logits=True)
    batch = collate_sft(examples[:8], PAD)
    torch.manual_seed(3)
    sampled = task.compute_train_loss(batch, model, sample=True)
    torch.manual_seed(3)
    assert task.compute_train_loss(batch, model, sample=True) == sampled
    ids, labels = collate(examples[:8], PAD)
    summed, count = response_losses(model(input_ids=ids).logits, labels)
    assert torch.isclose(task.compute_measurement(batch, model), (summed / count).sum())
    assert sampled != task.compute_measurement(batch, model)
    # The mask covers each example's real tokens only (pads are right of them).
    assert batch["attention_mask"].sum(1).tolist() == [len(e.input_ids) for e in examples[:8]]

    runs = [kronecker_influence(tiny_llama(), examples, examples[:3], PAD, "ekfac", seed=s).scores for s in (0, 0, 1)]
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])
    assert runs[0].dtype == np.float32


def test_tracked_layers_leave_out_the_lm_head_tied_or_not():
    for tie in (False, True):
        names = tracked_layers(tiny_llama(tie=tie))
        assert len(names) == 14 and "lm_head" not in names
        assert names[:2] == ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj"]
    with pytest.raises(ValueError, match=r"no nn\.Linear layer besides its LM head"):
        tracked_layers(torch.nn.Sequential(torch.nn.Embedding(3, 2)))


def test_unknown_strategy_and_query_batches_fit_the_memory(examples):
    with pytest.raises(ValueError, match=r"strategy must be one of \('ekfac', 'kfac'\), got 'diagonal'"):
        kronecker_influence(tiny_llama(), examples, examples[:2], PAD, "diagonal")
    # 106M tracked numbers (SmolLM2-135M without embeddings) in float32, twice over: 7 queries in 6 GiB.
    assert query_batch_size(106_000_000, 6.0, 100) == 7
    assert query_batch_size(1_000, 6.0, 100) == 100
    assert query_batch_size(10**12, 6.0, 100) == 1
