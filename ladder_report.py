"""The ladder report: ``eval_lds.py`` reports of every rung of the target-LM ladder side by side.

Each ``--rung`` names a rung and its report folders (one per gradient projection size, say), all
made on that rung's ``lds`` labels. Every LDS is recomputed from the folders' saved score matrices.
The report folder gets ``ladder.json``, ``ladder.md``, a frontier plot per rung (LDS with intervals
against featurization seconds and bytes per example, with the noise ceiling) and, given the JSON of
``benchmarks/bench_featurization_cost.py``, the cost curve against target-LM size.

    python ladder_report.py --output_dir out/ladder/report \\
        --rung x1=out/ladder/x1/report-d384,out/ladder/x1/report-d4096 \\
               x10=out/ladder/x10/report-d384,out/ladder/x10/report-d4096 \\
        --cost_curve out/bench/cost_curve.json
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import HfArgumentParser

from airrep.ladder import all_crossings
from airrep.ladder_report import cost_curve_plot, frontier_plot, markdown, rung_methods
from airrep.outputs import write_json, write_text
from eval_lds import labels_noise_ceiling, load_eval_data

logger = logging.getLogger("ladder_report")


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
        raise ValueError("give at least one --rung NAME=REPORT_FOLDER[,REPORT_FOLDER...]")
    rungs: dict[str, list[str]] = {}
    for item in items:
        name, sep, folders = item.partition("=")
        if not sep or not name or not folders:
            raise ValueError(f"--rung {item!r}: expected NAME=REPORT_FOLDER[,REPORT_FOLDER...]")
        if name in rungs:
            raise ValueError(f"--rung {name} is given twice")
        paths = [f for f in folders.split(",") if f]
        for path in paths:
            if not (Path(path) / "results.json").is_file():
                raise FileNotFoundError(f"--rung {name}: {path} is not an eval_lds.py report (no results.json)")
        rungs[name] = paths
    return rungs


def count_target_parameters(summary: dict[str, Any]) -> int:
    """Parameters of the labels' target LM, for labels made before ``summary.json`` recorded them.

    The model is instantiated on the meta device: its config is read, no weights are loaded.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if not summary.get("target_lm"):
        raise ValueError("the labels' summary.json records neither target_lm_parameters nor target_lm")
    config = AutoConfig.from_pretrained(summary["target_lm"])
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def build(args: LadderReportArguments) -> dict[str, Any]:
    rungs = parse_rungs(args.rung)
    folder = Path(args.output_dir)
    report: dict[str, Any] = {"rungs": {}}
    for name, reports in rungs.items():
        sources = {json.loads((Path(r) / "results.json").read_text())["labels"] for r in reports}
        if len(sources) != 1:
            raise ValueError(f"--rung {name}: its reports were made on different labels {sorted(sources)}")
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


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    (args,) = HfArgumentParser(LadderReportArguments).parse_args_into_dataclasses(args=argv)
    build(args)
    logger.info("wrote %s", args.output_dir)


if __name__ == "__main__":
    main(sys.argv[1:])
