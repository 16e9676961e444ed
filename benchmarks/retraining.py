"""What the benchmarks that retrain the target LM share: the labels' pool, target LM and SFT recipe, and
many fine-tunes run in the subset trainer's stacked batches; and the paired-difference table and plot
they report."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from datasets import load_dataset

from airrep.labels.dataset import read_summary
from airrep.labels.subset_training import SFTSettings, train_and_evaluate
from airrep.labels.target_lm import load_target_lm
from airrep.lds import bootstrap_ci
from airrep.outputs import save_figure, write_json
from modeling_airrep import bf16_available


@dataclass
class Retraining:
    """The target LM of a labels dataset, ready to be fine-tuned on subsets of its pool."""

    summary: dict[str, Any]
    pool: list[dict]
    model: Any
    tokenizer: Any
    sft: SFTSettings
    pool_examples: list
    per_batch: int

    @classmethod
    def from_labels(cls, folder: str | Path) -> Retraining:
        folder = Path(folder)
        summary = read_summary(folder)
        rows = load_dataset(str(folder), "pool", split="train")
        pool = [{k: v for k, v in r.items() if v is not None} for r in rows]
        model, tokenizer = load_target_lm(summary["target_lm"])
        settings = summary["settings"]
        per_batch = max(1, settings.get("models_per_batch", 1))
        if per_batch > 1:
            model.set_attn_implementation("eager")  # vmap has no batching rule for the fused CPU attention
        sft = SFTSettings.from_recipe({**settings, "bf16": settings.get("bf16", False) and bf16_available()})
        examples = [sft.tokenize(tokenizer, r, model, i) for i, r in enumerate(pool)]
        return cls(summary, pool, model, tokenizer, sft, examples, per_batch)

    def examples(self, records: Sequence[dict]) -> list:
        return [self.sft.tokenize(self.tokenizer, r, self.model, i) for i, r in enumerate(records)]

    def evaluate(
        self, queries: list, subsets: list[np.ndarray], query_sets: list[np.ndarray], seeds: list[int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Mean query loss and exact-match rate of one fine-tune per subset (all one size), ``per_batch`` at a time."""
        losses, exact = np.empty(len(subsets)), np.empty(len(subsets))
        for start in range(0, len(subsets), self.per_batch):
            end = start + self.per_batch
            scored = train_and_evaluate(self.model, self.pool_examples, queries, subsets[start:end],
                                        query_sets[start:end], seeds[start:end], self.sft,
                                        self.tokenizer.pad_token_id)  # fmt: skip
            losses[start:end] = scored.losses.mean(axis=1)
            exact[start:end] = scored.exact_match.mean(axis=1)
        return losses, exact

    def losses(self, queries: list, subsets: list[np.ndarray], query_sets: list[np.ndarray], seeds: list[int]):
        """Mean query loss of one fine-tune per subset."""
        return self.evaluate(queries, subsets, query_sets, seeds)[0]


def paired(values: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
    """Mean and 95% bootstrap interval of ``values - reference`` over paired units."""
    difference = np.asarray(values) - np.asarray(reference)
    low, high = bootstrap_ci(difference, 2000)
    return {"difference": float(difference.mean()), "difference_ci": [low, high]}


def save_results(output: str, results: dict[str, Any], entries: dict[str, dict[str, dict]], ylabel: str,
                 title: str) -> None:  # fmt: skip
    """Write ``results`` as JSON to ``output`` and the :func:`difference_plot` of ``entries`` beside it."""
    write_json(output, results)
    plot = str(Path(output).with_suffix(".png"))
    difference_plot(entries, "difference", ylabel, title, plot)
    print(f"\nwrote {output} and {plot}")


def difference_plot(entries: dict[str, dict[str, dict]], key: str, ylabel: str, title: str, path: str) -> None:
    """Grouped bars of ``entries[setting][method][key]`` with their interval whiskers, one group per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = list(entries)
    methods = list(next(iter(entries.values())))
    width = 0.8 / len(settings)
    figure, axis = plt.subplots(figsize=(1.1 * len(methods) + 2, 4))
    for n, setting in enumerate(settings):
        values = np.array([entries[setting][m][key] for m in methods])
        low = values - np.array([entries[setting][m][f"{key}_ci"][0] for m in methods])
        high = np.array([entries[setting][m][f"{key}_ci"][1] for m in methods]) - values
        axis.bar(np.arange(len(methods)) + (n - (len(settings) - 1) / 2) * width, values, width,
                 yerr=[low, high], capsize=3, label=setting)  # fmt: skip
    axis.axhline(0, color="grey", linewidth=0.6)
    axis.set_xticks(np.arange(len(methods)), methods, rotation=20, ha="right")
    axis.set_ylabel(ylabel)
    axis.set_title(title, fontsize=9)
    axis.legend(fontsize=8)
    figure.tight_layout()
    save_figure(figure, path)
