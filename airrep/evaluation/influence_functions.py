"""Influence functions with Kronecker-factored curvature (EK-FAC and K-FAC), through kronfluence.

``ekfac`` is the influence-function estimate of Grosse et al. (2023), "Studying large language model
generalization with influence functions": the score of (query ``q``, training example ``i``) is
``g_q^T (G + lambda I)^-1 g_i``, where ``g`` are per-example gradients of the fine-tuned target LM
and ``G`` is its Gauss-Newton Hessian, approximated layer by layer. For an ``nn.Linear`` with input
activations ``a`` and output gradients ``s``, K-FAC takes ``G ~ A (x) S`` with ``A = E[a a^T]`` and
``S = E[s s^T]``; EK-FAC keeps the eigenvectors ``Q_A, Q_S`` of the two factors and refits the
eigenvalues to the gradients themselves, ``Lambda = E[(Q_S^T g Q_A)^2]`` (George et al., 2018).
``kfac`` keeps the Kronecker products of the factors' own eigenvalues.

The maintained implementation is kronfluence (Bae et al.); this module only tells it what the
labels' loss is. Every example's loss is its mean cross-entropy over its response tokens, the loss
the labels record and the other gradient methods differentiate
(:mod:`airrep.evaluation.gradient_methods`). The factors are fitted with labels sampled from the
model (the true Fisher, kronfluence's default and the paper's), over every real token of the
training examples. The damping is kronfluence's heuristic, 0.1 times the mean of the eigenvalues,
as LoGra's here. The tracked layers are every ``nn.Linear`` but the LM head, whose output factor
would be vocabulary x vocabulary (2.4 billion numbers for SmolLM2's 49,152 tokens).

Nothing is stored per example: the factors are the whole index, and every batch of queries
recomputes every training gradient. The cost therefore grows with queries times pool.
"""

from __future__ import annotations

import logging
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from kronfluence.analyzer import Analyzer, prepare_model
from kronfluence.arguments import FactorArguments, ScoreArguments
from kronfluence.task import Task
from kronfluence.utils.dataset import DataLoaderKwargs

from airrep.labels.target_lm import (
    IGNORE_INDEX,
    SFTExample,
    collate,
    logits_at,
    response_positions,
    selects_logits,
    token_losses,
)

KRONECKER_METHODS = ("ekfac", "kfac")

# What preconditioning reads of each strategy's factors (kronfluence's file names): the "index" whose
# size the report charges to the method.
_PRECONDITIONING_FACTORS = {
    "ekfac": ("activation_eigenvectors", "gradient_eigenvectors", "lambda_matrix"),
    "kfac": ("activation_eigenvectors", "gradient_eigenvectors", "activation_eigenvalues", "gradient_eigenvalues"),
}

logger = logging.getLogger(__name__)


def tracked_layers(model: torch.nn.Module) -> list[str]:
    """Names of the ``nn.Linear`` modules whose curvature is factored: all but the LM head."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not head]
    if not names:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer besides its LM head to factor")
    return names


def collate_sft(batch: Sequence[SFTExample], pad_id: int) -> dict[str, torch.Tensor]:
    """A right-padded batch with the response positions and targets, and a mask of its real tokens."""
    ids, labels = collate(batch, pad_id)
    positions, targets = response_positions(labels)
    lengths = torch.tensor([len(e.input_ids) for e in batch])
    mask = (torch.arange(ids.shape[1]) < lengths[:, None]).long()
    return {"input_ids": ids, "positions": positions, "targets": targets, "attention_mask": mask}


class ResponseLossTask(Task):
    """kronfluence's task for SFT examples: the sum over the batch of each example's mean response loss.

    With ``sample`` the targets are drawn from the model's own predictions at the same positions, for
    the true Fisher. Padding is right-padding, which a causal LM needs no mask for; the mask given to
    kronfluence keeps pads out of the activation statistics.
    """

    def __init__(self, tracked: list[str], select_logits: bool) -> None:
        self.tracked = tracked
        self.select_logits = select_logits

    def _loss(self, batch: dict[str, torch.Tensor], model: torch.nn.Module, sample: bool) -> torch.Tensor:
        ids = batch["input_ids"]
        logits = logits_at(lambda **kwargs: model(input_ids=ids, use_cache=False, **kwargs), batch["positions"],
                           self.select_logits)  # fmt: skip
        targets = batch["targets"]
        if sample:
            with torch.no_grad():
                probs = torch.softmax(logits.detach().float().reshape(-1, logits.shape[-1]), dim=-1)
                drawn = torch.multinomial(probs, 1).view(targets.shape)
                targets = drawn.masked_fill(targets == IGNORE_INDEX, IGNORE_INDEX)
        summed, count = token_losses(logits, targets)
        return (summed / count.clamp(min=1)).sum()

    def compute_train_loss(self, batch: Any, model: torch.nn.Module, sample: bool = False) -> torch.Tensor:
        return self._loss(batch, model, sample)

    def compute_measurement(self, batch: Any, model: torch.nn.Module) -> torch.Tensor:
        return self._loss(batch, model, sample=False)

    def get_influence_tracked_modules(self) -> list[str]:
        return self.tracked

    def get_attention_mask(self, batch: Any) -> torch.Tensor:
        return batch["attention_mask"]


@dataclass
class InfluenceScores:
    """Pair scores of a Kronecker-factored influence function and what they cost."""

    scores: np.ndarray  # (n_queries, n_train); positive: the training example lowers the query's loss
    fit_seconds: float  # covariances, eigendecompositions and (EK-FAC) eigenvalue refit
    score_seconds: float  # query gradients, their preconditioning, and every training gradient
    factor_bytes: int  # what preconditioning reads, as stored
    n_tracked: int  # nn.Linear layers factored


def query_batch_size(n_tracked_params: int, memory_gib: float, n_queries: int, itemsize: int = 4) -> int:
    """Queries per pass over the training set: their preconditioned gradients, one full gradient each
    (twice, while being preconditioned), held in ``memory_gib``; at least one."""
    return max(1, min(n_queries, int(memory_gib * 2**30 // (2 * itemsize * n_tracked_params))))


def kronecker_influence(
    model: torch.nn.Module,
    train: Sequence[SFTExample],
    queries: Sequence[SFTExample],
    pad_id: int,
    strategy: str = "ekfac",
    batch_size: int = 16,
    memory_gib: float = 6.0,
    seed: int = 0,
    empirical_fisher: bool = False,
    dtype: torch.dtype = torch.float32,
    response_logits_only: bool = True,
    workdir: str | Path | None = None,
) -> InfluenceScores:
    """EK-FAC (or K-FAC) influence of every training example on every query.

    Args:
        model: The target LM; it is wrapped in place by kronfluence, so pass a copy you can spare.
        strategy: ``"ekfac"`` or ``"kfac"``.
        batch_size: Training examples per batch, for the factors and the scores.
        memory_gib: Memory for the queries' preconditioned gradients; fewer queries per pass over the
            training set below it (the scores do not change).
        seed: Seeds the labels sampled for the true Fisher.
        empirical_fisher: Fit the factors with the examples' own targets instead of sampled ones.
        dtype: Precision of the statistics, the per-example gradients and the scores (eigendecompositions
            are float64 either way).
        response_logits_only: Run the LM head only at response positions (it is not tracked, so the
            scores are the same).
        workdir: Where kronfluence writes its factors and scores; a temporary folder when None.
    """
    if strategy not in KRONECKER_METHODS:
        raise ValueError(f"strategy must be one of {KRONECKER_METHODS}, got {strategy!r}")
    tracked = tracked_layers(model)
    task = ResponseLossTask(tracked, response_logits_only and selects_logits(model))
    modules = dict(model.named_modules())
    n_tracked_params = sum(p.numel() for name in tracked for p in modules[name].parameters())
    prepared = prepare_model(model, task)
    loader = DataLoaderKwargs(collate_fn=lambda batch: collate_sft(batch, pad_id))
    factor_args = FactorArguments(
        strategy=strategy, use_empirical_fisher=empirical_fisher, activation_covariance_dtype=dtype,
        gradient_covariance_dtype=dtype, per_sample_gradient_dtype=dtype, lambda_dtype=dtype,
    )  # fmt: skip
    score_args = ScoreArguments(damping_factor=None, per_sample_gradient_dtype=dtype, precondition_dtype=dtype,
                                score_dtype=dtype)  # fmt: skip
    n_query_batch = query_batch_size(n_tracked_params, memory_gib, len(queries), torch.finfo(dtype).bits // 8)
    with tempfile.TemporaryDirectory(prefix="kronfluence-") as scratch, warnings.catch_warnings():
        # kronfluence 1.0.1 builds torch.cuda.amp.GradScaler (disabled on CPU), which torch now flags.
        warnings.filterwarnings("ignore", category=FutureWarning, module="kronfluence")
        analyzer = Analyzer(
            "airrep", prepared, task, cpu=not torch.cuda.is_available(), log_level=logging.WARNING,
            output_dir=str(workdir or scratch),
        )  # fmt: skip
        torch.manual_seed(seed)
        tic = time.perf_counter()
        analyzer.fit_all_factors(
            strategy, dataset=list(train), per_device_batch_size=batch_size, factor_args=factor_args,
            dataloader_kwargs=loader, overwrite_output_dir=True,
        )  # fmt: skip
        fit_seconds = time.perf_counter() - tic
        tic = time.perf_counter()
        analyzer.compute_pairwise_scores(
            "pairs", factors_name=strategy, query_dataset=list(queries), train_dataset=list(train),
            per_device_query_batch_size=n_query_batch, per_device_train_batch_size=batch_size,
            score_args=score_args, dataloader_kwargs=loader, overwrite_output_dir=True,
        )  # fmt: skip
        score_seconds = time.perf_counter() - tic
        scores = analyzer.load_pairwise_scores("pairs")["all_modules"]
        factors = analyzer.factors_output_dir(strategy)
        factor_bytes = sum(f.stat().st_size for name in _PRECONDITIONING_FACTORS[strategy]
                           for f in factors.glob(f"{name}*.safetensors"))  # fmt: skip
    logger.info(
        "%s: factors of %d layers fitted in %.1f s, %d x %d scores in %.1f s (%d queries per pass)",
        strategy, len(tracked), fit_seconds, len(queries), len(train), score_seconds, n_query_batch,
    )  # fmt: skip
    return InfluenceScores(scores.detach().cpu().numpy(), fit_seconds, score_seconds, factor_bytes, len(tracked))
