"""Presets: named sizes for every script (docs/design.md, "Presets"). A preset is data; flags override it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, TypeVar

from airrep.cli import UsageError
from airrep.labels.subset_training import SFTSettings
from airrep.labels.target_lm import TargetLMSpec

P = TypeVar("P")


@dataclass(frozen=True)
class LabelPreset:
    """Corpus, target LM and subset-training sizes for ``generate_labels.py``."""

    pretrain_size: int
    pool_size: int
    test_size: int
    target_lm: TargetLMSpec
    # mode train: cross-validation splits of the pool
    n_splits: int
    queries_per_split: int
    subsets_per_split: int
    train_subset_size: int
    # mode lds: random halves of the pool scored on held-out test queries
    lds_subsets: int
    lds_queries: int
    # Examples in each lds subset; 0 = half the pool (the datamodels' alpha = 0.5). Smaller subsets make
    # each subset model cheaper when a pretrained target LM makes half the pool too costly.
    lds_subset_size: int = 0
    # SFT of each subset model (airrep.labels.subset_training.SFTSettings: its defaults, by default)
    epochs: int = SFTSettings.epochs
    learning_rate: float = SFTSettings.learning_rate
    batch_size: int = SFTSettings.batch_size
    weight_decay: float = SFTSettings.weight_decay
    models_per_batch: int = 4
    # bf16 autocast for the subset models where bf16 kernels exist (modeling_airrep.bf16_available).
    bf16: bool = False
    # LoRA subset models (SFTSettings.lora_*): rank 0 fine-tunes every weight.
    lora_rank: int = SFTSettings.lora_rank
    lora_alpha: float | None = SFTSettings.lora_alpha
    lora_target_modules: str = SFTSettings.lora_target_modules
    lora_seed: int = SFTSettings.lora_seed
    lora_layers: int = SFTSettings.lora_layers
    # The AirRep authors' fine-tuning (SFTSettings: lr_schedule, max_grad_norm, prompt_template, ...).
    lr_schedule: str = SFTSettings.lr_schedule
    max_grad_norm: float = SFTSettings.max_grad_norm
    prompt_template: str | None = SFTSettings.prompt_template
    truncation: str = SFTSettings.truncation
    max_tokens: int = SFTSettings.max_tokens
    empty_response_loss: float | None = SFTSettings.empty_response_loss
    noise_ceiling: int = 0
    seed: int = 0
    corpus_seed: int = 1234
    # The corpus when --corpus is not given (airrep.labels.generation.BUILTIN_CORPORA).
    corpus: str = "builtin:synthetic"
    # The target LM when --target_lm is not given: a folder, Hub id or builtin:NAME of a pretrained causal
    # LM (airrep.labels.target_lm.PACKAGED_LMS); None builds the small Llama that ``target_lm`` describes.
    pretrained_lm: str | None = None


LABEL_PRESETS: dict[str, LabelPreset] = {
    "smoke": LabelPreset(
        pretrain_size=400,
        pool_size=64,
        test_size=24,
        target_lm=TargetLMSpec(vocab_size=512, hidden_size=64, num_layers=1, num_heads=2, intermediate_size=128,
                               max_length=64, warmup_epochs=1, warmup_batch_size=32),
        n_splits=2,
        queries_per_split=8,
        subsets_per_split=4,
        train_subset_size=16,
        lds_subsets=8,
        lds_queries=16,
        batch_size=8,
        noise_ceiling=4,
    ),
    "demo": LabelPreset(
        pretrain_size=3000,
        pool_size=1000,
        test_size=200,
        target_lm=TargetLMSpec(),
        n_splits=8,
        queries_per_split=32,
        subsets_per_split=32,
        train_subset_size=250,
        lds_subsets=48,
        lds_queries=100,
        # 2 epochs: the noise ceiling r on lds labels rose from 0.29 (1 epoch) to 0.59 (3 epochs: 0.70);
        # learning rates 3e-4 and 3e-3 at 1 epoch gave 0.27 and 0.25 (see the note on issue 3).
        epochs=2,
        # 8 models at once, packed rows and bf16 autocast: 3.0x the subset models per hour of one at a
        # time in fp32 on 2 CPU cores; the bf16 labels rank the subsets as fp32 ones do (per-query
        # Spearman 0.998, against 0.61 between two fp32 seeds) and keep r (benchmarks/HISTORY.md).
        models_per_batch=8,
        bf16=True,
        noise_ceiling=24,
    ),
    "bench": LabelPreset(
        pretrain_size=10000,
        pool_size=4000,
        test_size=500,
        target_lm=TargetLMSpec(hidden_size=256, num_layers=4, intermediate_size=1024, warmup_epochs=3),
        n_splits=16,
        queries_per_split=64,
        subsets_per_split=64,
        train_subset_size=500,
        lds_subsets=128,
        lds_queries=300,
        epochs=3,
        noise_ceiling=64,
    ),
    # The authors' release (scripts/01_create_training_data.py and 02_sft_subsets.py): 100 splits, each
    # holding out 10,000 dev queries and training 100 subsets of 1,000 from the other 100,000 examples;
    # each subset model fine-tuned 2 epochs, batch 16, AdamW at a constant 2e-5 with weight decay 0.01
    # and gradients clipped at 1.0, the user turn "Question: <prompt, first 256 words>\nAnswer:" through
    # the chat template, sequences cut at 512 tokens from the right, and a loss of 10.0 recorded for a dev
    # query whose response the cut removed. Meant for a GPU cluster with --target_lm Qwen/Qwen2.5-0.5B
    # (the built-in target_lm below is only a placeholder).
    "paper": LabelPreset(
        pretrain_size=0,
        pool_size=110000,
        test_size=1000,
        target_lm=TargetLMSpec(),
        n_splits=100,
        queries_per_split=10000,
        subsets_per_split=100,
        train_subset_size=1000,
        lds_subsets=100,
        lds_queries=1000,
        epochs=2,
        learning_rate=2e-5,
        batch_size=16,
        weight_decay=0.01,
        lr_schedule="constant",
        max_grad_norm=1.0,
        prompt_template="Question: {prompt}\nAnswer:",
        truncation="right",
        max_tokens=512,
        empty_response_loss=10.0,
        models_per_batch=1,
        bf16=True,
        noise_ceiling=100,
    ),
}  # fmt: skip


# The demo's sizes and target-LM recipe on the real-text corpus (rung x1 of issue 23), with twice the
# context: its responses are prose (median 34 words, up to 80) rather than a few tokens.
LABEL_PRESETS["realtext"] = replace(
    LABEL_PRESETS["demo"], target_lm=TargetLMSpec(max_length=192), corpus="builtin:realtext"
)

# The real rung (issue 24): SmolLM2-135M-Instruct on the same real-text corpus (same sizes, so the same
# corpus folder; its `pretrain` split goes unused), each subset model a LoRA fine-tune. Chosen on pilot
# runs of 6 subsets and their 6 twins, by the noise ceiling r and the cost of a model (benchmarks/HISTORY.md,
# "The real rung's fine-tuning"): rank-8 adapters in the top 4 of 30 layers at 3e-3 for 1 epoch on 250
# examples (r 0.52, 33 s a model under bf16) beat full fine-tuning at 2e-5 (r 0.39, 98 s), adapters in
# every layer (0.49, 78 s), 1e-2 (0.41) and halves of the pool (0.37, 58 s). So many subsets fit in the
# time that each may be a quarter of the pool; train mode's 8 x 48 models take about 3.7 hours.
LABEL_PRESETS["smollm2"] = replace(
    LABEL_PRESETS["realtext"],
    pretrained_lm="builtin:smollm2-135m-instruct",
    n_splits=8,
    queries_per_split=32,
    subsets_per_split=48,
    train_subset_size=250,
    lds_subsets=96,
    lds_subset_size=250,
    lds_queries=200,
    noise_ceiling=32,
    epochs=1,
    learning_rate=3e-3,
    lora_rank=8,
    lora_layers=4,
    # One model at a time: at 135M parameters one model keeps both cores busy (benchmarks/README.md).
    models_per_batch=1,
)


def named(presets: Mapping[str, P], name: str) -> P:
    """The preset called ``name`` in ``presets``; an unknown name is a user error listing the known ones."""
    if name not in presets:
        raise UsageError(f"--preset must be one of {sorted(presets)}, got {name!r}")
    return presets[name]


def resolve(preset: LabelPreset, overrides: dict[str, Any]) -> LabelPreset:
    """``preset`` with every non-None override applied; unknown names are an error."""
    names = {f.name for f in fields(preset)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"unknown preset field(s) {unknown}")
    return replace(preset, **{k: v for k, v in overrides.items() if v is not None})


@dataclass(frozen=True)
class TrainPreset:
    """Sizes and optimisation settings for ``train_airrep.py``."""

    queries_per_step: int  # R: queries of one split per step
    subsets_per_step: int  # K: subsets of that split per step
    train_steps: int
    validation_splits: int
    learning_rate: float
    mini_batch_size: int = 32
    frozen_layers: int = 0  # lower encoder layers frozen and cached (0: train the whole encoder)
    eval_steps: int = 50
    logging_steps: int = 5
    warmup_steps: int = 10
    seed: int = 0
    # Forward passes under bf16 autocast (the trainer's --bf16, with fp32 weights); on a CPU with
    # AVX512-BF16 a whole-encoder step of the demo runs 2.2x faster (4.9 against 11.0 s; benchmarks/HISTORY.md).
    bf16: bool = False
    # Dropout in the encoder while training (None: the base encoder's own, 0.1 for MiniLM). The
    # authors' code trains with the encoder in eval mode, that is with none.
    dropout: float | None = None
    # The AirRep authors' release differs from this project's defaults in four more ways, each an option
    # here (issue 26): the pair weighting (airrep.training.ranking_loss.WEIGHTINGS: "paper" drops pairs
    # whose label gap is under 0.1 and caps weights at 5; "reference", the release, keeps every pair and
    # caps at 10), AdamW's weight decay (torch's default 0.01 in the release), the schedule (the release
    # keeps the rate constant after 10 warmup steps; here it decays linearly to 0), and the projector's
    # start (the identity here, so an untrained AirRep is its base encoder; "random" in the release).
    weighting: str = "paper"
    weight_decay: float = 0.0
    lr_scheduler_type: str = "linear"
    projector_init: str = "identity"
    # Share of a step's texts re-embedded with gradients in GradCache's second pass, sampled by the norm
    # of their embedding's gradient and reweighted so the gradient stays unbiased (1: all, exact;
    # AirRepRankingLoss's backward_fraction). Needs dropout 0.
    backward_fraction: float = 1.0
    # What a bf16 preset trains where bf16 kernels are missing (None: the same settings in fp32). An
    # fp32 step of the demo takes 2.2x as long, and 3.3x on an AVX2-only CPU, so its fallback trains
    # cheaper steps to keep the time bound.
    fp32_fallback: TrainPreset | None = None


TRAIN_PRESETS: dict[str, TrainPreset] = {
    "smoke": TrainPreset(queries_per_step=4, subsets_per_step=4, train_steps=12, validation_splits=1,
                         learning_rate=1e-4, mini_batch_size=16, eval_steps=6, logging_steps=2, warmup_steps=2),
    # Chosen on the validation splits of the demo train labels (untrained: LDS attention 0.141, sum 0.121):
    #   whole encoder, lr 5e-5, 100 steps:          0.191 / 0.110 in 28 min
    #   top layer over cached layers 0-4, lr 5e-5, 300 steps: 0.165 / 0.116 in 16 min
    #   top layer over cached layers 0-4, lr 2e-4, 150 steps: 0.166 / 0.119 in 6.6 min  (the demo until 2026-11-30)
    # R and K were then chosen on 200 validation queries of 100-query train labels (benchmarks/HISTORY.md,
    # "The levers again"): K = 8 with R = 16 beat R = 8, K = 4 by +4.0 [+1.0, +7.0] attention LDS, paired,
    # for about 30% more training time.
    # 2026-12-01: with labels 2.8x faster, the demo affords the whole encoder under bf16 for 60 steps
    # (545 s against 419 s for 150 cached top-layer steps): +5.4 [+1.0, +10.6] attention, +1.9 [-1.5, +5.3]
    # sum over the cached top layer on the demo's validation splits, paired. Without bf16 kernels the
    # same steps take about twice as long, and the demo then runs past its 20 minutes.
    # 2026-12-01, later: with each step's texts longest first (1.76x faster steps), 60, 100 and 140 steps
    # took 313, 534 and 696 s and scored 26.2, 33.1 and 39.1 attention on the same validation splits
    # (+2.5, +9.5, +15.5 over the 60-step checkpoint trained before the change, paired); 140 steps keep
    # the demo under 20 minutes here. Without bf16 kernels (fp32 steps 2.2x slower) they would not.
    # 2026-12-01, a later session: on a slower day the whole demo took 18.5 min at 140 steps (training 909 s
    # against 680 s), and 18.5 min without bf16 kernels at 60 fp32 steps. 120 and 50 steps leave a margin
    # for such days; the time bound, not LDS, chose them.
    # 2026-12-03: on an AVX2-only CPU (no bf16 kernels, fp32 steps 3.3x the bf16 ones) the 50 whole-encoder
    # fp32 steps took the demo to 23 min and scored level with TF-IDF. Its fp32 fallback now trains layers
    # 3-5 over cached layers 0-2 (half the cost of a step), with all 32 dev queries of a split per step (R
    # costs almost nothing: the step's cost is its ~900 pool texts), lr 2e-4 (1e-4 and 4e-4 were worse),
    # and no dropout (level on validation, 15% cheaper steps; the authors train without it). On the
    # validation splits of the fp32 demo labels, 60 such steps scored +3.5 [-1.4, +9.2] attention over the
    # 50 whole-encoder steps, paired, in 52% of their time; K = 16 or 32 were level with K = 8 (+11% time).
    # 70 steps fill the same time as 60 with dropout (benchmarks/HISTORY.md, "The demo on both machine kinds").
    # 2026-12-03, later (issue 26): the release's five recipe options, each alone and all together, on the
    # validation splits of 100-query demo labels (200 queries, paired): no dropout +2.7 [+1.3, +4.1]
    # attention, every query of the split per step (R = 100) +1.4 [+0.1, +2.7]; the random projector -2.5;
    # constant rate with weight decay, and the reference weighting, level; all five together level on
    # attention and -7.7 with sum pooling. The bf16 path now trains without dropout and with R = 32, every
    # query of a demo split, as the fp32 fallback already did (benchmarks/README.md, "The AirRep authors'
    # training recipe, option by option").
    # 2026-12-04 (issue 21): the fp32 fallback trains the whole encoder again, at lr 2e-4, re-embedding
    # with gradients only a quarter of each step's texts (backward_fraction 0.25, sampled by gradient
    # norm, unbiased), so a step costs 0.44x an exact GradCache step. On the validation splits of the
    # fp32 demo labels (simulated AVX2; benchmarks/HISTORY.md, "The demo on both machine kinds"), in
    # about the same training time as the previous fallback (70 steps of layers 3-5): whole encoder,
    # 0.25, 80 steps 39.3 attention, +13.0 [+7.3, +18.4] over it, paired (sum +7.8); the whole encoder
    # exact at lr 2e-4 for 37 steps 36.7 (+10.4; level with 0.25: +2.5 [-0.5, +5.5] attention, -2.4
    # [-5.4, +0.5] sum); fraction 0.1 (108 steps) 31.8; layers 3-5 with 0.25 / 0.5 32.5 / 29.3. 75
    # steps keep the previous fallback's training time. On the bf16 path, lr 2e-4 with 0.25 for 270 steps
    # scored -5.7 [-9.1, -2.3] attention against the preset on the bf16 labels' validation splits: not there.
    "demo": TrainPreset(queries_per_step=32, subsets_per_step=8, train_steps=120, validation_splits=2,
                        learning_rate=5e-5, frozen_layers=0, eval_steps=30, logging_steps=10, bf16=True, dropout=0.0,
                        fp32_fallback=TrainPreset(queries_per_step=32, subsets_per_step=8, train_steps=75,
                                                  validation_splits=2, learning_rate=2e-4, frozen_layers=0,
                                                  dropout=0.0, backward_fraction=0.25, eval_steps=25,
                                                  logging_steps=10)),
    "bench": TrainPreset(queries_per_step=32, subsets_per_step=16, train_steps=2000, validation_splits=4,
                         learning_rate=5e-5, eval_steps=200, logging_steps=20),
    # The authors' release (github sunnweiwei/AirRep, scripts/03_train_airrep.py and airrep_trainer.py):
    # per step one split, 1,000 of its dev queries and 32 of its subsets; AdamW at 1e-4 with weight decay
    # 0.01, constant after 10 warmup steps, gradients clipped at 1.0 (the trainer's default); 50 epochs over
    # 100 splits = 5,000 steps; the encoder in eval mode (no dropout); a random projector; every pair with
    # a positive label gap, weighted by it up to 10. Meant for a GPU cluster and labels with 1,000 queries
    # per split or more.
    "paper": TrainPreset(queries_per_step=1000, subsets_per_step=32, train_steps=5000, validation_splits=10,
                         learning_rate=1e-4, eval_steps=500, logging_steps=50, warmup_steps=10, dropout=0.0,
                         weighting="reference", weight_decay=0.01, lr_scheduler_type="constant_with_warmup",
                         projector_init="random"),
}  # fmt: skip


def for_precision(preset: TrainPreset, bf16: bool) -> TrainPreset:
    """``preset`` as it trains with or without bf16 autocast: the flag recorded, and, in fp32, its fallback."""
    if bf16 or preset.fp32_fallback is None:
        return replace(preset, bf16=bf16)
    return replace(preset.fp32_fallback, bf16=False)


@dataclass(frozen=True)
class EvalPreset:
    """Settings of ``eval_lds.py``. None of them is tuned on the ``lds`` labels it scores."""

    # Gradient features per checkpoint for grad-dot, grad-cos and TracIn; LoGra's rank k is chosen so
    # that its n_linear_layers * k * k numbers come closest to it from below (equal storage).
    projection_dim: int
    gradient_batch_size: int = 16
    logra_damping: float = 0.1  # times each layer's mean Fisher eigenvalue, as in LoGra
    encode_batch_size: int = 64
    bootstrap_resamples: int = 1000
    confidence: float = 0.95
    classification_k: int = 5
    seed: int = 0


EVAL_PRESETS: dict[str, EvalPreset] = {
    "smoke": EvalPreset(projection_dim=64, bootstrap_resamples=200),
    "demo": EvalPreset(projection_dim=4096),
    "bench": EvalPreset(projection_dim=4096),
    "paper": EvalPreset(projection_dim=18432, gradient_batch_size=4),  # LoGra's size for Qwen2.5-0.5B
}
