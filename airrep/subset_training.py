"""Fine-tune copies of the target LM on training subsets and record per-query response losses.

Several subset models train at once: their parameters are stacked along a new leading dimension and
the forward pass is vectorised with ``torch.func.vmap``. AdamW is elementwise, so one optimizer over
the stacked parameters is exactly one AdamW per model. With one model per batch the plain forward is
used, which works for any HF causal LM.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.func import functional_call, vmap

from airrep.target_lm import SFTExample, collate, response_losses


@dataclass(frozen=True)
class SFTSettings:
    epochs: int = 1
    learning_rate: float = 1e-3
    batch_size: int = 16
    weight_decay: float = 0.0
    eval_batch_size: int = 32


def _stack(
    rows: Sequence[Sequence[SFTExample]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(models, examples, length) ids and labels, padded to the longest example of all models."""
    length = max(len(e.input_ids) for row in rows for e in row)
    pairs = [collate(row, pad_id, length) for row in rows]
    return torch.stack([p[0] for p in pairs]).to(device), torch.stack([p[1] for p in pairs]).to(device)


def train_and_score(
    model: torch.nn.Module,
    pool: Sequence[SFTExample],
    queries: Sequence[SFTExample],
    subsets: Sequence[np.ndarray],
    query_sets: Sequence[np.ndarray],
    seeds: Sequence[int],
    settings: SFTSettings,
    pad_id: int,
) -> np.ndarray:
    """Train one copy of ``model`` per subset and return their query losses.

    Args:
        model: The target LM; its weights are the starting point of every copy and are not changed.
        pool: Tokenized training examples; ``subsets`` index into it.
        queries: Tokenized queries; ``query_sets`` index into it (one set per model, equal sizes).
        subsets: One index array per model, all of the same size.
        seeds: One seed per model; it fixes the model's data order.
        settings: SFT hyper-parameters (AdamW, linear decay to 0).
        pad_id: Padding token id.

    Returns:
        ``(n_models, n_queries_per_model)`` float64: each query's mean cross-entropy over its response
        tokens, NaN where training diverged.
    """
    n_models = len(subsets)
    sizes = {len(s) for s in subsets}
    if len(sizes) != 1 or len({len(q) for q in query_sets}) != 1:
        raise ValueError("models trained together need subsets of one size and query sets of one size")
    if not (len(query_sets) == len(seeds) == n_models):
        raise ValueError("subsets, query_sets and seeds must have one entry per model")
    device = next(model.parameters()).device
    start = {name: p.detach() for name, p in model.named_parameters()}
    buffers = dict(model.named_buffers())
    stacked = {name: p.unsqueeze(0).repeat(n_models, *([1] * p.ndim)).requires_grad_() for name, p in start.items()}

    def logits_of(params: dict[str, torch.Tensor], ids: torch.Tensor) -> torch.Tensor:
        return functional_call(model, (params, buffers), (ids,), {"use_cache": False}).logits

    def forward(ids: torch.Tensor) -> torch.Tensor:  # ids: (models, examples, length)
        if n_models == 1:
            only = {name: p[0] for name, p in stacked.items()}
            return logits_of(only, ids[0]).unsqueeze(0)
        return vmap(logits_of)(stacked, ids)

    optimizer = torch.optim.AdamW(
        stacked.values(), lr=settings.learning_rate, weight_decay=settings.weight_decay, foreach=True
    )
    subset_size = sizes.pop()
    steps_per_epoch = math.ceil(subset_size / settings.batch_size)
    total_steps = steps_per_epoch * settings.epochs
    rngs = [random.Random(seed) for seed in seeds]
    orders: list[list[int]] = [[] for _ in range(n_models)]
    step = 0
    was_training = model.training
    model.eval()  # no dropout: runs are reproducible and vmap needs no randomness
    try:
        for _epoch in range(settings.epochs):
            for m in range(n_models):
                orders[m] = [int(i) for i in subsets[m]]
                rngs[m].shuffle(orders[m])
            for begin in range(0, subset_size, settings.batch_size):
                rows = [[pool[i] for i in orders[m][begin : begin + settings.batch_size]] for m in range(n_models)]
                ids, labels = _stack(rows, pad_id, device)
                summed, counts = response_losses(forward(ids), labels)
                per_model = summed.sum(-1) / counts.sum(-1).clamp(min=1)
                per_model.sum().backward()
                for group in optimizer.param_groups:
                    group["lr"] = settings.learning_rate * (1 - step / total_steps)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1

        n_queries = len(query_sets[0])
        losses = np.empty((n_models, n_queries))
        with torch.no_grad():
            for begin in range(0, n_queries, settings.eval_batch_size):
                rows = [[queries[int(i)] for i in qs[begin : begin + settings.eval_batch_size]] for qs in query_sets]
                ids, labels = _stack(rows, pad_id, device)
                summed, counts = response_losses(forward(ids), labels)
                per_query = summed / counts.clamp(min=1)
                per_query[counts == 0] = float("nan")
                losses[:, begin : begin + per_query.shape[1]] = per_query.double().cpu().numpy()
    finally:
        model.train(was_training)
    return losses
