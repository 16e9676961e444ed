"""Take what the AirRep authors' code made (github ``sunnweiwei/AirRep``) as it is.

    python -m airrep.convert model SRC OUT [--tokenizer FOLDER_OR_ID] [--dtype auto|float32|bfloat16]
    python -m airrep.convert labels SRC OUT [--data RECORDS] [--loss_dir FOLDER]

``model``: a checkpoint in the authors' layout (a folder or Hub id, such as
``sunweiwei/AirRep-Flan-Small``) becomes a complete Hub-native AirRep folder, which
``AutoModel.from_pretrained(..., trust_remote_code=True)`` and ``SentenceTransformer`` load
(``airrep.serving.authors_checkpoint``).

``labels``: SRC is either one of the authors' LDS benchmark folders (``train.jsonl``,
``test.jsonl``, ``lds.jsonl``), which becomes ``lds``-mode labels for ``eval_lds.py``, or their
``train_index.jsonl`` (or the folder holding it) with ``--data`` (the records its rows index) and
``--loss_dir`` (their ``loss-<id>.json`` files, default: beside the index), which become
``train``-mode labels for ``train_airrep.py`` (``airrep.labels.authors_labels``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from airrep import cli
from airrep.cli import UsageError


def parser() -> argparse.ArgumentParser:
    main = cli.ArgumentParser(prog="python -m airrep.convert", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    kinds = main.add_subparsers(dest="kind", required=True, metavar="{model,labels}")
    model = kinds.add_parser("model", help="an authors'-layout checkpoint -> a Hub-native AirRep folder")
    model.add_argument("source", help="the checkpoint: a folder or Hub id")
    model.add_argument("output_dir", help="the AirRep folder to write")
    model.add_argument("--tokenizer", default=None, help="tokenizer to ship when SRC has none (folder or Hub id; "
                       "default thenlper/gte-small, the authors' encoder)")  # fmt: skip
    model.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                       help="keep the stored precision (auto) or cast")  # fmt: skip
    model.add_argument("--base_model", default="thenlper/gte-small", help="the encoder it was trained from (card)")
    labels = kinds.add_parser("labels", help="the authors' LDS benchmark or training labels -> a labels dataset")
    labels.add_argument("source", help="an LDS benchmark folder, or a train_index.jsonl (or its folder)")
    labels.add_argument("output_dir", help="the labels dataset folder to write")
    labels.add_argument("--data", default=None, help="training labels: the records the index's rows point into "
                        "(a JSONL file, or a dataset folder or Hub id, split train)")  # fmt: skip
    labels.add_argument("--loss_dir", default=None, help="training labels: the folder of loss-<id>.json files")
    return main


def main(argv: list[str]) -> None:
    args = parser().parse_args(argv)
    if args.kind == "model":
        from airrep.serving.authors_checkpoint import convert_checkpoint

        convert_checkpoint(args.source, args.output_dir, args.tokenizer, args.dtype, args.base_model)
        return
    from airrep.labels.authors_labels import convert_lds_benchmark, convert_training_labels

    source = Path(args.source)
    if (source / "lds.jsonl").is_file():
        if args.data or args.loss_dir:
            raise UsageError(f"{source} is an LDS benchmark folder; --data and --loss_dir apply to training labels")
        summary = convert_lds_benchmark(source, args.output_dir)
    else:
        index = source / "train_index.jsonl" if source.is_dir() else source
        if not index.is_file():
            raise UsageError(f"{source}: neither an LDS benchmark folder (lds.jsonl) nor a train_index.jsonl")
        if args.data is None:
            raise UsageError("training labels need --data: the records the rows of train_index.jsonl point into")
        from airrep.serving.selection import load_records

        records = load_records(args.data, what="--data")
        summary = convert_training_labels(index, records, args.data, args.loss_dir or index.parent, args.output_dir)
    print(f"wrote {args.output_dir}: {summary['mode']} labels, {summary['labels']} subset models, "
          f"pool {summary['pool']}, {summary['queries']} queries")  # fmt: skip


if __name__ == "__main__":
    sys.exit(cli.run(main, prog="python -m airrep.convert"))
