"""Gradient baselines against brute force on a tiny Llama: one backward per example, full gradients,
explicit projection matrices and an explicit Fisher inverse."""

import copy

import numpy as np
import pytest
import scipy.sparse
import torch
from sklearn.random_projection import SparseRandomProjection
from transformers import AttentionInterface, LlamaConfig, LlamaForCausalLM
from transformers.masking_utils import AttentionMaskInterface, eager_mask
from transformers.models.llama.modeling_llama import repeat_kv

from airrep.evaluation.gradient_methods import (
    GradientProjector,
    LoGra,
    examples_per_call,
    per_example_gradients,
    projected_gradients,
    tracin_features,
)
from airrep.labels.subset_training import SFTSettings, finetune, train_and_score
from airrep.labels.target_lm import IGNORE_INDEX, SFTExample, collate, response_losses

PAD = 0


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
                         tie_word_embeddings=False, pad_token_id=PAD)  # fmt: skip
    model = LlamaForCausalLM(config).double().eval()
    model.set_attn_implementation("eager")
    rng = np.random.default_rng(0)
    examples = []
    for _ in range(7):  # unequal lengths, so batches are padded
        prompt, response = rng.integers(1, 40, rng.integers(2, 6)), rng.integers(1, 40, rng.integers(1, 5))
        examples.append(SFTExample([*prompt, *response], [IGNORE_INDEX] * len(prompt) + [*response]))
    return model, examples


def brute_gradients(model, examples):
    """One unpadded backward per example; returns {name: (n, *shape)} and the flat (n, n_params)."""
    per_name = {name: [] for name, _ in model.named_parameters()}
    for example in examples:
        model.zero_grad()
        ids, labels = collate([example], PAD)
        summed, count = response_losses(model(input_ids=ids).logits, labels)
        (summed[0] / count[0]).backward()
        for name, p in model.named_parameters():
            per_name[name].append(p.grad.detach().clone())
    stacked = {name: torch.stack(g) for name, g in per_name.items()}
    flat = torch.cat([g.reshape(len(examples), -1) for g in stacked.values()], dim=1)
    return stacked, flat


def float64_softmax_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """transformers' eager attention with its softmax in the model's own dtype instead of float32."""
    key, value = (repeat_kv(x, module.num_key_value_groups) for x in (key, value))
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    weights = torch.softmax(scores, dim=-1)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


AttentionInterface.register("float64_softmax", float64_softmax_attention)
AttentionMaskInterface.register("float64_softmax", eager_mask)  # the causal mask eager attention gets
FLOAT32_UNIT_ROUNDOFF = 2.0**-24


@pytest.mark.parametrize("attention", ["eager", "float64_softmax"])
@pytest.mark.parametrize("response_logits_only", [True, False], ids=["lm-head-at-responses", "lm-head-everywhere"])
def test_per_example_gradients_match_one_backward_per_example(tiny, response_logits_only, attention):
    model, examples = tiny
    model = copy.deepcopy(model)
    model.set_attn_implementation(attention)
    params = {name: p.detach() for name, p in model.named_parameters()}
    _, expected = brute_gradients(model, examples)
    got = per_example_gradients(model, params, examples, PAD, response_logits_only=response_logits_only)
    if attention == "float64_softmax":  # float64 throughout: the two paths agree to float64 rounding
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-11)
    else:
        # transformers' eager attention takes its softmax in float32, even in a float64 model. The
        # vmapped path pads every example to the longest, so its softmax rows are longer than the
        # per-example ones, and the float32 exp-and-sum kernels split a row into vector blocks by its
        # length: the same weight can round differently by an ulp of float32 (on AVX2 kernels it does;
        # ATEN_CPU_CAPABILITY=avx2 shows it on any x86 machine). The gradients inherit that relative
        # error, so they agree to a few float32 roundoffs of their largest entry, not to float64's.
        atol = 4 * FLOAT32_UNIT_ROUNDOFF * expected.abs().max().item()
        torch.testing.assert_close(got, expected, rtol=0, atol=atol)
    columns = per_example_gradients(model, params, examples, PAD, True, response_logits_only)
    assert columns.is_contiguous() and torch.equal(columns, got.T)


def test_projected_gradients_equal_the_explicit_projection(tiny):
    model, examples = tiny
    params = {name: p.detach() for name, p in model.named_parameters()}
    _, flat = brute_gradients(model, examples)
    projector = GradientProjector(flat.shape[1], 12, seed=3)
    got = projected_gradients(model, params, examples, PAD, projector, batch_size=3)
    expected = flat.numpy() @ projector.matrix.toarray().T
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    # The matrix is scikit-learn's for the seed, and the product's numbers are exactly its transform's
    # (score files written before the faster product stay valid).
    reference = SparseRandomProjection(n_components=12, random_state=3, dense_output=True)
    reference.fit(scipy.sparse.csr_matrix((1, flat.shape[1]), dtype=np.float32))
    gradients = flat.float().numpy()
    np.testing.assert_array_equal(projector(torch.from_numpy(gradients)), reference.transform(gradients))
    # A Johnson-Lindenstrauss map: inner products survive on average over seeds.
    dots = np.mean(
        [
            (lambda f: f @ f.T)(
                projected_gradients(model, params, examples, PAD, GradientProjector(flat.shape[1], 256, s))
            )
            for s in range(8)
        ],
        axis=0,
    )
    exact = (flat @ flat.T).numpy()
    assert np.corrcoef(dots.ravel(), exact.ravel())[0, 1] > 0.95


def test_tracin_features_turn_the_checkpoint_sum_into_one_dot_product():
    rng = np.random.default_rng(1)
    grads = [rng.normal(size=(5, 9)).astype(np.float32) for _ in range(3)]
    rates = [1e-3, 5e-4, 1e-4]
    features = tracin_features(grads, rates)
    expected = sum(lr * g[:2] @ g.T for g, lr in zip(grads, rates, strict=True))
    np.testing.assert_allclose(features[:2] @ features.T, expected, rtol=1e-5, atol=1e-8)  # float32 features


@pytest.mark.parametrize("response_logits_only", [True, False], ids=["lm-head-at-responses", "lm-head-everywhere"])
def test_logra_equals_kronecker_projection_of_full_gradients_and_explicit_fisher(tiny, response_logits_only):
    model, examples = tiny
    logra = LoGra(model, rank=3, seed=5, damping=0.1, response_logits_only=response_logits_only)
    got = logra.features(examples, PAD, batch_size=4)
    assert got.shape == (len(examples), logra.dim) and len(logra.layers) == 2 * 7 + 1  # 7 per layer + LM head
    per_name, _ = brute_gradients(model, examples)
    blocks = []
    for name in logra.layers:
        p_in, p_out = (m.double() for m in logra.projections[name])
        grad = per_name[f"{name}.weight"]  # (n, out, in)
        blocks.append(torch.einsum("ok,noi,ij->nkj", p_out, grad, p_in).reshape(len(examples), -1))
    expected = torch.cat(blocks, dim=1).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-7)

    logra.fit_fisher(expected)
    width = logra.rank**2
    preconditioned = logra.precondition(expected[:2])
    for layer in range(len(logra.layers)):
        g = expected[:, layer * width : (layer + 1) * width]
        fisher = g.T @ g / len(g)
        inverse = np.linalg.inv(fisher + 0.1 * np.trace(fisher) / width * np.eye(width))
        np.testing.assert_allclose(
            preconditioned[:, layer * width : (layer + 1) * width], g[:2] @ inverse, rtol=1e-4, atol=1e-6
        )


def test_logra_refuses_a_model_without_linear_layers():
    with pytest.raises(ValueError, match=r"no nn\.Linear"):
        LoGra(torch.nn.Sequential(torch.nn.Embedding(3, 2)), rank=2)


def test_finetune_reaches_the_model_that_train_and_score_evaluates(tiny):
    model, examples = tiny
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    settings = SFTSettings(epochs=2, learning_rate=1e-2, batch_size=3)
    subset = np.array([0, 2, 3, 5])
    checkpoints = finetune(model, examples, subset, 11, settings, PAD)
    assert len(checkpoints) == 2 and checkpoints[0][1] > checkpoints[1][1] > 0  # decaying learning rate
    for name, p in model.named_parameters():  # the model itself is untouched
        torch.testing.assert_close(p, before[name])
    queries = np.array([1, 4, 6])
    expected = train_and_score(model, examples, examples, [subset], [queries], [11], settings, PAD)[0]
    final = checkpoints[-1][0]
    with torch.no_grad():
        ids, labels = collate([examples[i] for i in queries], PAD)
        logits = torch.func.functional_call(model, final, (ids,), {"use_cache": False}).logits
        summed, counts = response_losses(logits, labels)
    np.testing.assert_allclose((summed / counts).numpy(), expected, rtol=1e-5)


def test_examples_per_call_fit_the_gradient_memory():
    # Two float32 copies of every example's gradient: 8 bytes per parameter per example.
    assert examples_per_call(79_500_000, 16, 6.0) == 6 * 2**30 // (8 * 79_500_000) == 10
    assert examples_per_call(494_032_768, 16, 6.0) == 1  # 4 GB for one example: still one at a time
    assert examples_per_call(790_000, 16, 6.0) == 16  # the cap
