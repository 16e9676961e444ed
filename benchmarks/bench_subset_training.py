"""Subset models per hour: several models trained at once (vmap) against one at a time, in one run.

The target LM is the built-in architecture of the chosen preset (random weights: speed does not
depend on them) with a BPE tokenizer trained on the built-in corpus, so sequence lengths are real;
or, with ``--target_lm``, a pretrained causal LM (a folder, or ``builtin:smollm2-135m-instruct``) with
its own tokenizer, on the corpus ``--corpus`` names. ``--lora_ranks 0 8`` repeats every variant with
full fine-tuning and with rank-8 LoRA adapters (``generate_labels.py --lora_rank``), and
``--lora_layers 0 4`` each LoRA variant with adapters in every layer and in the top 4 only
(``--lora_layers``). ``--cache_frozen_layers`` repeats each top-layer variant trained from the cached
output of the layers below the adapters (``generate_labels.py --cache_frozen_layers``); the cache is
built once per precision and top-layer count, timed apart (``cache_seconds``).
Each variant trains the same ``--models`` subset models (same subsets, seeds and hyper-parameters)
and scores them on the same queries. Variants differ in how many models train at once; in where the
LM head runs (at every position, or only at response positions: ``logits_to_keep``); in whether a
training batch gives each example a padded row or packs several into rows of ``pack_length`` tokens;
and, with ``--bf16``, in bf16 autocast (``generate_labels.py --bf16``). The first variant, one model
at a time with padded rows and logits at every position, is the plain recipe and the comparison for
all the others.

    python benchmarks/bench_subset_training.py --preset demo --models 8 --batches 1 2 4 8 --bf16
    python benchmarks/bench_subset_training.py --target_lm builtin:smollm2-135m-instruct --corpus realtext \
        --subset_size 16 --batch_size 8 --epochs 1 --max_length 192 --queries 8 --models 2 --batches 1 2 \
        --lora_ranks 0 8 --bf16 --repeats 1 --json benchmarks/subset_training/smollm2-2026-12-03.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import time

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from airrep.labels import corpus as synthetic
from airrep.labels import realtext
from airrep.labels.subset_training import CachedTargetLM, SFTSettings, cache_frozen_layers, train_and_score
from airrep.labels.target_lm import (
    BUILTIN_PREFIX,
    convert_packaged_lm,
    load_target_lm,
    packaged_lm,
    sft_example,
    train_tokenizer,
)
from airrep.presets import LABEL_PRESETS
from configuration_airrep import format_text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo", choices=sorted(LABEL_PRESETS))
    parser.add_argument("--models", type=int, default=8, help="subset models per variant")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8], help="models trained at once")
    parser.add_argument("--repeats", type=int, default=3, help="rounds over all variants; figures are medians")
    parser.add_argument("--bf16", action="store_true", help="also time bf16 autocast (packed rows)")
    parser.add_argument("--pack_lengths", type=int, nargs="+", default=[64], help="row lengths of the packed variants")
    parser.add_argument("--skip_unpacked", action="store_true", help="time only the first row of the padded variants")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--target_lm", help="a causal LM folder or builtin:<name> instead of the preset's toy Llama")
    parser.add_argument("--target_lm_dir", default="out/target-lms", help="where a builtin:<name> is converted")
    parser.add_argument("--corpus", default="synthetic", choices=["synthetic", "realtext"])
    parser.add_argument("--lora_ranks", type=int, nargs="+", default=[0], help="0 = full fine-tuning")
    parser.add_argument("--lora_layers", type=int, nargs="+", default=[0],
                        help="LoRA variants with adapters in the top N layers only (0 = every layer)")  # fmt: skip
    parser.add_argument("--cache_frozen_layers", action="store_true",
                        help="also time each top-layer LoRA variant trained from the frozen layers' cache")  # fmt: skip
    parser.add_argument("--match", help="time only the variants whose name matches this regular expression "
                                        "(the first of them is then the comparison)")  # fmt: skip
    parser.add_argument("--subset_size", type=int, help="override the preset's train_subset_size")
    parser.add_argument("--batch_size", type=int, help="override the preset's SFT batch size")
    parser.add_argument("--epochs", type=int, help="override the preset's SFT epochs")
    parser.add_argument("--queries", type=int, help="queries scored per model (default: the preset's per split)")
    parser.add_argument("--max_length", type=int, help="token limit per example (default: the preset's)")
    args = parser.parse_args()

    preset = LABEL_PRESETS[args.preset]
    spec = preset.target_lm
    max_length = args.max_length or spec.max_length
    subset_size = args.subset_size or preset.train_subset_size
    n_queries = args.queries or preset.queries_per_split
    build = realtext.generate_split_records if args.corpus == "realtext" else synthetic.generate_split_records
    records = build({"train": max(preset.pool_size, subset_size), "test": n_queries}, seed=0)
    if args.target_lm:
        folder = args.target_lm
        if folder.startswith(BUILTIN_PREFIX):
            folder = convert_packaged_lm(folder, f"{args.target_lm_dir}/{packaged_lm(folder).name}")
        model, tokenizer = load_target_lm(folder)
    else:
        tokenizer = train_tokenizer([format_text(r) for r in records["train"]], spec.vocab_size)
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=spec.hidden_size,
                             intermediate_size=spec.intermediate_size,
                             num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads,
                             num_key_value_heads=spec.num_heads, max_position_embeddings=max_length,
                             tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
        model = LlamaForCausalLM(config).eval()
    default_attention = model.config._attn_implementation
    pool = [sft_example(tokenizer, r, max_length) for r in records["train"]]
    queries = [sft_example(tokenizer, r, max_length) for r in records["test"]]
    rng = np.random.default_rng(0)
    subsets = [np.sort(rng.choice(len(pool), subset_size, replace=False)) for _ in range(args.models)]
    query_sets = [np.arange(len(queries))] * args.models
    settings = SFTSettings(args.epochs or preset.epochs, preset.learning_rate, args.batch_size or preset.batch_size,
                           preset.weight_decay)  # fmt: skip
    n_params = sum(p.numel() for p in model.parameters())
    tokens = np.mean([len(pool[i].input_ids) for s in subsets for i in s])
    print(f"target LM {n_params:,} parameters, vocabulary {len(tokenizer)}; {args.corpus} corpus, subsets of "
          f"{subset_size}, batch {settings.batch_size}, {settings.epochs} epoch(s), {len(queries)} queries; "
          f"{tokens:.0f} tokens/example; {torch.get_num_threads()} threads")  # fmt: skip

    train_and_score(model, pool, queries, subsets[:1], query_sets[:1], [0], settings, tokenizer.pad_token_id)  # warm-up
    padded = dict(pack_length=0)
    padded_batches = args.batches[:1] if args.skip_unpacked else args.batches
    variants: list[tuple[str, int, dict]] = [
        (f"{n} at once, padded rows, logits at every position", n, padded | dict(response_logits_only=False))
        for n in padded_batches
    ]
    variants += [(f"{n} at once, padded rows, logits at response positions", n, padded) for n in padded_batches]
    for length in args.pack_lengths:
        variants += [(f"{n} at once, packed rows of {length}", n, dict(pack_length=length)) for n in args.batches]
        if args.bf16:
            bf16 = dict(pack_length=length, bf16=True)
            variants += [(f"{n} at once, packed rows of {length}, bf16 autocast", n, bf16) for n in args.batches]
    variants = [
        (
            name if not rank else f"LoRA r={rank}{f' top {layers} layers' if layers else ''}: {name}",
            n,
            overrides | ({"lora_rank": rank, "lora_layers": layers} if rank else {}),
        )
        for rank in args.lora_ranks
        for layers in (args.lora_layers if rank else [0])
        for name, n, overrides in variants
    ]
    if args.cache_frozen_layers:
        variants += [(f"{name}, frozen layers cached", n, overrides | {"cached": True})
                     for name, n, overrides in variants if overrides.get("lora_layers")]  # fmt: skip
    if args.match:
        variants = [v for v in variants if re.search(args.match, v[0])]
        if not variants:
            parser.error(f"--match {args.match!r} matches no variant")
    caches: dict[tuple[int, bool], CachedTargetLM] = {}
    cache_seconds: dict[str, float] = {}

    def inputs(variant_settings: SFTSettings, cached: bool) -> tuple:
        """The model, pool, queries and pad id a variant trains on: the target LM's, or the cache's."""
        if not cached:
            return model, pool, queries, tokenizer.pad_token_id
        key = (variant_settings.lora_layers, variant_settings.bf16)
        if key not in caches:
            start = time.perf_counter()
            caches[key] = cache_frozen_layers(model, variant_settings, pool, queries, tokenizer.pad_token_id)
            cache_seconds[f"top {key[0]} layers{', bf16' if key[1] else ''}"] = time.perf_counter() - start
        cache = caches[key]
        return cache.model, cache.pool, cache.queries, cache.pad_id

    seconds: dict[str, list[float]] = {name: [] for name, _, _ in variants}
    losses: dict[str, np.ndarray] = {}
    # Rounds run every variant once, in turn, so that a slow spell of a shared machine hits all of
    # them alike; each figure is the median over rounds.
    for _ in range(args.repeats):
        for name, together, overrides in variants:
            # As generate_labels does: eager attention where models are stacked (vmap has no batching rule
            # for the fused kernels), the model's own (sdpa) one at a time.
            overrides = dict(overrides)
            cached = overrides.pop("cached", False)
            variant_settings = dataclasses.replace(settings, **overrides)
            lm, examples, scored, pad_id = inputs(variant_settings, cached)
            lm.set_attn_implementation("eager" if together > 1 else default_attention)
            start = time.perf_counter()
            losses[name] = np.concatenate(
                [
                    train_and_score(lm, examples, scored, subsets[i : i + together], query_sets[i : i + together],
                                    list(range(i, min(i + together, args.models))), variant_settings, pad_id)
                    for i in range(0, args.models, together)
                ]
            )  # fmt: skip
            seconds[name].append(time.perf_counter() - start)
    reference = losses[variants[0][0]]
    figures: dict[str, dict[str, float]] = {}
    for name, _, _ in variants:
        median = float(np.median(seconds[name]))
        figures[name] = {
            "seconds_per_model": median / args.models,
            "models_per_hour": 3600 * args.models / median,
            "max_abs_loss_difference_vs_first": float(np.abs(losses[name] - reference).max()),
            "seconds_per_round": seconds[name],
        }
    base_name = next(iter(figures))
    base = figures[base_name]["models_per_hour"]
    for name, row in figures.items():
        row["speedup"] = row["models_per_hour"] / base
        print(
            f"  {name:<62} {row['seconds_per_model']:6.2f} s/model, "
            f"{row['models_per_hour']:7.0f} models/h, "
            f"{row['speedup']:.2f}x vs {base_name} "
            f"(losses differ by {row['max_abs_loss_difference_vs_first']:.1e})"
        )
    for name, cached in [(name, f"{name}, frozen layers cached") for name in figures]:
        if cached in figures:
            row = figures[cached]
            row["speedup_vs_uncached"] = figures[name]["seconds_per_model"] / row["seconds_per_model"]
            row["max_abs_loss_difference_vs_uncached"] = float(np.abs(losses[cached] - losses[name]).max())
            print(f"  cached / uncached, {name}: {row['speedup_vs_uncached']:.2f}x, losses differ by "
                  f"{row['max_abs_loss_difference_vs_uncached']:.1e}")  # fmt: skip
    for name, spent in cache_seconds.items():
        print(f"  building the cache ({name}): {spent:.1f} s, once per run")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(
                {
                    "preset": args.preset,
                    "target_lm": args.target_lm or "toy",
                    "corpus": args.corpus,
                    "subset_size": subset_size,
                    "tokens_per_example": float(tokens),
                    "models": args.models,
                    "repeats": args.repeats,
                    "threads": torch.get_num_threads(),
                    "figures": figures,
                    "cache_seconds": cache_seconds,
                },
                handle,
                indent=2,
            )


if __name__ == "__main__":
    main()
