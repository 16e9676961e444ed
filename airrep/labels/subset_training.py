"""Fine-tune copies of the target LM on training subsets and record per-query response losses.

Several subset models train at once: their parameters are stacked along a new leading dimension and
the forward pass is vectorised with ``torch.func.vmap``. AdamW is elementwise, so one optimizer over
the stacked parameters is exactly one AdamW per model. With one model per batch the plain forward is
used, which works for any HF causal LM. Either way the LM head runs only at the positions whose next
token is a response token (``target_lm.response_positions``), the only logits the loss reads.

With ``SFTSettings.lora_rank`` > 0 each subset model trains LoRA adapters (``peft``) instead of every
weight: the adapters are injected into a copy of the target LM, only they are stacked, and the frozen
base weights are shared by every model in the batch.

With adapters in the top layers only (``SFTSettings.lora_layers``), the layers below them are the same
in every subset model: :func:`cache_frozen_layers` runs them once over the pool and the queries and
hands back a model that starts from their output, so each subset model runs only the adapted layers.

A training batch is packed: its examples share rows of ``SFTSettings.pack_length`` tokens, each kept
to itself by position ids and a block-causal mask (``target_lm.collate_packed``). Examples average a
fifth of the longest one, so padding each to the longest of the step would spend most of the step
on padding, the more so the more models are stacked.
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import psutil
import torch
from torch.func import functional_call, vmap

from airrep.labels.target_lm import (
    TRUNCATIONS,
    SFTExample,
    collate,
    collate_packed,
    logits_at,
    pack,
    packed_attention_mask,
    response_positions,
    selects_logits,
    sft_example,
    takes_packed_rows,
    token_losses,
    token_misses,
)


@dataclass(frozen=True)
class SFTSettings:
    epochs: int = 1
    learning_rate: float = 1e-3
    batch_size: int = 16
    weight_decay: float = 0.0
    eval_batch_size: int = 32
    # Run the LM head only at response positions (``logits_to_keep``) where the model allows it,
    # rather than everywhere and then gathering. Same losses up to rounding; off to measure the saving.
    response_logits_only: bool = True
    # Forward passes under bf16 autocast; weights, AdamW states and the recorded losses stay fp32.
    bf16: bool = False
    # Training rows hold several examples, up to this many tokens (at least the step's longest
    # example); 0 gives every example a row of its own. Same losses up to rounding. Of 32, 64 and 96,
    # 64 was the fastest with the demo target LM (benchmarks/HISTORY.md): longer rows fill better but
    # make the masked attention longer.
    pack_length: int = 64
    # LoRA: 0 fine-tunes every weight. R > 0 trains rank-R adapters (peft) on the modules that
    # ``lora_target_modules`` names (peft's "all-linear": every linear layer but the output head; or
    # comma-separated module names), scaled by ``lora_alpha / R`` (default alpha: 2R). Every model starts
    # from the same adapters, drawn with ``lora_seed`` (peft's init: A random, B zero, so the model starts
    # as the target LM).
    # ``lora_layers`` N > 0 puts adapters only in the top N decoder layers (peft's ``layers_to_transform``):
    # nothing below them trains, so the backward pass stops at the lowest adapted layer.
    lora_rank: int = 0
    lora_alpha: float | None = None
    lora_target_modules: str = "all-linear"
    lora_seed: int = 0
    lora_layers: int = 0
    # How the AirRep authors' release fine-tunes (scripts/02_sft_subsets.py), as options; the defaults
    # are this project's. ``lr_schedule``: "linear" decays to 0 over the run, "constant" keeps it (theirs).
    # ``max_grad_norm``: clip each model's gradient to this global norm (theirs: 1.0; 0 = no clipping).
    # ``prompt_template``, ``truncation``: the user turn and how long examples are cut (target_lm.sft_example;
    # theirs: "Question: {prompt}\nAnswer:" and "right"). ``max_tokens``: where examples are cut (theirs:
    # 512; 0 = the target LM's context). ``empty_response_loss``: the loss recorded for a query with no
    # response token left after the cut (theirs: 10.0; None records NaN, and the query is left out).
    lr_schedule: str = "linear"
    max_grad_norm: float = 0.0
    prompt_template: str | None = None
    truncation: str = "prompt"
    max_tokens: int = 0
    empty_response_loss: float | None = None

    @classmethod
    def from_recipe(cls, recipe: Mapping[str, Any]) -> SFTSettings:
        """The settings a labels recipe names (a ``LabelPreset`` as a dict, or the ``settings`` that a
        labels dataset's ``summary.json`` records); what it leaves out keeps its default."""
        names = ("epochs", "learning_rate", "batch_size", "weight_decay", "bf16", *LORA_FIELDS, *RELEASE_FIELDS)
        return cls(**{name: recipe[name] for name in names if name in recipe})

    def __post_init__(self) -> None:
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.truncation not in TRUNCATIONS:
            raise ValueError(f"truncation must be one of {TRUNCATIONS}, got {self.truncation!r}")

    def tokenize(self, tokenizer, record, model: torch.nn.Module, index: int | None = None) -> SFTExample:
        """``record`` as an SFT example of ``model`` (:func:`airrep.labels.target_lm.sft_example`) with these
        settings' prompt template, truncation and length."""
        length = self.max_tokens or getattr(model.config, "max_position_embeddings", 512)
        return sft_example(tokenizer, record, length, index, self.prompt_template, self.truncation)

    @property
    def lora_alpha_used(self) -> float:
        """``lora_alpha``, or its default of twice the rank."""
        return self.lora_alpha if self.lora_alpha is not None else 2 * self.lora_rank

    def trained_parameters(self) -> str:
        """Which parameters a subset model trains, in words (for cards and summaries)."""
        if not self.lora_rank:
            return "every weight of the target LM (full fine-tuning)"
        return (
            f"LoRA adapters only (peft): rank {self.lora_rank}, alpha {self.lora_alpha_used:g}, "
            f"on {self.lora_target_modules}"
            + (f" of the top {self.lora_layers} decoder layer(s)" if self.lora_layers else "")
            + ", "
            f"no dropout, adapters initialised with seed {self.lora_seed}; the target LM's weights stay frozen"
        )


LORA_FIELDS = ("lora_rank", "lora_alpha", "lora_target_modules", "lora_seed", "lora_layers")
# The settings that reproduce the authors' fine-tuning; at their defaults they are left out of a labels
# folder's settings record, so folders made before they existed still resume.
RELEASE_FIELDS = ("lr_schedule", "max_grad_norm", "prompt_template", "truncation", "max_tokens", "empty_response_loss")
LR_SCHEDULES = ("linear", "constant")


def first_adapted_layer(model: torch.nn.Module, settings: SFTSettings) -> int:
    """The index of the lowest decoder layer that gets adapters under ``settings.lora_layers`` (N > 0).

    Raises:
        ValueError: N is not between 1 and the model's number of layers.
    """
    total = model.config.num_hidden_layers
    if not 0 < settings.lora_layers <= total:
        raise ValueError(f"lora_layers must be in [1, {total}] (the model's layers), not {settings.lora_layers}")
    return total - settings.lora_layers


def with_lora(model: torch.nn.Module, settings: SFTSettings) -> torch.nn.Module:
    """A copy of ``model`` with LoRA adapters injected (``peft.inject_adapter_in_model``): the same class and
    forward, with only the adapters trainable. ``model`` itself is not changed."""
    from peft import LoraConfig, inject_adapter_in_model

    if settings.lora_rank < 1:
        raise ValueError(f"lora_rank must be at least 1 to add adapters, got {settings.lora_rank}")
    targets = settings.lora_target_modules
    modules = targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()]
    layers = {}
    if settings.lora_layers:
        total = model.config.num_hidden_layers
        layers = {"layers_to_transform": list(range(first_adapted_layer(model, settings), total)),
                  "layers_pattern": "layers"}  # fmt: skip
        if modules == "all-linear":  # peft takes layers_to_transform only with module names: spell them out
            head = model.get_output_embeddings()
            modules = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                              if isinstance(module, torch.nn.Linear) and module is not head})  # fmt: skip
    config = LoraConfig(
        r=settings.lora_rank,
        lora_alpha=settings.lora_alpha_used,
        target_modules=modules,
        lora_dropout=0.0,
        bias="none",
        **layers,
    )
    # Weights that are already frozen are shared with the copy rather than copied: nothing trains or
    # changes them, and the frozen-layer cache's table may be large.
    shared = {id(p): p for p in model.parameters() if not p.requires_grad}
    with torch.random.fork_rng(devices=[]):  # the adapters' init is seeded without touching the caller's RNG
        torch.manual_seed(settings.lora_seed)
        adapted = inject_adapter_in_model(config, copy.deepcopy(model, shared)).eval()
    for name, parameter in adapted.named_parameters():
        parameter.requires_grad_("lora_" in name)
    return adapted


def merged_parameters(adapted: torch.nn.Module, adapters: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The full weights, named as in the model without adapters, of ``adapted`` (from :func:`with_lora`)
    carrying the adapter values ``adapters``: each adapted weight plus its LoRA update (peft's
    ``get_delta_weight``), every other weight as it is."""
    from peft.tuners.lora import LoraLayer

    with torch.no_grad():
        for name, parameter in adapted.named_parameters():
            if name in adapters:
                parameter.copy_(adapters[name])
        merged = {}
        for name, parameter in adapted.named_parameters():
            if "lora_" not in name:
                merged[name.replace(".base_layer.", ".")] = parameter.detach().clone()
        for name, module in adapted.named_modules():
            if isinstance(module, LoraLayer):
                merged[f"{name}.weight"] = module.base_layer.weight + module.get_delta_weight("default")
    return merged


Inputs = dict[str, torch.Tensor]


def _per_model(collated: Sequence[tuple[torch.Tensor, ...]], device: torch.device) -> list[torch.Tensor]:
    """Each field of the models' collated tensors, stacked along a leading model dimension."""
    return [torch.stack(field).to(device) for field in zip(*collated, strict=True)]


def _stack(rows: Sequence[Sequence[SFTExample]], pad_id: int, device: torch.device) -> tuple[Inputs, torch.Tensor]:
    """Model inputs and labels, ``(models, examples, length)``, each example padded to the longest of all."""
    length = max(len(e.input_ids) for row in rows for e in row)
    ids, labels = _per_model([collate(row, pad_id, length) for row in rows], device)
    return {"input_ids": ids}, labels


def _stack_packed(
    rows: Sequence[Sequence[SFTExample]], pad_id: int, device: torch.device, pack_length: int, config: object
) -> tuple[Inputs, torch.Tensor]:
    """Model inputs and labels, ``(models, rows, length)``: each model's examples packed into rows.

    Every model gets as many rows as the model that needs the most, so that ``vmap`` sees one shape.
    """
    capacity = max(pack_length, *(len(e.input_ids) for row in rows for e in row))
    packed = [pack(row, capacity) for row in rows]
    n_rows = max(len(p) for p in packed)
    length = max(sum(len(e.input_ids) for e in r) for p in packed for r in p)  # no longer than needed
    ids, labels, position_ids = _per_model([collate_packed(p, pad_id, length, n_rows) for p in packed], device)
    mask = packed_attention_mask(config, position_ids.flatten(0, 1))
    inputs = {"input_ids": ids, "position_ids": position_ids, "attention_mask": mask.unflatten(0, ids.shape[:2])}
    return inputs, labels


class _Stacked:
    """Copies of one model's trainable parameters stacked along a leading dimension, run with ``vmap``.

    Frozen parameters (the base weights under LoRA) are not copied: they are passed with the buffers,
    outside the vmapped dimension, so every model reads the same tensors.
    """

    def __init__(self, model: torch.nn.Module, n_models: int, select_logits: bool = True, bf16: bool = False) -> None:
        self.model = model
        self.buffers = dict(model.named_buffers())
        self.buffers.update({name: p.detach() for name, p in model.named_parameters() if not p.requires_grad})
        self.params = {
            name: p.detach().unsqueeze(0).repeat(n_models, *([1] * p.ndim)).requires_grad_()
            for name, p in model.named_parameters()
            if p.requires_grad
        }
        self.n_models = n_models
        self.select_logits = select_logits and selects_logits(model)
        self.bf16 = bf16

    def _logits(self, params: dict[str, torch.Tensor], inputs: Inputs, positions: torch.Tensor) -> torch.Tensor:
        def forward(**kwargs: object) -> object:
            return functional_call(self.model, (params, self.buffers), (), {"use_cache": False, **inputs, **kwargs})

        return logits_at(forward, positions, self.select_logits)

    def __call__(self, inputs: Inputs, positions: torch.Tensor) -> torch.Tensor:
        """Logits of every model at ``positions``: inputs ``(models, rows, length)`` (the mask
        ``(models, rows, 1, length, length)``), positions ``(models, rows, P)``."""
        if self.n_models == 1:
            one = {name: p[0] for name, p in self.params.items()}
            return self._logits(one, {k: v[0] for k, v in inputs.items()}, positions[0]).unsqueeze(0)
        return vmap(self._logits)(self.params, inputs, positions)

    def response_logits(self, inputs: Inputs, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Float32 logits at the response positions, ``(models, rows, P, vocab)``, and their targets."""
        positions, targets = response_positions(labels)
        with torch.autocast(labels.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            logits = self(inputs, positions)
        return logits.float(), targets

    def response_losses(self, inputs: Inputs, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed response loss and response-token count, ``(models, rows)`` each."""
        return token_losses(*self.response_logits(inputs, labels))


EpochCallback = Callable[[int, dict[str, torch.Tensor], float], None]


def _finetune(
    stacked: _Stacked,
    pool: Sequence[SFTExample],
    subsets: Sequence[np.ndarray],
    seeds: Sequence[int],
    settings: SFTSettings,
    pad_id: int,
    on_epoch_end: EpochCallback | None = None,
) -> None:
    n_models = stacked.n_models
    device = next(iter(stacked.params.values())).device
    optimizer = torch.optim.AdamW(
        stacked.params.values(), lr=settings.learning_rate, weight_decay=settings.weight_decay, foreach=True
    )
    subset_size = len(subsets[0])
    steps_per_epoch = math.ceil(subset_size / settings.batch_size)
    total_steps = steps_per_epoch * settings.epochs
    rngs = [random.Random(seed) for seed in seeds]
    packed = settings.pack_length > 0 and takes_packed_rows(stacked.model)
    orders: list[list[int]] = [[] for _ in range(n_models)]
    step = 0
    for epoch in range(settings.epochs):
        for m in range(n_models):
            orders[m] = [int(i) for i in subsets[m]]
            rngs[m].shuffle(orders[m])
        rates = []
        for begin in range(0, subset_size, settings.batch_size):
            rows = [[pool[i] for i in orders[m][begin : begin + settings.batch_size]] for m in range(n_models)]
            if packed:
                batch = _stack_packed(rows, pad_id, device, settings.pack_length, stacked.model.config)
            else:
                batch = _stack(rows, pad_id, device)
            summed, counts = stacked.response_losses(*batch)
            per_model = summed.sum(-1) / counts.sum(-1).clamp(min=1)
            per_model.sum().backward()
            if settings.max_grad_norm:
                _clip_per_model(stacked.params.values(), n_models, settings.max_grad_norm)
            decay = 1 - step / total_steps if settings.lr_schedule == "linear" else 1.0
            rate = settings.learning_rate * decay
            for group in optimizer.param_groups:
                group["lr"] = rate
            rates.append(rate)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
        if on_epoch_end is not None:
            on_epoch_end(epoch, {name: p.detach().clone() for name, p in stacked.params.items()}, float(np.mean(rates)))


def _clip_per_model(params, n_models: int, max_norm: float) -> None:
    """``torch.nn.utils.clip_grad_norm_`` for each stacked model alone: its gradients (along the models'
    dimension) scaled to a global norm of at most ``max_norm``."""
    grads = [p.grad for p in params if p.grad is not None]
    norms = torch.stack([g.reshape(n_models, -1).pow(2).sum(1) for g in grads]).sum(0).sqrt()
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.view(-1, *[1] * (g.ndim - 1)))


@dataclass
class QueryScores:
    """What each fine-tuned model does on its queries, ``(n_models, n_queries_per_model)`` each."""

    losses: np.ndarray
    """Mean cross-entropy over the query's response tokens (float64), NaN where training diverged."""
    exact_match: np.ndarray
    """Whether greedy decoding from the prompt reproduces the whole response, end token included (bool).

    Read from the same forward pass as the loss: fed the response so far, the model's top token is
    the next response token at every position. That is exactly what greedy generation checks, up
    to rounding where two tokens' logits nearly tie.
    """


def _scores(
    stacked: _Stacked,
    queries: Sequence[SFTExample],
    query_sets: Sequence[np.ndarray],
    settings: SFTSettings,
    pad_id: int,
) -> QueryScores:
    device = next(iter(stacked.params.values())).device
    n_queries = len(query_sets[0])
    losses = np.empty((stacked.n_models, n_queries))
    exact = np.zeros((stacked.n_models, n_queries), dtype=bool)
    with torch.no_grad():
        for begin in range(0, n_queries, settings.eval_batch_size):
            rows = [[queries[int(i)] for i in qs[begin : begin + settings.eval_batch_size]] for qs in query_sets]
            # Padded, not packed: each row's sums are one query's.
            logits, targets = stacked.response_logits(*_stack(rows, pad_id, device))
            summed, counts = token_losses(logits, targets)
            per_query = summed / counts.clamp(min=1)
            empty = settings.empty_response_loss
            per_query[counts == 0] = float("nan") if empty is None else empty
            end = begin + per_query.shape[1]
            losses[:, begin:end] = per_query.double().cpu().numpy()
            exact[:, begin:end] = ((token_misses(logits, targets) == 0) & (counts > 0)).cpu().numpy()
    return QueryScores(losses, exact)


def train_and_evaluate(
    model: torch.nn.Module,
    pool: Sequence[SFTExample],
    queries: Sequence[SFTExample],
    subsets: Sequence[np.ndarray],
    query_sets: Sequence[np.ndarray],
    seeds: Sequence[int],
    settings: SFTSettings,
    pad_id: int,
) -> QueryScores:
    """Train one copy of ``model`` per subset and return each copy's loss and exact match on its queries.

    Args:
        model: The target LM; its weights are the starting point of every copy and are not changed.
        pool: Tokenized training examples; ``subsets`` index into it.
        queries: Tokenized queries; ``query_sets`` index into it (one set per model, equal sizes).
        subsets: One index array per model, all of the same size.
        seeds: One seed per model; it fixes the model's data order.
        settings: SFT hyper-parameters (AdamW, linear decay to 0).
        pad_id: Padding token id.
    """
    n_models = len(subsets)
    if len({len(s) for s in subsets}) != 1 or len({len(q) for q in query_sets}) != 1:
        raise ValueError("models trained together need subsets of one size and query sets of one size")
    if not (len(query_sets) == len(seeds) == n_models):
        raise ValueError("subsets, query_sets and seeds must have one entry per model")
    was_training = model.training
    model.eval()  # no dropout: runs are reproducible and vmap needs no randomness
    try:
        trained = with_lora(model, settings) if settings.lora_rank else model
        stacked = _Stacked(trained, n_models, settings.response_logits_only, settings.bf16)
        _finetune(stacked, pool, subsets, seeds, settings, pad_id)
        return _scores(stacked, queries, query_sets, settings, pad_id)
    finally:
        model.train(was_training)


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
    """Train one copy of ``model`` per subset and return their query losses (see :func:`train_and_evaluate`).

    Returns:
        ``(n_models, n_queries_per_model)`` float64: each query's mean cross-entropy over its response
        tokens, NaN where training diverged.
    """
    return train_and_evaluate(model, pool, queries, subsets, query_sets, seeds, settings, pad_id).losses


def _epoch_checkpoints(
    trained: torch.nn.Module,
    pool: Sequence[SFTExample],
    subset: np.ndarray,
    seed: int,
    settings: SFTSettings,
    pad_id: int,
) -> list[tuple[dict[str, torch.Tensor], float]]:
    """Fine-tune ``trained``'s trainable parameters on ``pool[subset]`` as one subset model (on stacked copies,
    so ``trained`` itself stays as it is); their values and the epoch's mean learning rate at the end of
    every epoch."""
    checkpoints: list[tuple[dict[str, torch.Tensor], float]] = []

    def keep(_epoch: int, params: dict[str, torch.Tensor], rate: float) -> None:
        checkpoints.append(({name: p[0] for name, p in params.items()}, rate))  # already copies

    was_training = trained.training
    trained.eval()
    try:
        _finetune(
            _Stacked(trained, 1, settings.response_logits_only, settings.bf16),
            pool,
            [np.asarray(subset)],
            [seed],
            settings,
            pad_id,
            keep,
        )
    finally:
        trained.train(was_training)
    return checkpoints


def finetune(
    model: torch.nn.Module,
    pool: Sequence[SFTExample],
    subset: np.ndarray,
    seed: int,
    settings: SFTSettings,
    pad_id: int,
) -> list[tuple[dict[str, torch.Tensor], float]]:
    """Fine-tune one copy of ``model`` on ``pool[subset]`` exactly as a subset model is trained.

    Returns:
        One ``(parameters, mean learning rate of the epoch)`` checkpoint per epoch, taken at the end
        of the epoch; the last is the fine-tuned model. ``model`` itself is not changed. Under LoRA the
        parameters are the merged full weights (:func:`merged_parameters`), named as in ``model``.
    """
    if settings.lora_rank:
        return merged_checkpoints(*finetune_adapters(model, pool, subset, seed, settings, pad_id))
    return _epoch_checkpoints(model, pool, subset, seed, settings, pad_id)


def merged_checkpoints(
    adapted: torch.nn.Module, checkpoints: Sequence[tuple[dict[str, torch.Tensor], float]]
) -> list[tuple[dict[str, torch.Tensor], float]]:
    """:func:`finetune_adapters`' checkpoints as :func:`finetune` returns them: each adapter checkpoint
    merged into full weights (:func:`merged_parameters`), with its learning rate."""
    return [(merged_parameters(adapted, adapters), rate) for adapters, rate in checkpoints]


def finetune_adapters(
    model: torch.nn.Module,
    pool: Sequence[SFTExample],
    subset: np.ndarray,
    seed: int,
    settings: SFTSettings,
    pad_id: int,
) -> tuple[torch.nn.Module, list[tuple[dict[str, torch.Tensor], float]]]:
    """:func:`finetune` under LoRA, keeping the adapters apart: the adapted copy of ``model``
    (:func:`with_lora`, its adapters at their initial values) and one ``(adapter values, mean learning
    rate of the epoch)`` checkpoint per epoch, named as in that copy. Gradient methods that read only
    the adapters, as LESS does, differentiate the copy at those values."""
    if not settings.lora_rank:
        raise ValueError("finetune_adapters needs LoRA settings (lora_rank > 0)")
    adapted = with_lora(model, settings)
    return adapted, _epoch_checkpoints(adapted, pool, subset, seed, settings, pad_id)


class PassThrough(torch.nn.Module):
    """Stands in for a frozen decoder layer whose output is already in the cache: returns its input."""

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return hidden_states


class _Captured(Exception):
    """Stops a forward pass once the hidden states it was run for are captured."""


@dataclass
class CachedTargetLM:
    """A target LM that starts at its lowest adapted layer, and the examples re-indexed into its cache.

    ``model``'s token embedding is the table of cached hidden states (one row per token of every
    example, then a zero row for padding) and its frozen layers pass their input through, so an
    example's "token ids" are the rows of its own tokens. :func:`train_and_evaluate` takes it as it
    takes the target LM: same labels, the same losses up to rounding.
    """

    model: torch.nn.Module
    pool: list[SFTExample]
    queries: list[SFTExample]
    pad_id: int
    frozen_layers: int
    table_bytes: int


def _hidden_states_before(
    model: torch.nn.Module, layer: int, examples: Sequence[SFTExample], pad_id: int, batch_size: int, bf16: bool
) -> Iterator[torch.Tensor]:
    """Yield each example's hidden states at the input of decoder layer ``layer``, ``(length, hidden)`` float32.

    Examples run in padded batches (right padding does not reach real tokens in a causal LM), and each
    forward stops at ``layer``: the layers above it are never run. A generator, so that the caller can
    copy each into place without holding them all twice.
    """
    captured: list[torch.Tensor] = []

    def capture(_module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        captured.append((args[0] if args else kwargs["hidden_states"]).detach().float())
        raise _Captured

    device = next(model.parameters()).device
    handle = model.get_decoder().layers[layer].register_forward_pre_hook(capture, with_kwargs=True)
    try:
        for begin in range(0, len(examples), batch_size):
            batch = examples[begin : begin + batch_size]
            ids, _ = collate(batch, pad_id)
            with (
                torch.no_grad(),
                torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16),
                contextlib.suppress(_Captured),
            ):
                model.get_decoder()(input_ids=ids.to(device), use_cache=False)
            hidden = captured.pop()
            for row, example in enumerate(batch):
                yield hidden[row, : len(example.input_ids)].cpu()
    finally:
        handle.remove()


def frozen_cache_bytes(model: torch.nn.Module, examples: Sequence[SFTExample]) -> int:
    """Bytes of :func:`cache_frozen_layers`' table for ``examples``: 4 per hidden unit per token, plus a padding row."""
    return (sum(len(e.input_ids) for e in examples) + 1) * model.get_input_embeddings().embedding_dim * 4


def cache_frozen_layers(
    model: torch.nn.Module,
    settings: SFTSettings,
    pool: Sequence[SFTExample],
    queries: Sequence[SFTExample],
    pad_id: int,
    available_bytes: int | None = None,
) -> CachedTargetLM:
    """Run the layers below the adapters once over ``pool`` and ``queries``, for every subset model to share.

    Under ``lora_layers`` N the bottom L - N decoder layers and the embedding never change, so their
    output for an example is the same in every subset model. This computes it once (under the settings'
    precision) and returns a copy of ``model`` that reads it from a table instead: training and scoring
    then run only the top N layers and the head. The table holds 4 bytes per hidden unit per token of
    every example (:func:`frozen_cache_bytes`, ``table_bytes``); it is refused before any work when it
    would not fit in ``available_bytes`` (default: the memory the system has available now).

    Raises:
        ValueError: the settings train more than the top layers, the table would not fit in memory,
            the model keeps its decoder layers elsewhere than ``get_decoder().layers``, or its forward
            does not take the cached states as they are (checked on the first example in float32
            against the whole model; an architecture that re-processes what enters its decoder, as
            OPT's does by adding position embeddings, fails here).
    """
    if not settings.lora_rank or not settings.lora_layers:
        raise ValueError("caching the frozen layers needs LoRA adapters in the top layers only "
                         "(lora_rank > 0 and lora_layers > 0): otherwise every layer trains")  # fmt: skip
    decoder = model.get_decoder()
    layers = getattr(decoder, "layers", None)
    total = model.config.num_hidden_layers
    if not isinstance(layers, torch.nn.ModuleList) or len(layers) != total:
        raise ValueError(f"{type(model).__name__} keeps no {total} decoder layers in get_decoder().layers; "
                         "its frozen layers cannot be cached")  # fmt: skip
    first = first_adapted_layer(model, settings)
    examples = [*pool, *queries]
    needed = frozen_cache_bytes(model, examples)
    available = psutil.virtual_memory().available if available_bytes is None else available_bytes
    if needed > available:
        raise ValueError(f"the table of {len(examples):,} examples' hidden states needs {needed / 2**30:.1f} GiB "
                         f"and {available / 2**30:.1f} GiB is available; train without caching the frozen "
                         "layers, or on a smaller pool")  # fmt: skip
    # Filled in place: a list of per-example states then concatenated would need twice the memory.
    hidden = model.get_input_embeddings().embedding_dim
    table = torch.zeros(needed // (4 * hidden), hidden)
    # Each example's surrogate "ids" are the table rows its states fill.
    surrogates, offset = [], 0
    computed = _hidden_states_before(model, first, examples, pad_id, settings.eval_batch_size, settings.bf16)
    for example, states in zip(examples, computed, strict=True):
        table[offset : offset + len(states)] = states
        surrogates.append(SFTExample(list(range(offset, offset + len(states))), list(example.labels)))
        offset += len(states)

    # The copy gets a pass-through in place of each frozen layer, which is therefore never copied.
    top = copy.deepcopy(model, {id(layer): PassThrough() for layer in layers[:first]}).eval()
    top_decoder = top.get_decoder()
    top_decoder.embed_tokens = torch.nn.Embedding.from_pretrained(table.to(next(model.parameters()).device))
    top.requires_grad_(False)  # only adapters train on it, so with_lora shares these weights, table included

    # The architecture check, in float32 so that rounding cannot hide a mismatch or fake one.
    probe = examples[0]
    ids = torch.tensor([probe.input_ids], device=table.device)
    (probe_states,) = list(_hidden_states_before(model, first, [probe], pad_id, 1, bf16=False))
    with torch.no_grad():
        whole = model(input_ids=ids, use_cache=False).logits
        cached = top(inputs_embeds=probe_states[None].to(table.device), use_cache=False).logits
    error = float((whole - cached).abs().max() / whole.abs().max().clamp(min=1e-12))
    if not error < 1e-4:
        raise ValueError(f"{type(model).__name__} does not give the same logits from cached hidden states (relative "
                         f"difference {error:.2g}); train without caching the frozen layers")  # fmt: skip

    return CachedTargetLM(top, surrogates[: len(pool)], surrogates[len(pool) :], offset, first, needed)
