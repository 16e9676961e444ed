"""Gradient-based attribution baselines on the target LM: grad-dot, grad-cos, TracIn and LoGra.

Every method here turns examples into feature vectors whose dot products are the method's
example-to-example influence, so group scores pool exactly like AirRep's embeddings
(:func:`modeling_airrep.group_influence`):

- ``grad-dot``: per-example gradients of the fine-tuned target LM, randomly projected; the score
  of (query, train) is the dot product of their projected gradients.
- ``grad-cos``: the same, with unit-length rows.
- ``tracin``: TracIn-CP (Pruthi et al., 2020): ``sum_c lr_c * g_q^c . g_i^c`` over the checkpoints
  at the end of each fine-tuning epoch, ``lr_c`` the epoch's mean learning rate. Concatenating
  ``sqrt(lr_c) * g^c`` over checkpoints turns that sum into one dot product.
- ``grad-dot-lora``, ``grad-cos-lora``, ``tracin-lora``: the same three on the gradients of the LoRA
  adapters only, where the labels' subset models train adapters (LESS, Xia et al., 2024, attributes
  through the adapters of a LoRA fine-tune in the same way; its Adam preconditioning of training
  gradients is not used here).
- ``logra``: LoGra (Choe et al., 2024): each ``nn.Linear``'s per-example gradient
  ``sum_t delta_t x_t^T`` is projected with a Kronecker-factored random matrix,
  ``P_out^T (sum_t delta_t x_t^T) P_in = sum_t (P_out^T delta_t)(P_in^T x_t)^T``, computed from
  hooks without forming the full gradient; query gradients are preconditioned with the damped
  inverse of each layer's empirical Fisher in the projected space.

Per-example gradients are of the example's own loss, the mean cross-entropy over its response
tokens (the loss the labels record). They come from ``torch.func`` (``vmap`` over ``grad``), and the
random projection of the flattened gradient is scikit-learn's ``SparseRandomProjection``, a
Johnson-Lindenstrauss map with about ``sqrt(n_params)`` non-zeros per output dimension, so it fits
in memory at any model size. dattri 0.3 is not used: checked on this project's versions, its LoGra
fails on HF Llama models and finds no ``nn.Linear`` in GPT-2, so these compact implementations,
tested against brute force, stand in for it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import scipy.sparse
import torch
from sklearn.random_projection import SparseRandomProjection
from torch.func import functional_call, grad, vmap
from tqdm.auto import tqdm

from airrep.labels.target_lm import SFTExample, collate, logits_at, response_positions, selects_logits, token_losses

# grad-dot, grad-cos and TracIn again, on the LoRA adapters' gradients only (as LESS does), for labels
# whose subset models train adapters.
LORA_GRADIENT_METHODS = ("grad-dot-lora", "grad-cos-lora", "tracin-lora")
GRADIENT_METHODS = ("grad-dot", "grad-cos", "tracin", "logra", *LORA_GRADIENT_METHODS)

Params = dict[str, torch.Tensor]


def _sorted_batches(examples: Sequence[SFTExample], batch_size: int, featurize, desc: str, dim: int) -> np.ndarray:
    """``featurize`` over batches of similar length (longest first, so little padding), in input order."""
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i].input_ids))
    out = np.zeros((len(examples), dim), dtype=np.float32)
    for start in tqdm(range(0, len(order), batch_size), desc=desc, leave=False):
        rows = order[start : start + batch_size]
        out[rows] = featurize([examples[i] for i in rows])
    return out


def examples_per_call(n_params: int, largest: int, memory_gib: float) -> int:
    """How many examples one :func:`per_example_gradients` call may take: at most ``largest``, and no more
    than fit in ``memory_gib`` at two float32 copies of the gradient each (vmap's output and the
    flattened copy); at least one."""
    return max(1, min(largest, int(memory_gib * 2**30 // (2 * 4 * n_params))))


def per_example_gradients(
    model: torch.nn.Module,
    params: Params,
    examples: Sequence[SFTExample],
    pad_id: int,
    feature_major: bool = False,
    response_logits_only: bool = True,
) -> torch.Tensor:
    """``(len(examples), n_params)``: the flattened gradient of each example's mean response loss.

    Parameters are flattened in ``params`` order. With ``feature_major`` the result is transposed,
    ``(n_params, len(examples))`` and contiguous, the layout :class:`GradientProjector` multiplies
    without a copy. ``model`` must use an attention implementation that ``vmap`` supports (``"eager"``).
    With ``response_logits_only`` the LM head runs only at response positions where the model takes
    ``logits_to_keep``; the gradients are the same up to rounding (off to measure the saving).
    """
    buffers = dict(model.named_buffers())
    ids, labels = collate(examples, pad_id)
    positions, targets = response_positions(labels)
    select = response_logits_only and selects_logits(model)

    def example_loss(p: Params, one_ids: torch.Tensor, one_positions: torch.Tensor, one_targets: torch.Tensor):
        def forward(**kwargs):
            return functional_call(model, (p, buffers), (one_ids.unsqueeze(0),), {"use_cache": False, **kwargs})

        summed, count = token_losses(logits_at(forward, one_positions.unsqueeze(0), select), one_targets.unsqueeze(0))
        return summed[0] / count[0].clamp(min=1)

    grads = vmap(grad(example_loss), in_dims=(None, 0, 0, 0))(params, ids, positions, targets)
    if feature_major:  # transposed block by block while concatenating: one copy, not two
        return torch.cat([grads[name].reshape(len(examples), -1).T for name in params], dim=0)
    return torch.cat([grads[name].reshape(len(examples), -1) for name in params], dim=1)


class GradientProjector:
    """A seeded sparse Johnson-Lindenstrauss projection from ``n_features`` to ``dim`` numbers."""

    def __init__(self, n_features: int, dim: int, seed: int = 0) -> None:
        if dim < 1:
            raise ValueError(f"the projection dimension must be at least 1, got {dim}")
        projection = SparseRandomProjection(n_components=dim, random_state=seed)
        # fit() only reads the shape; an empty sparse matrix avoids allocating n_features floats.
        projection.fit(scipy.sparse.csr_matrix((1, n_features), dtype=np.float32))
        # Stored by input feature (CSC) and applied to feature-major gradients: the product streams
        # through the gradients once and scatters into an output block that stays in cache, with no
        # copy of the input. scikit-learn's transform gathers from the whole gradient for every output
        # number, after transposing the batch; at 79.5M features and 4,096 numbers that is 3x slower
        # (benchmarks/bench_projection.py). Each output sums its terms in the same order either way,
        # so the numbers are identical (a test checks it).
        self._by_feature = projection.components_.tocsc()
        self.dim = dim

    def __call__(self, gradients: torch.Tensor) -> np.ndarray:
        """``(examples, dim)`` float32 from ``(examples, n_features)`` gradients."""
        return self.project_feature_major(np.ascontiguousarray(gradients.detach().cpu().numpy().T))

    def project_feature_major(self, columns: np.ndarray) -> np.ndarray:
        """``(examples, dim)`` float32 from C-contiguous ``(n_features, examples)`` gradients."""
        return np.ascontiguousarray((self._by_feature @ columns).T, dtype=np.float32)

    @property
    def matrix(self) -> scipy.sparse.csr_matrix:
        """``(dim, n_features)``: the projection, for checks against a direct computation."""
        return self._by_feature.tocsr()


def projected_gradients(
    model: torch.nn.Module,
    params: Params,
    examples: Sequence[SFTExample],
    pad_id: int,
    projector: GradientProjector,
    batch_size: int = 16,
    desc: str = "gradients",
    response_logits_only: bool = True,
) -> np.ndarray:
    """``(len(examples), projector.dim)`` float32: projected per-example gradients."""
    (features,), _ = project_gradients(
        model, params, examples, pad_id, [projector], batch_size, desc, response_logits_only
    )
    return features


def project_gradients(
    model: torch.nn.Module,
    params: Params,
    examples: Sequence[SFTExample],
    pad_id: int,
    projectors: Sequence[GradientProjector],
    batch_size: int = 16,
    desc: str = "gradients",
    response_logits_only: bool = True,
) -> tuple[list[np.ndarray], list[float]]:
    """Per-example gradients, computed once, projected by every projector.

    Returns:
        ``(features, seconds)``: for each projector, the ``(len(examples), dim)`` float32 features and
        the seconds featurizing would take with that projector alone (the shared gradients' time plus
        its own projection time).
    """
    params = {name: p.detach() for name, p in params.items()}
    gradient_seconds, projection_seconds = 0.0, [0.0] * len(projectors)

    def featurize(batch: list[SFTExample]) -> np.ndarray:
        nonlocal gradient_seconds
        tic = time.perf_counter()
        gradients = per_example_gradients(model, params, batch, pad_id, True, response_logits_only)
        gradients = gradients.detach().cpu().numpy()
        gradient_seconds += time.perf_counter() - tic
        parts = []
        for k, projector in enumerate(projectors):
            tic = time.perf_counter()
            parts.append(projector.project_feature_major(gradients))
            projection_seconds[k] += time.perf_counter() - tic
        return np.concatenate(parts, axis=1)

    dims = [p.dim for p in projectors]
    joined = _sorted_batches(examples, batch_size, featurize, desc, sum(dims))
    features = [np.ascontiguousarray(f) for f in np.split(joined, np.cumsum(dims)[:-1], axis=1)]
    return features, [gradient_seconds + s for s in projection_seconds]


def unit_rows(features: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.where(norms > 0, norms, 1.0)


def tracin_features(per_checkpoint: Sequence[np.ndarray], learning_rates: Sequence[float]) -> np.ndarray:
    """Concatenate ``sqrt(lr_c) * g^c``, so that a dot product is ``sum_c lr_c * g_q^c . g_i^c``."""
    parts = [
        np.float32(np.sqrt(lr)) * g.astype(np.float32) for g, lr in zip(per_checkpoint, learning_rates, strict=True)
    ]
    return np.concatenate(parts, axis=1)


class LoGra:
    """LoGra's Kronecker-factored gradient projection over every ``nn.Linear`` of a model.

    Args:
        model: The target LM. Its ``nn.Linear`` modules (attention, MLP and the LM head) are the
            layers whose gradients are projected.
        rank: ``k``: each layer's gradient becomes ``k x k`` numbers (``P_out`` and ``P_in`` have
            ``k`` columns each).
        seed: Seed of the Gaussian projection matrices.
        damping: Each layer's Fisher is damped by ``damping`` times its mean eigenvalue.
        response_logits_only: Run the LM head only at response positions where the model takes
            ``logits_to_keep``. The features are the same up to rounding; off to measure the saving.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        rank: int,
        seed: int = 0,
        damping: float = 0.1,
        response_logits_only: bool = True,
    ) -> None:
        if rank < 1:
            raise ValueError(f"the LoGra rank must be at least 1, got {rank}")
        self.model, self.rank, self.damping = model, rank, damping
        self.select_logits = response_logits_only and selects_logits(model)
        self.layers = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        if not self.layers:
            raise ValueError(f"{type(model).__name__} has no nn.Linear layer for LoGra to project")
        # Drawn on the CPU so that a seed gives the same projections on every device, then kept on the
        # model's device.
        generator = torch.Generator().manual_seed(seed)
        device = next(model.parameters()).device
        self.projections = {
            name: (
                (torch.randn(m.in_features, rank, generator=generator) / rank**0.5).to(device),
                (torch.randn(m.out_features, rank, generator=generator) / rank**0.5).to(device),
            )
            for name, m in self.layers.items()
        }
        self.inverse_fisher: list[np.ndarray] | None = None

    @property
    def dim(self) -> int:
        return len(self.layers) * self.rank * self.rank

    def features(
        self, examples: Sequence[SFTExample], pad_id: int, batch_size: int = 16, desc: str = "LoGra gradients"
    ) -> np.ndarray:
        """``(len(examples), dim)`` float32: each layer's projected per-example gradient, layer after layer."""
        return _sorted_batches(examples, batch_size, lambda batch: self._batch_features(batch, pad_id), desc, self.dim)

    def _batch_features(self, batch: Sequence[SFTExample], pad_id: int) -> np.ndarray:
        inputs: dict[str, torch.Tensor] = {}
        outputs: dict[str, torch.Tensor] = {}

        def capture(name: str):
            def hook(_module, args, output):
                inputs[name] = args[0].detach() @ self.projections[name][0].to(args[0].device, args[0].dtype)
                outputs[name] = output

            return hook

        handles = [m.register_forward_hook(capture(name)) for name, m in self.layers.items()]
        try:
            ids, labels = collate(batch, pad_id)
            device = next(self.model.parameters()).device
            positions, targets = (t.to(device) for t in response_positions(labels))
            # The LM head's input and output then hold only the response positions; the others had a
            # zero output gradient, so its projected gradient sum is unchanged.
            logits = logits_at(
                lambda **kwargs: self.model(input_ids=ids.to(device), use_cache=False, **kwargs),
                positions,
                self.select_logits,
            )
            summed, counts = token_losses(logits, targets)
            # Examples do not interact, so the gradient of the sum w.r.t. each example's activations is
            # that example's own gradient. Only activation gradients are asked for: no weight gradient
            # is formed.
            loss = (summed / counts.clamp(min=1)).sum()
            names = list(self.layers)
            deltas = torch.autograd.grad(loss, [outputs[n] for n in names], allow_unused=True)
        finally:
            for handle in handles:
                handle.remove()
        blocks = []
        for name, delta in zip(names, deltas, strict=True):
            x = inputs[name]
            if delta is None:
                blocks.append(torch.zeros(len(batch), self.rank * self.rank, device=x.device))
                continue
            d = delta @ self.projections[name][1].to(delta.device, delta.dtype)
            # (batch, tokens, k_out) x (batch, tokens, k_in) -> (batch, k_out, k_in)
            blocks.append(torch.einsum("bto,bti->boi", d, x).reshape(len(batch), -1))
        return torch.cat(blocks, dim=1).float().cpu().numpy()

    def fit_fisher(self, train_features: np.ndarray) -> None:
        """The damped inverse of each layer's empirical Fisher ``G^T G / n`` over training gradients."""
        width = self.rank * self.rank
        self.inverse_fisher = []
        for layer in range(len(self.layers)):
            g = train_features[:, layer * width : (layer + 1) * width].astype(np.float64)
            fisher = g.T @ g / max(len(g), 1)
            damping = self.damping * max(np.trace(fisher) / width, np.finfo(np.float64).tiny)
            self.inverse_fisher.append(np.linalg.inv(fisher + damping * np.eye(width)))

    def precondition(self, query_features: np.ndarray) -> np.ndarray:
        """Query features times the block-diagonal inverse Fisher; dot them with raw training features."""
        if self.inverse_fisher is None:
            raise RuntimeError("call fit_fisher() on the training features first")
        width = self.rank * self.rank
        blocks = [
            query_features[:, i * width : (i + 1) * width].astype(np.float64) @ inverse
            for i, inverse in enumerate(self.inverse_fisher)
        ]
        return np.concatenate(blocks, axis=1).astype(np.float32)
