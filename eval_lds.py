r"""Evaluate attribution methods by LDS on held-out ``lds`` labels (the paper's Table 1), with baselines.

    python eval_lds.py --preset smoke --labels out/smoke/labels-lds --model out/smoke/model \
        --output_dir out/smoke/report

Every method turns the pool and the queries into features, scores each (query, pool example) pair,
pools the pair scores over every labelled subset with sum and attention pooling
(``modeling_airrep.group_influence``, docs/design.md), and is scored by LDS against the recorded
losses. Methods:

- ``airrep``: one or more AirRep checkpoints (``--model``, folders or Hub ids).
- ``base-encoder``: the untrained AirRep built from the checkpoints' base encoder, used the way the
  base is meant to be used (L2-normalised when its sentence-transformers pipeline normalises).
- ``bm25`` (bm25s) and ``tfidf`` (scikit-learn): lexical similarity of the same texts.
- ``grad-dot``, ``grad-cos``, ``tracin``, ``logra``: gradients of the target LM. They are taken on the
  target LM fine-tuned on the whole pool with the labels' own SFT settings (one model that has seen
  every training example, as when attributing a model trained on the full data); TracIn uses the
  checkpoint at the end of every epoch of that fine-tuning. See ``airrep/evaluation/gradient_methods.py``.
- ``ekfac``, ``kfac``: influence functions on the same fine-tuned target LM, with the curvature of every
  linear layer but the LM head Kronecker-factored by kronfluence (EK-FAC: Grosse et al., 2023). See
  ``airrep/evaluation/influence_functions.py``.

The report folder gets ``results.json``, ``results.md``, ``lds.png`` and ``scores/NAME.POOLING.npy``.
Each method's result is written as soon as it finishes, so a method that fails, or a run that is
killed, loses nothing that was finished; a re-run with the same settings skips finished methods,
except an AirRep checkpoint whose weight files changed since it was scored (``weights_sha256``).
The work is done by :func:`airrep.evaluation.evaluate`; see docs/evaluation.md.
"""

from __future__ import annotations

import logging
import sys

from airrep import cli
from airrep.evaluation import EvalArguments, evaluate, markdown_table

logger = logging.getLogger(__name__)


def main(argv: list[str]) -> int:
    (args,) = cli.parse(EvalArguments, argv, __doc__)
    results = evaluate(args)
    print(markdown_table(results))  # here, not in evaluate(): the demo prints the same table once, at its end
    if results["errors"]:
        logger.error("failed method(s): %s", ", ".join(results["errors"]))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
