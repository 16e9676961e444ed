"""Generate subset-loss labels: fine-tune the target LM on many random training subsets and record
each query's response loss. The result is a Hub dataset folder with configs ``pool``, ``queries`` and
``labels`` (docs/design.md, "The labels dataset"), read with ``load_dataset(folder, "labels")``.

    python generate_labels.py --preset smoke --mode train --output_dir out/smoke/labels-train
    python generate_labels.py --preset smoke --mode lds   --output_dir out/smoke/labels-lds
    ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 generate_labels.py --preset demo --mode lds --output_dir ...

By default the built-in corpus and target LM are built next to ``output_dir`` (in ``../corpus`` and
``../target-lm``) and reused by later runs. Each subset's losses are written atomically as soon as
they are known, so a killed run resumes where it stopped. The work is done by
:func:`airrep.labels.generate_labels`; see docs/labels.md.
"""

from __future__ import annotations

import sys

import datasets

from airrep import cli
from airrep.labels import LabelArguments, generate_labels


def main(argv: list[str]) -> None:
    datasets.disable_progress_bars()  # small parquet writes; the subset-model bar is the one that matters
    (args,) = cli.parse(LabelArguments, argv, __doc__)
    generate_labels(args)


if __name__ == "__main__":
    sys.exit(cli.run(main))
