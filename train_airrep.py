"""Train AirRep on a ``train``-mode labels dataset with the sentence-transformers trainer.

    python train_airrep.py --preset smoke --labels out/smoke/labels-train --output_dir out/smoke/model
    ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 train_airrep.py --preset smoke --labels ... --output_dir ...

Each step is one split of the labels: R of its queries and K of its subsets. The union of their texts
is embedded once and the weighted pairwise RankNet loss is taken over attention-pooled group scores
(``airrep.training.ranking_loss.AirRepRankingLoss``). LDS on whole held-out splits of the same labels
is logged during training; the test ``lds`` labels are never used here. All of
``SentenceTransformerTrainingArguments`` is accepted (``--resume_from_checkpoint``, ``--bf16``, ...).
The work is done by :func:`airrep.training.train_airrep`; see docs/training.md.
"""

from __future__ import annotations

import sys

from airrep import cli
from airrep.training import parse_arguments, train_airrep


def main(argv: list[str]) -> None:
    train_airrep(*parse_arguments(argv, __doc__))


if __name__ == "__main__":
    sys.exit(cli.run(main))
