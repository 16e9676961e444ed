"""The main job: the whole AirRep pipeline at one preset, ending in a report a user can look at.

    make demo                                   # python -m airrep.demo --preset demo --output_dir out/demo

Stages, each reused when the command runs again (a finished stage is skipped; a killed one resumes):

1. the built-in corpus and target LM, then ``train``- and ``lds``-mode labels (:mod:`airrep.labels`);
2. AirRep trained on the ``train`` labels (:mod:`airrep.training`);
3. LDS of AirRep and every baseline on the held-out ``lds`` labels (:mod:`airrep.evaluation`).

It ends by printing the LDS table with the noise ceiling, the plot's path, the top attributions of
two test queries, and the ``hf upload`` / ``from_pretrained`` lines for what it made.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from datasets import load_dataset
from transformers import AutoModel

from airrep import cli
from airrep.cli import UsageError
from airrep.evaluation import EvalArguments, evaluate
from airrep.labels import LabelArguments, generate_labels
from airrep.outputs import differing_keys
from airrep.presets import TRAIN_PRESETS, for_precision
from airrep.training import parse_arguments, train_airrep
from modeling_airrep import bf16_available

logger = logging.getLogger(__name__)


@dataclass
class DemoArguments:
    output_dir: str = field(default="out/demo", metadata={"help": "Everything the demo writes goes here."})
    preset: str = field(default="demo", metadata={"help": "Preset of every stage: smoke, demo, bench or paper."})
    top_k: int = field(default=3, metadata={"help": "Training examples shown per test query."})


def _shorten(text: str, width: int = 70) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _check_training_preset(folders: dict[str, Path], preset: str) -> None:
    """Refuse to reuse a checkpoint trained with other preset settings (from an older version, say).

    The settings expected are those ``train_airrep.py`` uses on this machine: a bf16 preset trains in
    fp32, with its fp32 step count, where bf16 kernels are missing.
    """
    settings = TRAIN_PRESETS[preset]
    expected = for_precision(settings, settings.bf16 and bf16_available())
    record = json.loads((folders["model"] / "airrep_training.json").read_text())
    differences = differing_keys(record.get("preset", {}), asdict(expected))
    if differences:
        raise UsageError(
            f"{folders['model']} holds an AirRep trained with other settings than the {preset!r} preset's "
            f"(they differ in {differences}); remove it and {folders['report']} to train and score it "
            "again, or choose another --output_dir"
        )


def run_stages(args: DemoArguments) -> dict[str, Path]:
    """Run (or reuse) every stage; returns the folders it made."""
    out = Path(args.output_dir)
    folders = {name: out / name for name in ("labels-train", "labels-lds", "model", "report")}
    timings = {}
    for mode in ("lds", "train"):
        tic = time.perf_counter()
        generate_labels(LabelArguments(output_dir=str(folders[f"labels-{mode}"]), preset=args.preset, mode=mode))
        timings[f"labels ({mode})"] = time.perf_counter() - tic
    tic = time.perf_counter()
    if (folders["model"] / "airrep_training.json").exists():
        _check_training_preset(folders, args.preset)
        logger.info("Reusing the trained AirRep in %s", folders["model"])
    else:
        train_airrep(*parse_arguments(["--preset", args.preset, "--labels", str(folders["labels-train"]),
                                       "--output_dir", str(folders["model"])]))  # fmt: skip
    timings["training"] = time.perf_counter() - tic
    tic = time.perf_counter()
    evaluate(EvalArguments(labels=str(folders["labels-lds"]), output_dir=str(folders["report"]), preset=args.preset,
                           model=[str(folders["model"])]))  # fmt: skip
    timings["evaluation"] = time.perf_counter() - tic
    logger.info("stage wall times: %s", ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    return folders


def report(folders: dict[str, Path], top_k: int) -> None:
    """Print the table, the plot's path, two test queries' top attributions and the publishing lines."""
    print("\n" + (folders["report"] / "results.md").read_text().split("\nMethod details:")[0].rstrip())
    print(f"\nPlot: {folders['report'] / 'lds.png'}")

    # Load the checkpoint as a user would from the Hub: through AutoModel and the code in the folder.
    model = AutoModel.from_pretrained(folders["model"], trust_remote_code=True)
    pool = load_dataset(str(folders["labels-lds"]), "pool", split="train")
    queries = load_dataset(str(folders["labels-lds"]), "queries", split="train")
    pool_embeddings = model.encode(pool["text"])
    query_embeddings = model.encode(queries["text"][:2])
    scores, rows = model.top_k(query_embeddings, pool_embeddings, k=top_k)
    for q in range(len(query_embeddings)):
        task = queries[q].get("task", "?")
        print(f"\nTest query [{task}]: {_shorten(queries[q]['text'])!r}")
        for rank, (score, row) in enumerate(zip(scores[q].tolist(), rows[q].tolist(), strict=True), start=1):
            print(f"  {rank}. {score:7.3f}  [{pool[row].get('task', '?')}] {_shorten(pool[row]['text'], 60)}")
    print(
        "\nPublish and load what the demo made:\n"
        f"  hf upload ORG/airrep-small-demo {folders['model']} --exclude 'checkpoint-*'\n"
        f"  hf upload ORG/airrep-labels-demo {folders['labels-lds']} --repo-type dataset\n"
        '  AutoModel.from_pretrained("ORG/airrep-small-demo", trust_remote_code=True)\n'
        '  load_dataset("ORG/airrep-labels-demo", "labels", split="train")\n'
    )


def main(argv: list[str]) -> None:
    (args,) = cli.parse(DemoArguments, argv, __doc__)
    report(run_stages(args), args.top_k)


if __name__ == "__main__":
    sys.exit(cli.run(main, prog="python -m airrep.demo"))
