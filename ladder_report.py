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

import logging
import sys

from airrep import cli
from airrep.evaluation import LadderReportArguments, build_ladder_report

logger = logging.getLogger(__name__)


def main(argv: list[str]) -> None:
    (args,) = cli.parse(LadderReportArguments, argv, __doc__)
    build_ladder_report(args)
    logger.info("wrote %s", args.output_dir)


if __name__ == "__main__":
    sys.exit(cli.run(main))
