"""An evaluation run: every method scored by LDS on ``lds``-mode labels, written as a report folder.

:func:`evaluate` is what ``eval_lds.py`` runs. Every method turns the pool and the queries into
features (:mod:`airrep.evaluation.methods`), scores each (query, pool example) pair, pools the pair
scores over every labelled subset with each group pooling (``modeling_airrep.group_influence``), and
is scored by LDS against the recorded losses (:mod:`airrep.lds`).

The report folder gets ``results.json``, ``results.md``, ``lds.png`` and ``scores/NAME.POOLING.npy``
(:mod:`airrep.evaluation.report`). Each method's result is written as soon as it finishes, so a
method that fails, or a run that is killed, loses nothing that was finished; a re-run with the same
settings skips finished methods, except an AirRep checkpoint whose weight files changed since it
was scored (``weights_sha256``).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from airrep.cli import UsageError
from airrep.evaluation.data import EvalData, labels_noise_ceiling, load_eval_data
from airrep.evaluation.gradient_methods import GRADIENT_METHODS, LORA_GRADIENT_METHODS
from airrep.evaluation.methods import (
    METHODS,
    TARGET_LM_METHODS,
    Featurized,
    GradientState,
    airrep_method,
    base_encoder_method,
    check_checkpoint,
    gradient_method,
    gradient_method_names,
    lexical_method,
    method_names,
    weights_sha256,
)
from airrep.evaluation.report import bar_chart, markdown_table, scores_path
from airrep.evaluation.text_baselines import TEXT_METHODS
from airrep.lds import lds_summary
from airrep.outputs import claim, save_array, write_json, write_text
from airrep.presets import EVAL_PRESETS, EvalPreset, named, resolve
from configuration_airrep import DEFAULT_POOLINGS, GROUP_POOLINGS
from modeling_airrep import ENCODE_PRECISIONS, compile_refusal

logger = logging.getLogger(__name__)


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
        metadata={"help": f"Methods to score, from {', '.join(METHODS)}. Default: all ('airrep' only with --model; "
                          "the -lora ones only for labels made with LoRA)."},
    )  # fmt: skip
    poolings: list[str] = field(
        default_factory=lambda: list(DEFAULT_POOLINGS),
        metadata={"help": f"Group poolings, from {GROUP_POOLINGS}; 'softmax' is the AirRep authors' evaluation "
                          "pooling (softmax over the raw scores, no absolute value), for figures comparable with "
                          "the paper's tables."},
    )  # fmt: skip
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
        metadata={"help": "Memory for per-example gradients: fewer examples per backward for a large target LM, "
                          "and fewer EK-FAC/K-FAC queries per pass over the pool (the results do not change)."},
    )  # fmt: skip
    encode_batch_size: int | None = field(default=None, metadata={"help": "Override: texts per encoder forward."})
    encode_precision: str = field(
        default="fp32",
        metadata={"help": "How method 'airrep' encodes: fp32, bf16 (autocast, where bf16 kernels exist), int8 or "
                          "auto (AirRepModel.encode's precision)."},
    )  # fmt: skip
    encode_compile: bool = field(
        default=False,
        metadata={"help": "Method 'airrep' encodes through torch.compile (needs a C++ compiler; pays under bf16)."},
    )
    bootstrap_resamples: int | None = field(default=None, metadata={"help": "Override: bootstrap resamples."})
    classification_k: int | None = field(default=None, metadata={"help": "Override: neighbours that vote a task."})
    seed: int | None = field(default=None, metadata={"help": "Override: seed of projections and fine-tuning."})
    overwrite: bool = field(default=False, metadata={"help": "Recompute methods already in the report folder."})


def check_arguments(args: EvalArguments) -> tuple[EvalPreset, list[str], list[int]]:
    """Every argument error, before any work is done.

    Returns:
        The resolved preset, the methods, and the gradient projection sizes (the preset's, or
        ``--projection_dim``; the preset's ``projection_dim`` is the first of them).
    """
    base = named(EVAL_PRESETS, args.preset)
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        raise UsageError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    methods = list(dict.fromkeys(args.methods)) or [m for m in METHODS if m != "airrep" or args.model]
    bad_pooling = [p for p in args.poolings if p not in GROUP_POOLINGS]
    if bad_pooling or not args.poolings:
        raise UsageError(f"--poolings must be a non-empty choice from {GROUP_POOLINGS}, got {args.poolings}")
    if "airrep" in methods and not args.model:
        raise UsageError("method 'airrep' needs at least one checkpoint: pass --model FOLDER_OR_ID")
    if args.model and "airrep" not in methods:
        raise UsageError(f"--model applies only to method 'airrep', which is not among --methods {methods}")
    if args.encode_precision not in ENCODE_PRECISIONS:
        raise UsageError(f"--encode_precision must be one of {ENCODE_PRECISIONS}, got {args.encode_precision!r}")
    if args.encode_precision != "fp32" and "airrep" not in methods:
        raise UsageError("--encode_precision applies only to method 'airrep'")
    if args.encode_compile and "airrep" not in methods:
        raise UsageError("--encode_compile applies only to method 'airrep'")
    refusal = compile_refusal(args.encode_precision) if args.encode_compile else None
    if refusal:
        raise UsageError(f"--encode_compile: {refusal}")
    if args.base_encoder is not None and "base-encoder" not in methods:
        raise UsageError("--base_encoder applies only to method 'base-encoder'")
    target_lm_flags = {"target_lm": args.target_lm, "gradient_batch_size": args.gradient_batch_size}
    given = [f"--{k}" for k, v in target_lm_flags.items() if v is not None]
    if given and not set(methods) & set(TARGET_LM_METHODS):
        raise UsageError(f"{', '.join(given)} apply only to the methods of the target LM {TARGET_LM_METHODS}")
    projection_flags = {"projection_dim": args.projection_dim, "logra_rank": args.logra_rank}
    given = [f"--{k}" for k, v in projection_flags.items() if v is not None]
    if given and not set(methods) & set(GRADIENT_METHODS):
        raise UsageError(f"{', '.join(given)} apply only to the projected gradient methods {GRADIENT_METHODS}")
    if args.logra_rank is not None and "logra" not in methods:
        raise UsageError("--logra_rank applies only to method 'logra'")
    dims = list(dict.fromkeys(args.projection_dim or []))
    if args.projection_dim is not None and not dims:
        raise UsageError("--projection_dim needs at least one size")
    if args.logra_rank is not None and len(dims) > 1:
        raise UsageError(f"--logra_rank fixes LoGra's size, so it takes one --projection_dim, not {dims}")
    bad = [d for d in dims if d < 1]
    if bad:
        raise UsageError(f"--projection_dim must be at least 1, got {bad[0]}")
    overrides = {k: getattr(args, k) for k in ("gradient_batch_size", "encode_batch_size", "bootstrap_resamples",
                                               "classification_k", "seed")}  # fmt: skip
    preset = resolve(base, {**overrides, "projection_dim": dims[0] if dims else None})
    for name in ("projection_dim", "gradient_batch_size", "encode_batch_size", "bootstrap_resamples",
                 "classification_k"):  # fmt: skip
        if getattr(preset, name) < 1:
            raise UsageError(f"--{name} must be at least 1, got {getattr(preset, name)}")
    if not args.gradient_memory_gib > 0:
        raise UsageError(f"--gradient_memory_gib must be positive, got {args.gradient_memory_gib}")
    if args.logra_rank is not None and args.logra_rank < 1:
        raise UsageError(f"--logra_rank must be at least 1, got {args.logra_rank}")
    for model in args.model:
        check_checkpoint(model)
    return preset, methods, dims or [preset.projection_dim]


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
        scores = features.group_scores(data.subsets, pooling)
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


def evaluate(args: EvalArguments) -> dict[str, Any]:
    """Score every method ``args`` asks for (resuming in ``args.output_dir``); the ``results.json`` content."""
    preset, methods, dims = check_arguments(args)
    data = load_eval_data(args.labels)
    if not (data.summary.get("settings") or {}).get("lora_rank"):  # full fine-tuning: no adapters to read
        asked = [m for m in args.methods if m in LORA_GRADIENT_METHODS]
        if asked:
            raise UsageError(f"{', '.join(asked)} read the subset models' LoRA adapters, but {args.labels} was "
                             f"made with full fine-tuning (generate_labels.py --lora_rank 0)")  # fmt: skip
        methods = [m for m in methods if m not in LORA_GRADIENT_METHODS]
    folder = Path(args.output_dir)
    airrep_names = method_names(args.model)
    settings = {"labels": data.fingerprint, "preset": asdict(preset), "poolings": args.poolings,
                "logra_rank": args.logra_rank, "base_encoder": args.base_encoder, "target_lm": args.target_lm,
                "models": airrep_names}  # fmt: skip
    if len(dims) > 1:  # one size stays recorded as the preset's projection_dim alone, as before
        settings["projection_dims"] = dims
    if args.encode_precision != "fp32":  # reports made before the option were fp32 and record none
        settings["encode_precision"] = args.encode_precision
    if args.encode_compile:
        settings["encode_compile"] = True
    work = folder / "work"  # what long gradient jobs resume from (GradientState.method_workdir)
    if args.overwrite:
        write_json(folder / "eval_settings.json", settings)
        shutil.rmtree(work, ignore_errors=True)
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
                state = state or GradientState(
                    args.target_lm or data.summary.get("target_lm"), data.summary.get("settings"), data.pool_records,
                    data.query_records, preset, dims, args.gradient_memory_gib, data.source, work,
                )  # fmt: skip
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
        if state is not None and (scratch := state.method_workdir(name)) is not None:
            shutil.rmtree(scratch, ignore_errors=True)  # scored: its factors (gigabytes at 135M) are done with
        lds_line = ", ".join(f"{p} {100 * v['lds']:.1f}" for p, v in entry["poolings"].items())
        logger.info("%s: LDS x100 %s", name, lds_line)
        assemble(folder, data, preset, list(runners), ceiling, errors)
    results = assemble(folder, data, preset, list(runners), ceiling, errors)
    logger.info("wrote %s", folder)
    return results
