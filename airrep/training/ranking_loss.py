"""AirRep's training objective (docs/design.md, "The training loss"): weighted pairwise RankNet over group scores."""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from typing import Any

import torch
from sentence_transformers.base.losses.gradcache import CachedLossMixin
from torch import Tensor, nn

from configuration_airrep import GROUP_POOLINGS
from modeling_airrep import group_influence

WEIGHTINGS = {
    # name: (pairs kept when delta >= t_min, or > 0 when t_min is None; weight = min(delta, t_max))
    "paper": (0.1, 5.0),
    "reference": (None, 10.0),
}

CITATION = """@inproceedings{sun2025airrep,
  title     = {Enhancing Training Data Attribution with Representational Optimization},
  author    = {Weiwei Sun and Haokun Liu and Nikhil Kandpal and Colin Raffel and Yiming Yang},
  booktitle = {Advances in Neural Information Processing Systems},
  year      = {2025},
  eprint    = {2505.18513},
}"""


def ranknet_loss(scores: Tensor, targets: Tensor, t_min: float | None = 0.1, t_max: float = 5.0) -> Tensor:
    """Weighted pairwise RankNet loss.

    For each query (row) and each ordered pair of subsets (j, k) with ``delta = targets[j] - targets[k]``
    above the threshold (``delta >= t_min``, or ``delta > 0`` when ``t_min`` is None), the loss is
    ``min(delta, t_max) * BCEWithLogits(scores[j] - scores[k], 1)``. The result is the mean over the
    kept pairs; pairs with a NaN target are skipped. With no kept pair it is 0 (and still has a graph).

    Args:
        scores: ``(n_queries, n_subsets)`` predicted group scores.
        targets: ``(n_queries, n_subsets)`` normalised labels (see [`airrep.labels.dataset.normalise_losses`]).
    """
    delta = targets.unsqueeze(2) - targets.unsqueeze(1)  # (q, j, k)
    logits = scores.unsqueeze(2) - scores.unsqueeze(1)
    keep = torch.isfinite(delta) & ((delta >= t_min) if t_min is not None else (delta > 0))
    if not keep.any():
        return scores.sum() * 0.0
    weights = delta[keep].clamp(max=t_max)
    # BCE-with-logits against a target of 1 is softplus(-x).
    return (weights * nn.functional.softplus(-logits[keep])).mean()


def inclusion_probabilities(weights: Tensor, fraction: float) -> Tensor:
    """Probabilities ``q_i = min(1, c * weights_i)`` that sum to ``fraction * n`` (or include every
    positive weight when fewer remain): Poisson sampling proportional to size, with the largest weights
    always taken. A zero weight is never taken.

    Scaling a taken term by ``1 / q_i`` (Horvitz-Thompson) makes a sampled sum an unbiased estimate of
    the whole sum, each taken term then contributing at most ``1 / c``.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"the fraction must be in (0, 1], got {fraction}")
    weights = weights.detach().double()
    if (weights < 0).any() or not torch.isfinite(weights).all():
        raise ValueError("weights must be finite and non-negative")
    budget = fraction * weights.numel()
    positive = weights > 0
    if budget >= int(positive.sum()):
        return positive.double()
    capped = torch.zeros_like(positive)
    while True:  # water-filling: at most one pass per weight that reaches 1
        free = positive & ~capped
        scale = (budget - int(capped.sum())) / weights[free].sum()
        over = free & (scale * weights >= 1)
        if not over.any():
            return torch.where(capped, 1.0, torch.where(free, scale * weights, 0.0))
        capped |= over


class AirRepRankingLoss(CachedLossMixin, nn.Module):
    def __init__(
        self,
        model: nn.Module,
        weighting: str = "paper",
        pooling: str = "attention",
        mini_batch_size: int | None = 32,
        show_progress_bar: bool = False,
        backward_fraction: float = 1.0,
    ) -> None:
        """Weighted pairwise RankNet loss over AirRep group scores, as in AirRep (Sun et al., 2025).

        Each training row holds R queries, K training subsets and a label per (query, subset): the
        normalised, clipped loss change of docs/design.md, "The training loss" (higher = the subset helped the query
        more). The model embeds every text of the batch once; each subset's score for each query is
        the attention-pooled group influence ``sum_i softmax(|s|)_i s_i`` with ``s_i = q . e_i``
        (``modeling_airrep.group_influence``, the same function used at inference). For every query
        and every pair of subsets whose labels differ by ``delta`` above a threshold, the loss is
        ``w(delta) * BCEWithLogits(score_j - score_k, 1)``, averaged over pairs.

        Args:
            model: The SentenceTransformer wrapping an AirRep checkpoint.
            weighting: ``"paper"`` (default): pairs with delta < 0.1 are dropped and the weight is
                ``min(delta, 5)``. ``"reference"``: every delta > 0 is kept and the weight is
                ``min(delta, 10)``, as in the reference training code.
            pooling: ``"attention"`` (AirRep) or ``"sum"`` (the linear datamodel), for ablations.
            mini_batch_size: Texts embedded per forward pass with GradCache (Gao et al., 2021), so a
                step's memory stays bounded whatever R and K are; ``None`` embeds the batch at once.
            show_progress_bar: Show a bar over the GradCache mini-batches.
            backward_fraction: With GradCache, re-embed with gradients only about this share of the
                step's texts (1: all of them, exact GradCache). Each text is taken with probability
                proportional to the norm of its embedding's gradient (capped at 1,
                :func:`inclusion_probabilities`) and its gradient divided by that probability, so the
                parameter gradient is unbiased; texts that move the loss most are always taken. A step
                then costs one forward pass without gradients over every text plus a forward and
                backward over the taken ones. The sample is drawn from torch's global generator (the
                trainer's seed makes it reproducible). Needs a model without dropout (the replay groups
                texts differently, so it cannot redraw the first pass's masks) and one process.

        References:
            - Sun et al., Enhancing Training Data Attribution with Representational Optimization,
              NeurIPS 2025: https://arxiv.org/abs/2505.18513
            - Burges et al., Learning to Rank using Gradient Descent (RankNet), ICML 2005.
            - Gao et al., Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup
              (GradCache), 2021: https://arxiv.org/abs/2101.06983

        Requirements:
            1. Subset-loss labels from ``generate_labels.py --mode train`` (docs/design.md, "The labels dataset").
            2. The AirRep data collator, which tokenizes the union of a step's texts into one column
               and passes ``{"queries", "members", "targets"}`` as the label.

        Inputs:
            +-------------------------------------------+---------------------------------------------+
            | Texts                                     | Labels                                      |
            +===========================================+=============================================+
            | one column: the union of the queries and  | ``queries`` (R,) and ``members`` (K, m) row |
            | subset members of the step, each once     | indices into the column; ``targets`` (R, K) |
            +-------------------------------------------+---------------------------------------------+

        Example:
            ::

                from sentence_transformers import SentenceTransformer
                from airrep.training.ranking_loss import AirRepRankingLoss

                model = SentenceTransformer("out/demo/model", trust_remote_code=True)
                loss = AirRepRankingLoss(model, weighting="paper", mini_batch_size=32)
        """
        super().__init__()
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {sorted(WEIGHTINGS)}, got {weighting!r}")
        if pooling not in GROUP_POOLINGS:
            raise ValueError(f"pooling must be one of {GROUP_POOLINGS}, got {pooling!r}")
        self.model = model
        self.weighting = weighting
        self.t_min, self.t_max = WEIGHTINGS[weighting]
        self.pooling = pooling
        self.mini_batch_size = mini_batch_size or 0
        self.show_progress_bar = show_progress_bar
        self.uses_gradient_cache = mini_batch_size is not None
        if not 0 < backward_fraction <= 1:
            raise ValueError(f"backward_fraction must be in (0, 1], got {backward_fraction}")
        if backward_fraction < 1:
            if not self.uses_gradient_cache:
                raise ValueError("backward_fraction < 1 samples GradCache's replay: it needs a mini_batch_size")
            if any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules()):
                raise ValueError("backward_fraction < 1 needs a model without dropout (set dropout to 0)")
        self.backward_fraction = backward_fraction

    def group_scores(self, embeddings: Tensor, labels: dict[str, Tensor]) -> Tensor:
        """``(R, K)`` group scores of the label's subsets for its queries."""
        members = [row[row >= 0] for row in labels["members"].detach().cpu().numpy()]  # -1 pads
        queries = embeddings[labels["queries"]]
        return group_influence(queries, embeddings, members, pooling=self.pooling).T

    def _loss(self, embeddings: Tensor, labels: dict[str, Tensor]) -> Tensor:
        return ranknet_loss(self.group_scores(embeddings, labels), labels["targets"].float(), self.t_min, self.t_max)

    def calculate_loss(
        self, reps: list[list[Tensor]], labels: dict[str, Tensor] | None = None, *, with_backward: bool = False
    ) -> Tensor:
        loss = self._loss(torch.cat(reps[0]), labels)
        if with_backward:
            loss.backward()
            loss = loss.detach()
        return loss

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: dict[str, Tensor]) -> Tensor:
        sentence_features = list(sentence_features)
        if len(sentence_features) != 1:
            raise ValueError(
                f"AirRepRankingLoss expects one text column (the step's union), got {len(sentence_features)}"
            )
        if self.uses_gradient_cache and self.backward_fraction < 1:
            return self._forward_sampled(sentence_features[0], labels)
        if self.uses_gradient_cache:
            return self.forward_cached(sentence_features, labels)
        return self._loss(self.model(sentence_features[0])["sentence_embedding"], labels)

    def _forward_sampled(self, features: dict[str, Tensor], labels: dict[str, Tensor]) -> Tensor:
        """GradCache whose replay re-embeds only a sample of the texts (``backward_fraction``)."""
        embedded = self.embed_minibatch_iter(features, with_grad=False, copy_random_state=False)
        reps = torch.cat([reps_mb for reps_mb, _ in embedded])
        if not torch.is_grad_enabled():
            return self._loss(reps, labels)
        reps.requires_grad_()
        loss = self._loss(reps, labels)
        loss.backward()
        loss = loss.detach().requires_grad_()
        grads = reps.grad.float()
        q = inclusion_probabilities(grads.norm(dim=1), self.backward_fraction).float()
        taken = (torch.rand(q.shape) < q).nonzero().squeeze(1)
        weighted = grads[taken] / q[taken, None]
        loss.register_hook(partial(self._replay, features, taken, weighted))
        return loss

    def _replay(self, features: dict[str, Tensor], taken: Tensor, weighted: Tensor, grad_output: Tensor) -> None:
        """Backward hook: re-embed the taken texts with gradients and pull their weighted gradients through."""
        if not taken.numel():
            return
        n = features["attention_mask"].shape[0]
        subset = {k: v[taken] if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == n else v
                  for k, v in features.items()}  # fmt: skip
        start = 0
        with torch.enable_grad():
            for reps, _ in self.embed_minibatch_iter(subset, with_grad=True, copy_random_state=False):
                dtype = torch.promote_types(reps.dtype, torch.float32)  # bf16 autocast: take the product in fp32
                grads_mb = weighted[start : start + len(reps)]
                (torch.dot(reps.flatten().to(dtype), grads_mb.flatten().to(dtype)) * grad_output).backward()
                start += len(reps)

    def get_config_dict(self) -> dict[str, Any]:
        return {
            "weighting": self.weighting,
            "t_min": self.t_min,
            "t_max": self.t_max,
            "pooling": self.pooling,
            "mini_batch_size": self.mini_batch_size or None,
            "backward_fraction": self.backward_fraction,
        }

    @property
    def citation(self) -> str:
        return CITATION
