"""Select training data with attributions: the pool examples that most help a set of target examples.

    python select_data.py --pool out/demo/corpus --targets task:weekday --method airrep \
        --model out/demo/model --budget 100 --strategy round-robin --output_dir out/demo/selection
    python select_data.py --pool my-pool.jsonl --targets my-targets.jsonl --method tfidf --budget 0.05 \
        --output_dir out/selection-tfidf

A method (``airrep``, ``base-encoder``, ``tfidf``, ``bm25`` or ``random``) scores every (target, pool
example) pair; a strategy (``round-robin``, ``max``, ``mean``, ``sum`` or ``attention``) turns the
pair scores into one ranked selection of ``--budget`` examples. The pool may also be an embeddings
dataset (``python -m airrep.serving.embeddings``). The result is a Hub dataset folder of the selected
records with ``score``, ``rank`` and ``target``, read with ``load_dataset(folder, split="train")``.
The work is done by :func:`airrep.serving.select_data`; see docs/serving.md.
"""

from __future__ import annotations

import sys

from airrep import cli
from airrep.serving import SelectArguments, select_data


def main(argv: list[str]) -> None:
    (args,) = cli.parse(SelectArguments, argv, __doc__)
    select_data(args)


if __name__ == "__main__":
    sys.exit(cli.run(main))
