"""Paired comparison of methods from ``eval_lds.py`` reports over the same ``lds`` labels.

Two methods' intervals can overlap while one beats the other on nearly every query. Scored on the
same queries, the per-query LDS differences get a paired bootstrap interval (queries resampled
together), which is the test that "A beats B outside the interval" needs. The methods may come from
different report folders, such as a new checkpoint's report and the baselines' report.

    python -m airrep.evaluation.compare_reports --labels out/demo/labels-lds \\
        --methods out/demo/report-new:airrep out/demo/report:tfidf out/demo/report:grad-cos.attention

A method is ``REPORT:METHOD`` or ``REPORT:METHOD.POOLING``; without a pooling, the one with the higher
LDS on these labels is used, as the report tables do. Differences are taken from the first method.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from airrep import cli
from airrep.cli import UsageError
from airrep.evaluation.report import format_difference, format_lds, load_scores
from airrep.labels.dataset import lds_split, load_labels
from airrep.lds import lds, paired_summary
from airrep.outputs import write_json
from configuration_airrep import DEFAULT_POOLINGS, GROUP_POOLINGS


def _per_query(report: str, method: str, pooling: str, losses: np.ndarray) -> np.ndarray:
    return lds(load_scores(report, method, pooling, losses.shape), losses)


def resolve(spec: str, losses: np.ndarray) -> tuple[str, np.ndarray]:
    """``(name, per-query LDS)`` of one ``REPORT:METHOD[.POOLING]`` spec."""
    report, sep, method = spec.rpartition(":")
    if not sep or not report or not method:
        raise UsageError(f"{spec!r}: expected REPORT:METHOD or REPORT:METHOD.POOLING")
    name, _, pooling = method.rpartition(".")
    if pooling in GROUP_POOLINGS and name:
        return f"{report}:{name}.{pooling}", _per_query(report, name, pooling, losses)
    candidates = {p: _per_query(report, method, p, losses) for p in DEFAULT_POOLINGS}  # softmax only when named
    best = max(candidates, key=lambda p: candidates[p].mean())
    return f"{report}:{method}.{best}", candidates[best]


def compare(labels: str, specs: list[str], n_resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Each method's LDS and its paired difference from the first, with percentile bootstrap intervals."""
    if len(specs) < 2:
        raise UsageError("give at least two methods: the first is compared with each of the others")
    losses = lds_split(load_labels(labels)).losses
    resolved = [resolve(spec, losses) for spec in specs]
    reference_name, reference = resolved[0]
    # "difference" is the reference minus each method, so a positive one means the reference is ahead.
    out: dict[str, Any] = {"labels": labels, "reference": reference_name, "n_queries": int(reference.size),
                           "difference": "reference minus this", "n_resamples": n_resamples, "methods": {}}  # fmt: skip
    for name, per_query in resolved:
        out["methods"][name] = paired_summary(per_query, reference - per_query, n_resamples, seed)
    return out


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"LDS x100 on `{result['labels']}` ({result['n_queries']} queries) and the paired difference "
        f"`{result['reference']}` minus each method, 95% percentile bootstrap over queries.",
        "",
        "| method | LDS x100 | reference minus this |",
        "|---|---|---|",
    ]
    for name, e in result["methods"].items():
        cell = "reference"
        if name != result["reference"]:
            cell = format_difference(e)
        lines.append(f"| {name} | {format_lds(e)} | {cell} |")
    return "\n".join(lines) + "\n"


@dataclass
class CompareReportsArguments:
    labels: str = field(metadata={"help": "The lds labels every report was scored on."})
    methods: list[str] = field(metadata={"help": "REPORT:METHOD[.POOLING] items; the first is the reference."})
    n_resamples: int = field(default=2000, metadata={"help": "Paired bootstrap resamples."})
    output: str | None = field(default=None, metadata={"help": "Also write the result as JSON here."})


def main(argv: list[str]) -> None:
    (args,) = cli.parse(CompareReportsArguments, argv, __doc__)
    result = compare(args.labels, args.methods, args.n_resamples)
    print(markdown(result))
    if args.output:
        write_json(args.output, result)


if __name__ == "__main__":
    sys.exit(cli.run(main, prog="python -m airrep.evaluation.compare_reports"))
