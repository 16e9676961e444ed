"""The main job: build an AirRep checkpoint, load it the way users do, and attribute a few queries.

Run with ``make demo`` (or ``python -m airrep.demo --output_dir out/demo``). Later stages of the
pipeline (labels, training, evaluation) grow into this command.
"""

from __future__ import annotations

import logging
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from transformers import AutoModel, HfArgumentParser

from airrep.demo_records import queries, training_records
from modeling_airrep import AirRepModel

logger = logging.getLogger("airrep.demo")


@dataclass
class DemoArguments:
    output_dir: str = field(default="out/demo", metadata={"help": "Everything the demo writes goes here."})
    base_encoder: str | None = field(
        default=None, metadata={"help": "BERT-family encoder folder or Hub id; default: bundled all-MiniLM-L6-v2."}
    )
    top_k: int = field(default=3, metadata={"help": "Training examples shown per query."})
    overwrite: bool = field(default=False, metadata={"help": "Rebuild the checkpoint even if it exists."})


def build_checkpoint(args: DemoArguments) -> Path:
    folder = Path(args.output_dir) / "model"
    if (folder / "config.json").exists() and not args.overwrite:
        logger.info("Reusing the checkpoint in %s (pass --overwrite to rebuild it)", folder)
        return folder
    logger.info("Building an untrained AirRep from %s", args.base_encoder or "the bundled all-MiniLM-L6-v2")
    AirRepModel.from_encoder(args.base_encoder).save_pretrained(folder)
    return folder


def _shorten(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    (args,) = HfArgumentParser(DemoArguments).parse_args_into_dataclasses(args=argv)
    folder = build_checkpoint(args)

    # Load exactly as a user would from the Hub: through AutoModel and the code inside the folder.
    model = AutoModel.from_pretrained(folder, trust_remote_code=True)
    train, tests = training_records(), queries()
    train_embeddings = model.encode(train)
    query_embeddings = model.encode(tests)
    top_scores, top_rows = model.top_k(query_embeddings, train_embeddings, k=args.top_k)

    by_task: dict[str, list[int]] = defaultdict(list)
    for row, record in enumerate(train):
        by_task[record["task"]].append(row)
    tasks = sorted(by_task)
    attention = model.group_influence(query_embeddings, train_embeddings, [by_task[t] for t in tasks])
    summed = model.group_influence(query_embeddings, train_embeddings, [by_task[t] for t in tasks], pooling="sum")

    print(f"\nAirRep checkpoint: {folder} (untrained: the base encoder with an identity projection)")
    for q, query in enumerate(tests):
        print(f"\nQuery: {_shorten(model.config.format_text(query), 70)!r}")
        for rank, (score, row) in enumerate(zip(top_scores[q], top_rows[q], strict=True), start=1):
            text = _shorten(model.config.format_text(train[row]))
            print(f"  {rank}. {score:7.3f}  [{train[row]['task']:<11}] {text}")
        best = int(np.argmax(attention[:, q]))
        print(
            "  group influence by task (attention | sum): "
            + ", ".join(f"{t} {attention[i, q]:.2f} | {summed[i, q]:.1f}" for i, t in enumerate(tasks))
            + f"  -> top task: {tasks[best]}"
        )
    print(
        "\nPublish and load it:\n"
        f"  hf upload ORG/airrep-small-demo {folder}\n"
        '  AutoModel.from_pretrained("ORG/airrep-small-demo", trust_remote_code=True)\n'
    )


if __name__ == "__main__":
    main(sys.argv[1:])
