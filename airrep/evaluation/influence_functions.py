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
recomputes every training gradient. The cost therefore grows with queries times pool: hours on a
CPU at 135M parameters. Given a ``workdir``, the job resumes: each stage of the fit and each pass of
queries is kept there once finished, and a rerun on the same model and examples starts after the
last one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
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
from airrep.outputs import write_json

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
        workdir: Where kronfluence writes its factors and scores, and where the job resumes from (each
            fit stage and each pass of queries that finished, for the same model, examples and
            settings); a temporary folder when None. Its ``progress.json`` keeps what each took.
    """
    if strategy not in KRONECKER_METHODS:
        raise ValueError(f"strategy must be one of {KRONECKER_METHODS}, got {strategy!r}")
    tracked = tracked_layers(model)
    task = ResponseLossTask(tracked, response_logits_only and selects_logits(model))
    modules = dict(model.named_modules())
    n_tracked_params = sum(p.numel() for name in tracked for p in modules[name].parameters())
    # Before kronfluence wraps the layers: the stamp reads the model's own weights.
    job = _job_stamp(model, train, queries, strategy, batch_size, seed, empirical_fisher, dtype, response_logits_only)
    prepared = prepare_model(model, task)
    loader = DataLoaderKwargs(collate_fn=lambda batch: collate_sft(batch, pad_id))
    factor_args = FactorArguments(
        strategy=strategy, use_empirical_fisher=empirical_fisher, activation_covariance_dtype=dtype,
        gradient_covariance_dtype=dtype, per_sample_gradient_dtype=dtype, lambda_dtype=dtype,
    )  # fmt: skip
    score_args = ScoreArguments(damping_factor=None, per_sample_gradient_dtype=dtype, precondition_dtype=dtype,
                                score_dtype=dtype)  # fmt: skip
    n_query_batch = query_batch_size(n_tracked_params, memory_gib, len(queries), torch.finfo(dtype).bits // 8)
    place = contextlib.nullcontext(workdir) if workdir else tempfile.TemporaryDirectory(prefix="kronfluence-")
    with place as out, warnings.catch_warnings():
        out = Path(out)
        progress_file = out / "progress.json"
        progress = json.loads(progress_file.read_text()) if progress_file.exists() else {}
        if progress.get("job") != job:  # another model, other examples or settings: nothing to reuse
            if progress_file.exists():  # only a folder this function made is emptied
                logger.warning("%s: %s holds another job's factors; starting over", strategy, out)
                shutil.rmtree(out)
            progress = {"job": job, "seconds": {}}
        out.mkdir(parents=True, exist_ok=True)
        seconds: dict[str, float] = progress["seconds"]

        def stage(name: str, run) -> None:
            """Run one resumable stage unless it finished before; kronfluence overwrites what a stopped
            run of it left."""
            if name in seconds:
                logger.info("%s: %s already done in %s", strategy, name, out)
                return
            torch.manual_seed(seed)  # the true Fisher's sampled labels do not depend on where a run resumed
            tic = time.perf_counter()
            run()
            seconds[name] = time.perf_counter() - tic
            write_json(progress_file, progress)

        # kronfluence 1.0.1 builds torch.cuda.amp.GradScaler (disabled on CPU), which torch now flags.
        warnings.filterwarnings("ignore", category=FutureWarning, module="kronfluence")
        analyzer = Analyzer(
            "airrep", prepared, task, cpu=not torch.cuda.is_available(), log_level=logging.WARNING,
            output_dir=str(out),
        )  # fmt: skip
        fit = dict(factors_name=strategy, factor_args=factor_args, overwrite_output_dir=True)
        data = dict(dataset=list(train), per_device_batch_size=batch_size, dataloader_kwargs=loader)
        fit_stages = {
            "covariances": lambda: analyzer.fit_covariance_matrices(**fit, **data),
            "eigendecomposition": lambda: analyzer.perform_eigendecomposition(**fit),
        }
        if strategy == "ekfac":
            fit_stages["eigenvalue refit"] = lambda: analyzer.fit_lambda_matrices(**fit, **data)
        for name, run in fit_stages.items():
            stage(name, run)
        passes, parts = [], []
        for start in range(0, len(queries), n_query_batch):
            passes.append(name := f"queries {start}-{min(start + n_query_batch, len(queries))}")
            scores_name = name.replace(" ", "-")
            stage(name, lambda start=start, scores_name=scores_name: analyzer.compute_pairwise_scores(
                scores_name, factors_name=strategy,
                query_dataset=list(queries[start : start + n_query_batch]), train_dataset=list(train),
                per_device_query_batch_size=n_query_batch, per_device_train_batch_size=batch_size,
                score_args=score_args, dataloader_kwargs=loader, overwrite_output_dir=True,
            ))  # fmt: skip
            parts.append(analyzer.load_pairwise_scores(scores_name)["all_modules"])
        scores = torch.cat(parts) if parts else torch.zeros(0, len(train))
        # Only this run's stages: a pass of another size, left by a run with another memory budget, is not.
        fit_seconds = sum(seconds[name] for name in fit_stages)
        score_seconds = sum(seconds[name] for name in passes)
        factors = analyzer.factors_output_dir(strategy)
        factor_bytes = sum(f.stat().st_size for name in _PRECONDITIONING_FACTORS[strategy]
                           for f in factors.glob(f"{name}*.safetensors"))  # fmt: skip
    logger.info(
        "%s: factors of %d layers fitted in %.1f s, %d x %d scores in %.1f s (%d queries per pass)",
        strategy, len(tracked), fit_seconds, len(queries), len(train), score_seconds, n_query_batch,
    )  # fmt: skip
    return InfluenceScores(scores.detach().cpu().numpy(), fit_seconds, score_seconds, factor_bytes, len(tracked))


def _job_stamp(
    model: torch.nn.Module, train: Sequence[SFTExample], queries: Sequence[SFTExample], *settings: Any
) -> str:
    """A fingerprint of what an influence job's results depend on: the weights, the examples and the
    settings, so that a workdir is resumed only by the same job."""
    digest = hashlib.sha256(repr([str(s) for s in settings]).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    for examples in (train, queries):
        digest.update(str(len(examples)).encode())
        for example in examples:
            for tokens in (example.input_ids, example.labels):
                digest.update(np.asarray(tokens, dtype=np.int64).tobytes() + b"|")
    return digest.hexdigest()
