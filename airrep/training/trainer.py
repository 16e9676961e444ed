"""Training AirRep on a ``train``-mode labels dataset with the sentence-transformers trainer.

:func:`train_airrep` is what ``train_airrep.py`` runs. Each step is one split of the labels: R of its
queries and K of its subsets. The union of their texts is embedded once and the weighted pairwise
RankNet loss is taken over attention-pooled group scores (:class:`~airrep.training.ranking_loss.AirRepRankingLoss`).
LDS on whole held-out splits of the same labels is logged during training; the test ``lds`` labels
are never used here.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from airrep import cli
from airrep.cli import UsageError
from airrep.labels.dataset import load_labels
from airrep.outputs import differing_keys
from airrep.presets import TRAIN_PRESETS, for_precision, named, resolve
from airrep.training.data import AirRepDataCollator, freeze_lower_layers, sample_rows, set_dropout
from airrep.training.lds_evaluator import LDSEvaluator
from airrep.training.ranking_loss import WEIGHTINGS, AirRepRankingLoss
from configuration_airrep import GROUP_POOLINGS
from modeling_airrep import AirRepModel, bf16_available

logger = logging.getLogger(__name__)


PROJECTOR_INITS = ("identity", "random")


def randomise_projector(model: AirRepModel, seed: int) -> None:
    """A random projector, as the authors' release starts: normal weights with the config's
    ``initializer_range`` as std (transformers' default for a linear layer) and a zero bias."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        weight = model.projector.weight
        weight.copy_(torch.randn(weight.shape, generator=generator) * model.config.initializer_range)
        model.projector.bias.zero_()


@dataclass
class AirRepArguments:
    labels: str = field(metadata={"help": "A train-mode labels dataset: folder or Hub id."})
    preset: str = field(default="smoke", metadata={"help": f"Sizes to start from: {', '.join(TRAIN_PRESETS)}."})
    base_encoder: str | None = field(
        default=None, metadata={"help": "BERT-family encoder folder or id; default: the bundled all-MiniLM-L6-v2."}
    )
    weighting: str | None = field(
        default=None, metadata={"help": f"Override: pair weighting, {', '.join(WEIGHTINGS)} (the release's)."}
    )
    projector_init: str | None = field(
        default=None,
        metadata={"help": f"Override: the projector's start, {' or '.join(PROJECTOR_INITS)}: the identity keeps the "
                          "base encoder's geometry; random (normal, std = the config's initializer_range, bias "
                          "0) is the authors' release."},
    )  # fmt: skip
    union: bool = field(default=True, metadata={"help": "Embed each distinct text of a step once."})
    queries_per_step: int | None = field(default=None, metadata={"help": "Override R."})
    subsets_per_step: int | None = field(default=None, metadata={"help": "Override K."})
    train_steps: int | None = field(default=None, metadata={"help": "Override: number of training steps."})
    validation_splits: int | None = field(default=None, metadata={"help": "Override: splits held out for LDS."})
    mini_batch_size: int | None = field(default=None, metadata={"help": "Override: GradCache mini-batch (0 = off)."})
    dropout: float | None = field(
        default=None, metadata={"help": "Override: the encoder's dropout while training (0 = none, as the authors)."}
    )
    backward_fraction: float | None = field(
        default=None,
        metadata={"help": "Override: share of a step's texts re-embedded with gradients, sampled by their "
                          "gradient's norm and reweighted (unbiased); 1 = all. Below 1 needs --dropout 0."},
    )  # fmt: skip
    frozen_layers: int | None = field(
        default=None,
        metadata={"help": "Override: freeze the embeddings and this many lower encoder layers, cache their "
                          "output once, and train only the layers above (0 = the whole encoder)."},
    )  # fmt: skip


class AirRepTrainer(SentenceTransformerTrainer):
    """The sentence-transformers trainer, also reading the cached frozen-layer states
    (``sentence_0_layer_inputs``) that [`AirRepDataCollator`] emits with a [`FrozenLayerCache`]."""

    def collect_features(self, inputs):
        if "sentence_0_layer_inputs" not in inputs:
            return super().collect_features(inputs)
        prefix = "sentence_0_"
        return [{k[len(prefix) :]: v for k, v in inputs.items() if k.startswith(prefix)}], inputs.get("label")


def preset_training_arguments(preset, explicit: set[str]) -> dict:
    """Training-argument values from the preset, for the flags the user did not pass."""
    values = {
        "learning_rate": preset.learning_rate,
        "num_train_epochs": 1,
        "per_device_train_batch_size": 1,
        "logging_steps": preset.logging_steps,
        "eval_strategy": "steps",
        "eval_steps": preset.eval_steps,
        "save_strategy": "steps",
        "save_total_limit": 2,
        "warmup_steps": preset.warmup_steps,
        "weight_decay": preset.weight_decay,
        "lr_scheduler_type": preset.lr_scheduler_type,
        "seed": preset.seed,
        "report_to": "none",
        "remove_unused_columns": False,
        "dataloader_drop_last": False,
        # Pinned memory only speeds up copies to an accelerator; without one torch warns at every epoch.
        "dataloader_pin_memory": torch.accelerator.is_available(),
    }
    return {k: v for k, v in values.items() if k not in explicit}


def write_card(
    folder: Path, args: AirRepArguments, preset, loss: AirRepRankingLoss, metrics: dict[str, float], base: str
) -> None:
    card = ModelCard.load(folder / "README.md")
    data: ModelCardData = card.data
    if not Path(args.labels).exists():  # a Hub id; a local folder's path means nothing on the Hub
        data.datasets = [args.labels]
    results = [
        EvalResult(task_type="feature-extraction", dataset_type=args.labels,
                   dataset_name=f"{args.labels} (validation splits)", metric_type="lds",
                   metric_name=f"LDS ({pooling} pooling)", metric_value=value)
        for pooling in GROUP_POOLINGS
        if (value := metrics.get(f"eval_validation_lds_{pooling}")) is not None
    ]  # fmt: skip
    if results:
        data.model_name = folder.name
        data.eval_results = results
    card.text += f"""
## Training

Trained with `train_airrep.py` from `{base}` on the subset-loss labels `{args.labels}`
(weighted pairwise RankNet over attention-pooled group scores, `AirRepRankingLoss`).

- Loss: `AirRepRankingLoss` with `{json.dumps(loss.get_config_dict())}`; union encoding
  {"on" if args.union else "off"}.
- Steps: {preset.train_steps} steps of one split each, R = {preset.queries_per_step} queries and
  K = {preset.subsets_per_step} subsets per step; learning rate {preset.learning_rate} ({preset.lr_scheduler_type}
  after {preset.warmup_steps} warmup steps), weight decay {preset.weight_decay}, dropout
  {"the encoder's own" if preset.dropout is None else preset.dropout}, projector started as {preset.projector_init}.
- Validation LDS (held-out splits of the training labels, never the test labels):
  {json.dumps({k: round(v, 4) for k, v in metrics.items() if "lds" in k})}
"""
    if loss.citation not in card.text:
        card.text += f"\n### Loss citation\n\n```bibtex\n{loss.citation}\n```\n"
    card.save(folder / "README.md")


def parse_arguments(
    argv: list[str], description: str | None = None
) -> tuple[AirRepArguments, SentenceTransformerTrainingArguments, set[str]]:
    """The arguments of a ``train_airrep.py`` command line, and the names of the flags it gave.

    A bf16 preset turns bf16 autocast on where its kernels exist, unless ``--bf16`` was given either way.
    """
    (args, training_args) = cli.parse((AirRepArguments, SentenceTransformerTrainingArguments), argv, description)
    explicit = {a.split("=")[0].lstrip("-").replace("-", "_") for a in argv if a.startswith("--")}
    if named(TRAIN_PRESETS, args.preset).bf16 and "bf16" not in explicit and bf16_available():
        # transformers fixes mixed precision when it builds the arguments, so parse them again with the
        # flag (and --use_cpu, which it requires for bf16 without an accelerator).
        extra = ["--bf16"] + ([] if torch.accelerator.is_available() or "use_cpu" in explicit else ["--use_cpu"])
        args, training_args = cli.parse(
            (AirRepArguments, SentenceTransformerTrainingArguments), [*argv, *extra], description
        )
    return args, training_args, explicit


def train_airrep(
    args: AirRepArguments, training_args: SentenceTransformerTrainingArguments, explicit: set[str] = frozenset()
) -> Path:
    """Train AirRep on ``args.labels`` and save the checkpoint in ``training_args.output_dir``.

    Args:
        explicit: Training-argument names the user set; the preset fills in the others.

    Returns:
        The checkpoint folder.
    """
    base = named(TRAIN_PRESETS, args.preset)
    if args.weighting is not None and args.weighting not in WEIGHTINGS:
        raise UsageError(f"--weighting must be one of {sorted(WEIGHTINGS)}, got {args.weighting!r}")
    if args.projector_init is not None and args.projector_init not in PROJECTOR_INITS:
        raise UsageError(f"--projector_init must be one of {PROJECTOR_INITS}, got {args.projector_init!r}")
    overridable = ("queries_per_step", "subsets_per_step", "train_steps", "validation_splits", "mini_batch_size",
                   "frozen_layers", "dropout", "weighting", "projector_init", "backward_fraction")  # fmt: skip
    overrides = {k: getattr(args, k) for k in overridable}
    # What the run uses, for the record: the precision it trains in and that precision's steps.
    preset = resolve(for_precision(base, training_args.bf16), overrides)
    if base.bf16 and not preset.bf16 and base.fp32_fallback is not None:
        changed = differing_keys(asdict(preset), asdict(replace(base, fp32_fallback=None, bf16=False)))
        logger.warning("No bf16 autocast here: the %r preset trains its fp32 fallback, which differs in %s",
                       args.preset, ", ".join(f"{k}={getattr(preset, k)}" for k in changed))  # fmt: skip
    if not 0 < preset.backward_fraction <= 1:
        raise UsageError(f"--backward_fraction must be in (0, 1], got {preset.backward_fraction}")
    if preset.backward_fraction < 1 and (preset.dropout != 0 or not preset.mini_batch_size):
        raise UsageError(
            "--backward_fraction below 1 re-embeds a sample of GradCache's texts: it needs --dropout 0 "
            f"and a --mini_batch_size (got dropout {preset.dropout}, mini-batch {preset.mini_batch_size})"
        )
    if preset.backward_fraction < 1 and training_args.world_size > 1:
        # Each process would take its own number of mini-batches, and DDP needs the same count everywhere.
        raise UsageError("--backward_fraction below 1 trains in one process only; run without torchrun")
    for key, value in preset_training_arguments(preset, explicit).items():
        setattr(training_args, key, value)
    # The record and the card say what trains, flags included.
    scheduler = getattr(training_args.lr_scheduler_type, "value", training_args.lr_scheduler_type)
    preset = replace(preset, learning_rate=training_args.learning_rate, weight_decay=training_args.weight_decay,
                     lr_scheduler_type=str(scheduler), warmup_steps=int(training_args.warmup_steps))  # fmt: skip
    if "save_steps" not in explicit:  # checkpoint where we evaluate, whichever way eval_steps was set
        training_args.save_steps = training_args.eval_steps
    if training_args.per_device_train_batch_size != 1:
        raise UsageError("AirRep trains on one split per step: --per_device_train_batch_size must be 1")

    data = load_labels(args.labels)  # validated before any training starts
    split_ids = sorted(data.splits)
    if preset.validation_splits >= len(split_ids):
        raise UsageError(f"{len(split_ids)} split(s) in {args.labels}: cannot hold out {preset.validation_splits}")
    held_out = sorted(np.random.default_rng(preset.seed).permutation(split_ids)[: preset.validation_splits].tolist())
    train_ids = [s for s in split_ids if s not in held_out]
    for split in train_ids:  # a step takes R queries and K subsets of one split; fewer would be a silent cap
        n_queries, n_subsets = data.splits[split].queries.size, len(data.splits[split].subsets)
        if preset.queries_per_step > n_queries or preset.subsets_per_step > n_subsets:
            raise UsageError(
                f"{args.labels}: split {split} holds {n_queries} queries and {n_subsets} subsets, but a step of "
                f"preset {args.preset!r} takes R = {preset.queries_per_step} queries and K = "
                f"{preset.subsets_per_step} subsets of one split; pass --queries_per_step and --subsets_per_step "
                "within those, or make labels with more"
            )
    rows = sample_rows(
        data, train_ids, preset.queries_per_step, preset.subsets_per_step, preset.train_steps, preset.seed
    )

    output_dir = Path(training_args.output_dir)
    initial = output_dir / ".initial-model"
    # One process writes the untrained checkpoint (save_pretrained only writes on the main process
    # under torchrun); every process then loads it the way users load a checkpoint.
    with training_args.main_process_first(desc="building the untrained AirRep"):
        if training_args.process_index == 0 and not (initial / "config.json").exists():
            untrained = AirRepModel.from_encoder(args.base_encoder)
            if preset.projector_init == "random":
                randomise_projector(untrained, preset.seed)
            untrained.save_pretrained(initial)
    model = SentenceTransformer(str(initial), trust_remote_code=True)
    base = model[0].auto_model.config.base_model
    if preset.dropout is not None:
        set_dropout(model[0].auto_model, preset.dropout)
    cache = None
    if preset.frozen_layers:
        cache = freeze_lower_layers(model, data, preset.frozen_layers)
        logger.info("Cached the output of the %d frozen layer(s) for %d texts", preset.frozen_layers,
                    len(cache.states))  # fmt: skip
    loss = AirRepRankingLoss(
        model,
        weighting=preset.weighting,
        mini_batch_size=preset.mini_batch_size or None,
        backward_fraction=preset.backward_fraction,
    )
    evaluator = LDSEvaluator(data, held_out)
    trainer = AirRepTrainer(
        model=model,
        args=training_args,
        train_dataset=rows,
        loss=loss,
        evaluator=evaluator,
        data_collator=AirRepDataCollator(model.preprocess, data, union=args.union, cache=cache),
    )
    resume = training_args.resume_from_checkpoint
    if resume is None and output_dir.is_dir():
        resume = get_last_checkpoint(str(output_dir))
        if resume:
            logger.info("Resuming from %s", resume)
    trainer.train(resume_from_checkpoint=resume)
    metrics = evaluator(model)
    if trainer.is_world_process_zero():
        airrep = model[0].auto_model
        airrep.save_pretrained(output_dir)
        write_card(output_dir, args, preset, loss, {f"eval_{k}": v for k, v in metrics.items()}, base)
        (output_dir / "airrep_training.json").write_text(
            json.dumps(
                {
                    "arguments": asdict(args),
                    "preset": asdict(preset),
                    "held_out_splits": held_out,
                    "validation": metrics,
                    "log_history": trainer.state.log_history,
                },
                indent=2,
            )
        )
        shutil.rmtree(initial, ignore_errors=True)
        logger.info("Saved %s; validation %s", output_dir, metrics)
    return output_dir
