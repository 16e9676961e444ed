"""The report folder of ``eval_lds.py``: ``results.json``, a Table-1-shaped markdown table, a bar chart,
and the saved group-score matrices from which every LDS can be recomputed (docs/design.md, "The report folder")."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from airrep.lds import lds_summary
from airrep.outputs import save_figure
from configuration_airrep import DEFAULT_POOLINGS, GROUP_POOLINGS


def scores_path(folder: str | os.PathLike, method: str, pooling: str) -> Path:
    """``scores/NAME.POOLING.npy``: subsets x queries, rows in the order of the labels config."""
    return Path(folder) / "scores" / f"{method}.{pooling}.npy"


def saved_scores(folder: str | os.PathLike) -> list[tuple[str, str]]:
    """``(method, pooling)`` of every score matrix saved in a report folder, sorted."""
    files = sorted((Path(folder) / "scores").glob("*.npy"))
    return [tuple(file.name.removesuffix(".npy").rsplit(".", 1)) for file in files]


def load_scores(folder: str | os.PathLike, method: str, pooling: str, shape: tuple[int, ...]) -> np.ndarray:
    """One saved score matrix, checked against the labels' ``(subsets, queries)`` shape.

    Raises:
        FileNotFoundError: no such matrix; the message lists the ones the folder holds.
        ValueError: the matrix does not have ``shape``.
    """
    file = scores_path(folder, method, pooling)
    if not file.is_file():
        saved = [f"{m}.{p}" for m, p in saved_scores(folder)]
        raise FileNotFoundError(f"{file} does not exist; {folder} holds scores for {saved}")
    scores = np.load(file)
    if scores.shape != tuple(shape):
        raise ValueError(
            f"{file}: scores of shape {scores.shape}, but the labels have {tuple(shape)} (subsets, queries); "
            "was the report made on these labels?"
        )
    return scores


def recompute_lds(
    folder: str | os.PathLike, losses: np.ndarray, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> dict[str, dict[str, dict[str, Any]]]:
    """LDS and interval of every saved score matrix, against the labels' ``(subsets, queries)`` losses."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for method, pooling in saved_scores(folder):
        summary = lds_summary(np.load(scores_path(folder, method, pooling)), losses, n_resamples, confidence, seed)
        out.setdefault(method, {})[pooling] = {"lds": summary["lds"], "ci": summary["ci"]}
    return out


def format_lds(entry: dict[str, Any] | None) -> str:
    """``LDS [low, high]`` x100 of an ``{"lds", "ci"}`` entry, or a dash where there is none."""
    if not entry or entry.get("lds") is None or math.isnan(entry["lds"]):
        return "—"
    low, high = entry["ci"]
    return f"{100 * entry['lds']:.1f} [{100 * low:.1f}, {100 * high:.1f}]"


def format_difference(entry: dict[str, Any]) -> str:
    """``difference [low, high]`` x100, signed, of a paired comparison's ``{"difference", "difference_ci"}``."""
    low, high = entry["difference_ci"]
    return f"{100 * entry['difference']:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]"


def _fmt_number(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if value >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def poolings_shown(results: dict[str, Any]) -> list[str]:
    """The default poolings, and any other that a method of ``results`` was scored with, in GROUP_POOLINGS order."""
    scored = {p for poolings in results["methods"].values() for p in poolings}
    return [p for p in GROUP_POOLINGS if p in DEFAULT_POOLINGS or p in scored]


def markdown_table(results: dict[str, Any]) -> str:
    """Methods as rows, LDS x100 (with its bootstrap interval) per pooling, then cost and classification."""
    ceiling = results.get("noise_ceiling") or {}
    accuracy = results.get("classification", {}).get("accuracy", {})
    shown = poolings_shown(results)
    k = results.get("classification", {}).get("k")
    lines = [
        f"LDS x100 on `{results['labels']}`: {results['n_subsets']} subsets, {results['n_queries']} queries, "
        f"{int(100 * results['confidence'])}% bootstrap intervals over queries.",
        "",
        f"| method | {' | '.join(f'LDS {p}' for p in shown)} | featurize s/example | bytes/example | "
        f"task accuracy (top-{k}) |",
        "|---" * (len(shown) + 4) + "|",
    ]
    for name, poolings in results["methods"].items():
        first = next(iter(poolings.values()))
        acc = accuracy.get(name)
        lines.append(
            f"| {name} | {' | '.join(format_lds(poolings.get(p)) for p in shown)} | "
            f"{_fmt_number(first.get('featurize_seconds_per_example'))} | "
            f"{_fmt_number(first.get('bytes_per_example'))} | {'—' if acc is None else f'{100 * acc:.1f}%'} |"
        )
    if ceiling.get("sqrt_r") is not None:
        cells = " | ".join(f"{100 * ceiling['sqrt_r']:.1f}" for _ in shown)
        lines.append(f"| noise ceiling sqrt(r) (r = {ceiling['r']:.3f}) | {cells} | | | |")
    for name, message in results.get("errors", {}).items():
        lines.append(f"| {name} | failed: {message.splitlines()[0][:120]} |" + " |" * (len(shown) + 2))
    lines += ["", "Method details:", ""]
    for name, details in results.get("method_details", {}).items():
        lines.append(f"- **{name}**: {details.get('description', '')}")
    return "\n".join(lines) + "\n"


def bar_chart(results: dict[str, Any], path: Path) -> None:
    """Grouped bars of LDS x100 per method and pooling with interval whiskers and the noise ceiling."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["methods"])
    shown = poolings_shown(results)
    width = 0.76 / len(shown)
    figure, axis = plt.subplots(figsize=(max(6.0, 1.1 * len(names) + 2), 4.2))
    for n, pooling in enumerate(shown):
        offset = (n - (len(shown) - 1) / 2) * width
        values, low, high = [], [], []
        for name in names:
            entry = results["methods"][name].get(pooling) or {"lds": np.nan, "ci": [np.nan, np.nan]}
            values.append(100 * entry["lds"])
            low.append(100 * (entry["lds"] - entry["ci"][0]))
            high.append(100 * (entry["ci"][1] - entry["lds"]))
        positions = np.arange(len(names)) + offset
        axis.bar(positions, values, width, yerr=[low, high], capsize=3, label=f"{pooling} pooling")
    ceiling = (results.get("noise_ceiling") or {}).get("sqrt_r")
    if ceiling is not None and not math.isnan(ceiling):
        axis.axhline(100 * ceiling, color="black", linestyle="--", linewidth=1, label="noise ceiling sqrt(r)")
    axis.axhline(0, color="grey", linewidth=0.6)
    axis.set_xticks(np.arange(len(names)), names, rotation=20, ha="right")
    axis.set_ylabel("LDS x100")
    axis.set_title(
        f"LDS on {Path(results['labels']).name} ({results['n_subsets']} subsets, {results['n_queries']} queries)"
    )
    axis.legend(fontsize=8)
    figure.tight_layout()
    save_figure(figure, path)
