"""Compare AirRep checkpoints on the validation splits they were trained without, with paired intervals.

Settings are chosen on validation splits only (the ``lds`` test labels belong to ``eval_lds.py``).
With 2 splits of 32 queries a difference of 0.01 LDS is often noise, so every checkpoint is scored on
the same queries and its difference from a reference checkpoint gets a paired bootstrap interval
(queries resampled together for both).

    python -m airrep.evaluation.compare_validation --labels out/demo/labels-train \\
        --models untrained out/exp/frozen5 out/exp/frozen5-reference-weighting --reference out/exp/frozen5

The held-out splits are read from each checkpoint's ``airrep_training.json`` and must agree;
``untrained`` is the base encoder (the bundled MiniLM) used as AirRep starts from it.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from airrep import cli
from airrep.cli import UsageError
from airrep.evaluation.report import format_difference, format_lds
from airrep.labels.dataset import load_labels
from airrep.lds import paired_summary
from airrep.outputs import write_json
from airrep.training.lds_evaluator import LDSEvaluator
from configuration_airrep import DEFAULT_POOLINGS
from modeling_airrep import AirRepModel

logger = logging.getLogger(__name__)
UNTRAINED = "untrained"


def held_out_splits(models: list[str]) -> list[int]:
    """The validation splits recorded by the trained checkpoints; they must all be the same."""
    recorded = {}
    for model in models:
        if model == UNTRAINED:
            continue
        file = Path(model) / "airrep_training.json"
        if not file.is_file():
            raise FileNotFoundError(f"{model}: no airrep_training.json; pass --splits explicitly")
        recorded[model] = json.loads(file.read_text())["held_out_splits"]
    if not recorded:
        raise UsageError("no trained checkpoint to read the held-out splits from; pass --splits")
    if len({tuple(v) for v in recorded.values()}) > 1:
        raise UsageError(f"the checkpoints were validated on different splits: {recorded}")
    return next(iter(recorded.values()))


def compare(
    labels: str, models: list[str], reference: str, splits: list[int], n_resamples: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """Per-model LDS with intervals and the paired difference from ``reference``, per pooling."""
    if reference not in models:
        raise UsageError(f"--reference {reference!r} is not among --models {models}")
    data = load_labels(labels)
    unknown = [s for s in splits if s not in data.splits]
    if unknown:
        raise UsageError(f"{labels} has no split(s) {unknown}; it has {sorted(data.splits)}")
    evaluator = LDSEvaluator(data, splits)
    per_query: dict[str, dict[str, np.ndarray]] = {}
    for model in models:
        encoder = AirRepModel.from_encoder() if model == UNTRAINED else AirRepModel.from_pretrained(model)
        per_query[model] = evaluator.per_query(encoder.eval())
        logger.info("%s: %s", model, {p: round(float(v.mean()), 4) for p, v in per_query[model].items()})
    out: dict[str, Any] = {"labels": labels, "splits": splits, "reference": reference,
                           "n_queries": len(next(iter(per_query[reference].values()))), "models": {}}  # fmt: skip
    for model, values in per_query.items():
        out["models"][model] = {
            pooling: paired_summary(v, v - per_query[reference][pooling], n_resamples, seed)
            for pooling, v in values.items()
        }
    return out


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"Validation LDS x100 on splits {result['splits']} of `{result['labels']}` ({result['n_queries']} queries); "
        f"differences from `{result['reference']}` with paired 95% bootstrap intervals.",
        "",
        "| checkpoint | " + " | ".join(f"{p} | diff. {p}" for p in DEFAULT_POOLINGS) + " |",
        "|---" * (1 + 2 * len(DEFAULT_POOLINGS)) + "|",
    ]
    for model, entry in result["models"].items():
        cells = []
        for pooling in DEFAULT_POOLINGS:
            e = entry[pooling]
            cells.append(format_lds(e))
            cells.append("reference" if model == result["reference"] else format_difference(e))
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


@dataclass
class CompareValidationArguments:
    labels: str = field(metadata={"help": "The train-mode labels the checkpoints were trained on."})
    models: list[str] = field(metadata={"help": f"Checkpoint folders, or {UNTRAINED!r}."})
    reference: str | None = field(
        default=None, metadata={"help": "The checkpoint differences are taken from (default: the first)."}
    )
    splits: list[int] | None = field(
        default=None, metadata={"help": "Validation split ids (default: from the checkpoints' airrep_training.json)."}
    )
    n_resamples: int = field(default=2000, metadata={"help": "Paired bootstrap resamples."})
    output: str | None = field(default=None, metadata={"help": "Also write the result as JSON here."})


def main(argv: list[str]) -> None:
    (args,) = cli.parse(CompareValidationArguments, argv, __doc__)
    splits = args.splits or held_out_splits(args.models)
    result = compare(args.labels, args.models, args.reference or args.models[0], splits, args.n_resamples)
    print(markdown(result))
    if args.output:
        write_json(args.output, result)


if __name__ == "__main__":
    sys.exit(cli.run(main, prog="python -m airrep.evaluation.compare_validation"))
