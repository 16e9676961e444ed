"""The ladder report: quality and cost of every method on every rung of the target-LM ladder.

It reads ``eval_lds.py`` report folders (one or more per rung: one run at every gradient projection
size, or one folder per size)
and recomputes every LDS and interval from their saved score matrices (``scores/*.npy``) against the
rung's labels, so a figure in the ladder report cannot drift from the scores it came from. Costs
(featurization seconds and bytes per example) are measurements and are taken from ``results.json``.

Gradient methods are named with their projection budget (``logra@4096``), since one rung holds
several sizes of each.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from airrep.cli import UsageError
from airrep.evaluation.data import labels_noise_ceiling, load_eval_data
from airrep.evaluation.gradient_methods import GRADIENT_METHODS
from airrep.evaluation.influence_functions import KRONECKER_METHODS
from airrep.evaluation.report import format_lds, recompute_lds, scores_path
from airrep.outputs import save_figure, write_json, write_text
from configuration_airrep import GROUP_POOLINGS

logger = logging.getLogger(__name__)

GRADIENT_KIND = "gradient"
# Two LDS values computed from the same matrix by the same code differ only by float summation order.
RECOMPUTE_TOLERANCE = 1e-6


class ReportMismatchError(ValueError):
    """A report's ``results.json`` disagrees with what its saved score matrices give."""


def method_label(name: str, details: dict[str, Any], projection_dim: int) -> str:
    """``name``, with ``@projection_dim`` for a projected-gradient method (a report run at several sizes has it
    already); the Kronecker-factored influence functions project nothing and keep their names."""
    projected = details.get("kind") == GRADIENT_KIND and name not in KRONECKER_METHODS
    return f"{name}@{projection_dim}" if projected and "@" not in name else name


def rung_methods(report_folders: list[str | os.PathLike], losses: np.ndarray) -> dict[str, dict[str, Any]]:
    """Every method of one rung's report folders, LDS recomputed from the saved scores.

    Args:
        report_folders: ``eval_lds.py`` output folders made on the rung's labels.
        losses: ``(subsets, queries)`` losses of those labels.

    Raises:
        ReportMismatchError: a saved score matrix no longer gives the LDS its ``results.json`` records
            (the message names the file), or two folders give one method different scores.
    """
    methods: dict[str, dict[str, Any]] = {}
    for folder in map(Path, report_folders):
        results = json.loads((folder / "results.json").read_text())
        settings = results["settings"]
        recomputed = recompute_lds(
            folder, losses, settings["bootstrap_resamples"], settings["confidence"], settings["seed"]
        )
        for name, poolings in results["methods"].items():
            details = results["method_details"].get(name, {})
            label = method_label(name, details, settings["projection_dim"])
            entry: dict[str, Any] = {"kind": details.get("kind"), "description": details.get("description"),
                                     "report": str(folder), "poolings": {}}  # fmt: skip
            for pooling, recorded in poolings.items():
                fresh = recomputed.get(name, {}).get(pooling)
                file = scores_path(folder, name, pooling)
                if fresh is None:
                    raise ReportMismatchError(f"{file} is missing; results.json lists {name} ({pooling})")
                if not math.isclose(fresh["lds"], recorded["lds"], abs_tol=RECOMPUTE_TOLERANCE):
                    raise ReportMismatchError(
                        f"{file} gives LDS {fresh['lds']:.6f} but {folder / 'results.json'} records "
                        f"{recorded['lds']:.6f}: the report folder was changed after it was written"
                    )
                entry["poolings"][pooling] = {
                    **fresh,
                    "featurize_seconds_per_example": recorded["featurize_seconds_per_example"],
                    "bytes_per_example": recorded["bytes_per_example"],
                }
            if label in methods:
                previous = methods[label]["poolings"]
                same = all(
                    math.isclose(previous[p]["lds"], entry["poolings"][p]["lds"], abs_tol=RECOMPUTE_TOLERANCE)
                    for p in set(previous) & set(entry["poolings"])
                )
                if not same:
                    raise ReportMismatchError(
                        f"{label} is in {methods[label]['report']} and in {folder} with different scores"
                    )
                continue  # the same method scored twice (e.g. tfidf in every projection-size folder)
            methods[label] = entry
    return dict(sorted(methods.items(), key=lambda item: _order(item[0], item[1]["kind"])))


def _order(label: str, kind: str | None) -> tuple:
    """Encoders and lexical methods first, as reported; then each gradient method by projection size."""
    if kind != GRADIENT_KIND:
        return (0, 0, 0)
    name, _, dim = label.partition("@")
    rank = GRADIENT_METHODS.index(name) if name in GRADIENT_METHODS else len(GRADIENT_METHODS)
    return (1, rank, int(dim or 0))


def best_pooling(entry: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The pooling with the higher LDS, for one-number summaries across rungs."""
    return max(entry["poolings"].items(), key=lambda item: -math.inf if math.isnan(item[1]["lds"]) else item[1]["lds"])


def markdown(report: dict[str, Any]) -> str:
    """One table per rung, a summary across rungs, and the cost curve when there is one."""
    lines = ["# AirRep across target-LM sizes", ""]
    for rung, data in report["rungs"].items():
        ceiling = data.get("noise_ceiling") or {}
        lines += [
            f"## Rung {rung}: {data['parameters']:,} parameters",
            "",
            f"Labels `{data['labels']}`: {data['n_subsets']} subsets, {data['n_queries']} queries. "
            f"LDS x100 recomputed from the saved score matrices, 95% bootstrap intervals over queries.",
            "",
            "| method | LDS sum | LDS attention | featurize s/example | bytes/example |",
            "|---|---|---|---|---|",
        ]
        for name, entry in data["methods"].items():
            poolings = entry["poolings"]
            first = next(iter(poolings.values()))
            lines.append(
                f"| {name} | {format_lds(poolings.get('sum'))} | {format_lds(poolings.get('attention'))} | "
                f"{first['featurize_seconds_per_example']:.4g} | {first['bytes_per_example']:,.0f} |"
            )
        if ceiling.get("sqrt_r") is not None:
            lines.append(f"| noise ceiling sqrt(r) (r = {ceiling['r']:.3f}) | {100 * ceiling['sqrt_r']:.1f} | | | |")
        lines += ["", f"![frontier]({data['frontier_plot']})", ""]

    names = list(dict.fromkeys(n for data in report["rungs"].values() for n in data["methods"]))
    rungs = list(report["rungs"])
    lines += ["## Best pooling per method and rung (LDS x100)", "",
              "The better of each method's two poolings on these test queries, the same choice for every "
              "method: a summary, not a choice made on validation splits.", "",
              "| method | " + " | ".join(rungs) + " |", "|---|" + "---|" * len(rungs)]  # fmt: skip
    for name in names:
        cells = []
        for rung in rungs:
            entry = report["rungs"][rung]["methods"].get(name)
            if entry is None:
                cells.append("—")
            else:
                pooling, best = best_pooling(entry)
                cells.append(f"{format_lds(best)} ({pooling})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")

    curve = report.get("cost_curve")
    if curve:
        header = "| rung | parameters | LoGra s/example | grad-dot s/example | AirRep MiniLM | AirRep gte-small arch |"
        lines += ["", "## Featurization cost against target-LM size", "", header, "|---|---|---|---|---|---|"]
        encoders = curve["encoders"]
        for rung in curve["rungs"]:
            grad_dot = rung.get("grad-dot")  # absent when the bench ran with --skip_grad_dot
            bound = " (lower bound)" if grad_dot and grad_dot.get("kind", "measured") != "measured" else ""
            grad_dot_cell = f"{grad_dot['seconds_per_example']:.4g}{bound}" if grad_dot else "—"
            lines.append(
                f"| {rung['rung']} | {rung['parameters']:,} | {rung['logra']['seconds_per_example']:.4g} | "
                f"{grad_dot_cell} | "
                f"{encoders['airrep_minilm']['seconds_per_example']:.4g} | "
                f"{encoders['airrep_gte_small_arch']['seconds_per_example']:.4g} |"
            )
        lines += ["", "Crossings (interpolated in log parameters):", ""]
        for what, crossing in curve["crossings"].items():
            at = crossing["crossing_parameters"]
            where = (f"crosses at about {at / 1e6:,.1f}M parameters (between {' and '.join(crossing['between'])})"
                     if at else "does not cross in the measured range")  # fmt: skip
            lines.append(f"- {what}: {where}; the gradient method is cheaper on "
                         f"{crossing['cheaper_than_reference_on'] or 'no rung'}.")  # fmt: skip
        lines += ["", f"![cost curve]({report['cost_curve_plot']})"]
    return "\n".join(lines) + "\n"


def frontier_plot(rung: str, data: dict[str, Any], path: str | os.PathLike) -> None:
    """LDS (with intervals) against featurization seconds and against bytes per example, with sqrt(r).

    One colour per method family (a gradient method's projection sizes share it, joined by a line per
    pooling, cheapest first) and one label per family, at its best point: a rung holds two dozen
    entries, and a colour and label for each would repeat colours and overlap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families: dict[str, list[dict[str, Any]]] = {}
    for name, entry in data["methods"].items():
        families.setdefault(name.partition("@")[0], []).append(entry)
    # tab10's ten, then tab20's lighter shades; AirRep in black so that it stands out among the baselines
    palette = [plt.get_cmap("tab10")(i) for i in range(10)] + [plt.get_cmap("tab20")(i) for i in range(1, 20, 2)]
    others = itertools.cycle(palette)
    colors = {family: "black" if family == "airrep" else next(others) for family in families}
    markers = {"sum": "o", "attention": "^"}
    figure, axes = plt.subplots(1, 2, figsize=(13, 5.5), sharey=True)
    for axis, cost, xlabel in (
        (axes[0], "featurize_seconds_per_example", "featurization seconds per example (log)"),
        (axes[1], "bytes_per_example", "bytes stored per example (log)"),
    ):
        for family, entries in families.items():
            color = colors[family]
            emphasis = {"markersize": 9, "linewidth": 2} if family == "airrep" else {"markersize": 6, "linewidth": 1}
            best: tuple[float, float] | None = None
            for pooling in GROUP_POOLINGS:
                points = sorted(
                    (
                        entry["poolings"][pooling]
                        for entry in entries
                        if pooling in entry["poolings"] and not math.isnan(entry["poolings"][pooling]["lds"])
                    ),
                    key=lambda point: point[cost],
                )
                if not points:
                    continue
                xs = [point[cost] for point in points]
                ys = [100 * point["lds"] for point in points]
                below = [y - 100 * point["ci"][0] for y, point in zip(ys, points, strict=True)]
                above = [100 * point["ci"][1] - y for y, point in zip(ys, points, strict=True)]
                label = family if pooling == GROUP_POOLINGS[0] else None
                axis.errorbar(
                    xs, ys, yerr=[below, above], fmt=markers.get(pooling, "s") + "-", color=color, capsize=2,
                    alpha=0.9, label=label, **emphasis,
                )  # fmt: skip
                top = max(zip(ys, xs, strict=True))
                best = top if best is None or top > best else best
            if best is not None:
                weight = "bold" if family == "airrep" else "normal"
                axis.annotate(
                    family, (best[1], best[0]), fontsize=7, color=color, xytext=(4, 4), textcoords="offset points",
                    fontweight=weight,
                )  # fmt: skip
        ceiling = (data.get("noise_ceiling") or {}).get("sqrt_r")
        if ceiling is not None:
            axis.axhline(100 * ceiling, color="black", linestyle="--", linewidth=1, label="noise ceiling sqrt(r)")
        axis.axhline(0, color="grey", linewidth=0.6)
        axis.set_xscale("log")
        axis.margins(x=0.12)  # room for the labels of the costliest points
        axis.set_xlabel(xlabel)
    axes[0].set_ylabel("LDS x100 (o sum, ^ attention pooling)")
    axes[1].legend(
        fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), title="method (sizes joined)", title_fontsize=7
    )
    figure.suptitle(f"Rung {rung}: target LM with {data['parameters']:,} parameters")
    figure.tight_layout()
    save_figure(figure, path)


def cost_curve_plot(curve: dict[str, Any], path: str | os.PathLike) -> None:
    """Featurization seconds per example against target-LM parameters, log-log, AirRep as flat lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rungs = sorted(curve["rungs"], key=lambda r: r["parameters"])
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for method, color in (("logra", "tab:red"), ("grad-dot", "tab:orange"), ("ekfac", "tab:purple")):
        measured = [r for r in rungs if method in r]
        if not measured:
            continue
        params = [r["parameters"] for r in measured]
        seconds = [r[method]["seconds_per_example"] for r in measured]
        label = {"grad-dot": "grad-dot (TracIn: x checkpoints)",
                 "ekfac": "EK-FAC (one job over its examples and queries)"}.get(method, method)  # fmt: skip
        axis.plot(params, seconds, "-", color=color, label=label)
        for p, s, r in zip(params, seconds, measured, strict=True):
            bound = r[method].get("kind", "measured") != "measured"
            axis.plot(p, s, "o", color=color, markerfacecolor="white" if bound else color)
    for (name, encoder), style in zip(curve["encoders"].items(), ("-", "--", ":", "-."), strict=False):
        axis.axhline(encoder["seconds_per_example"], color="tab:blue", linestyle=style, label=name)
    for r in rungs:
        axis.annotate(r["rung"], (r["parameters"], r["logra"]["seconds_per_example"]), fontsize=7,
                      xytext=(3, -10), textcoords="offset points")  # fmt: skip
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("target-LM parameters")
    axis.set_ylabel("featurization seconds per example")
    axis.set_title(f"Cost per example ({curve['tokens_per_example']:.0f} tokens, {curve['threads']} CPU threads); "
                   "hollow: lower bound", fontsize=9)  # fmt: skip
    axis.legend(fontsize=7)
    figure.tight_layout()
    save_figure(figure, path)


def cost_crossings(rungs: list[dict[str, Any]], method: str, reference_seconds: float) -> dict[str, Any]:
    """Where ``method``'s featurization cost per example crosses ``reference_seconds`` (AirRep's).

    ``rungs`` are entries with ``parameters`` and ``{method: {"seconds_per_example": ...}}``. Between
    the two rungs where the sign of ``cost - reference`` turns, the crossing is interpolated linearly
    in log(parameters) against log(cost / reference).

    Returns:
        ``{"crossing_parameters": float | None, "between": [rung, rung] | None, "cheaper_than_reference_on":
        [rungs], "dearer_on": [rungs]}``; ``crossing_parameters`` is the first crossing, None if there is
        none in the measured range.
    """
    ordered = sorted((r for r in rungs if method in r), key=lambda r: r["parameters"])
    log_ratio = [math.log(r[method]["seconds_per_example"] / reference_seconds) for r in ordered]
    crossing: dict[str, Any] = {
        "crossing_parameters": None,
        "between": None,
        "cheaper_than_reference_on": [r["rung"] for r, v in zip(ordered, log_ratio, strict=True) if v < 0],
        "dearer_on": [r["rung"] for r, v in zip(ordered, log_ratio, strict=True) if v >= 0],
    }
    for (low, f_low), (high, f_high) in itertools.pairwise(zip(ordered, log_ratio, strict=True)):
        if (f_low < 0) != (f_high < 0):
            x_low, x_high = math.log(low["parameters"]), math.log(high["parameters"])
            x = x_low + f_low * (x_high - x_low) / (f_low - f_high)
            crossing["crossing_parameters"] = math.exp(x)
            crossing["between"] = [low["rung"], high["rung"]]
            break
    return crossing


def all_crossings(
    curve: dict[str, Any], methods: tuple[str, ...] = ("logra", "grad-dot", "ekfac")
) -> dict[str, dict[str, Any]]:
    """:func:`cost_crossings` of every gradient method that some rung measured against every encoder of a
    cost curve.

    ``curve`` is the JSON of ``benchmarks/bench_featurization_cost.py``: ``rungs`` and ``encoders``.
    Keys are ``"METHOD vs ENCODER"``.
    """
    measured = [m for m in methods if any(m in rung for rung in curve["rungs"])]
    return {
        f"{method} vs {encoder}": cost_crossings(curve["rungs"], method, figures["seconds_per_example"])
        for method in measured
        for encoder, figures in curve["encoders"].items()
    }


@dataclass
class LadderReportArguments:
    output_dir: str = field(metadata={"help": "The ladder report folder to write."})
    rung: list[str] = field(
        default_factory=list,
        metadata={"help": "NAME=REPORT[,REPORT...]: a rung and its eval_lds.py report folders, smallest rung "
                          "first; one item per rung."},
    )  # fmt: skip
    cost_curve: str | None = field(
        default=None, metadata={"help": "JSON written by benchmarks/bench_featurization_cost.py --output."}
    )


def parse_rungs(items: list[str]) -> dict[str, list[str]]:
    """``{name: [report folders]}`` from ``NAME=FOLDER[,FOLDER...]`` items, with errors that name the item."""
    if not items:
        raise UsageError("give at least one --rung NAME=REPORT_FOLDER[,REPORT_FOLDER...]")
    rungs: dict[str, list[str]] = {}
    for item in items:
        name, sep, folders = item.partition("=")
        if not sep or not name or not folders:
            raise UsageError(f"--rung {item!r}: expected NAME=REPORT_FOLDER[,REPORT_FOLDER...]")
        if name in rungs:
            raise UsageError(f"--rung {name} is given twice")
        paths = [f for f in folders.split(",") if f]
        for path in paths:
            if not (Path(path) / "results.json").is_file():
                raise UsageError(f"--rung {name}: {path} is not an eval_lds.py report (no results.json)")
        rungs[name] = paths
    return rungs


def count_target_parameters(summary: dict[str, Any]) -> int:
    """Parameters of the labels' target LM, for labels made before ``summary.json`` recorded them.

    The model is instantiated on the meta device: its config is read, no weights are loaded.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if not summary.get("target_lm"):
        raise UsageError("the labels' summary.json records neither target_lm_parameters nor target_lm")
    config = AutoConfig.from_pretrained(summary["target_lm"])
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def build_ladder_report(args: LadderReportArguments) -> dict[str, Any]:
    """Write the ladder report folder ``args`` describes; its ``ladder.json`` content."""
    rungs = parse_rungs(args.rung)
    folder = Path(args.output_dir)
    report: dict[str, Any] = {"rungs": {}}
    for name, reports in rungs.items():
        sources = {json.loads((Path(r) / "results.json").read_text())["labels"] for r in reports}
        if len(sources) != 1:
            raise UsageError(f"--rung {name}: its reports were made on different labels {sorted(sources)}")
        data = load_eval_data(sources.pop())
        logger.info("rung %s: recomputing LDS of %d report folder(s) on %s", name, len(reports), data.source)
        entry = {
            "labels": data.source,
            "target_lm": data.summary.get("target_lm"),
            "parameters": data.summary.get("target_lm_parameters") or count_target_parameters(data.summary),
            "n_subsets": len(data.subsets),
            "n_queries": len(data.query_texts),
            "noise_ceiling": labels_noise_ceiling(data),
            "labels_compute_seconds": data.summary.get("compute_seconds"),
            "methods": rung_methods(reports, data.losses),
            "frontier_plot": f"frontier-{name}.png",
        }
        frontier_plot(name, entry, folder / entry["frontier_plot"])
        report["rungs"][name] = entry
    if args.cost_curve:
        curve = json.loads(Path(args.cost_curve).read_text())
        # Recomputed here so that the report never shows crossings from another version of the rule.
        curve["crossings"] = all_crossings(curve)
        report["cost_curve"] = curve
        report["cost_curve_plot"] = "cost_curve.png"
        cost_curve_plot(curve, folder / report["cost_curve_plot"])
    write_json(folder / "ladder.json", report)
    write_text(folder / "ladder.md", markdown(report))
    return report
