"""Encode throughput of AirRepModel.encode against a bare forward, and the gain from length sorting.

In one run, on the same texts and the same untrained AirRep (bundled all-MiniLM-L6-v2):

- ``bare sorted``: model(**batch) over batches tokenized before the clock starts, in the order
  encode() uses (longest first); the floor that encode() can reach.
- ``encode``: AirRepModel.encode(records), end to end (formatting, sorting, tokenizing, copying out).
- ``bare unsorted``: the same bare forward over batches in input order, as without length sorting.

Each variant runs ``--repeats`` times, interleaved in a rotating order; the median is reported.

    python benchmarks/bench_encode.py --n 1024 --batch_size 32 --repeats 3
"""

from __future__ import annotations

import argparse
import inspect
import json
import statistics
import time
from collections.abc import Callable

import torch

from modeling_airrep import AirRepModel, longest_first

STDLIB_MODULES = [
    "argparse", "asyncio", "collections", "csv", "datetime", "email", "functools", "http.client",
    "inspect", "itertools", "json", "logging", "os", "pathlib", "re", "shutil", "socket", "sqlite3",
    "string", "subprocess", "tarfile", "textwrap", "threading", "typing", "unittest", "urllib.request",
    "zipfile",
]  # fmt: skip


def stdlib_records(n: int) -> list[dict[str, str]]:
    """Prompt/response records from standard-library docstrings: real text of widely varying length."""
    import importlib

    records: list[dict[str, str]] = []
    for module_name in STDLIB_MODULES:
        module = importlib.import_module(module_name)
        for name, member in sorted(vars(module).items()):
            doc = inspect.getdoc(member) if not name.startswith("_") else None
            if doc and len(doc) > 20:
                records.append({"prompt": f"What does {module_name}.{name} do?", "response": doc})
    if len(records) < n:
        raise SystemExit(f"only {len(records)} docstrings available, asked for {n}")
    return records[:n]


def tokenized_batches(model: AirRepModel, texts: list[str], order: list[int], batch_size: int) -> list[dict]:
    return [
        model.tokenizer(
            [texts[i] for i in order[start : start + batch_size]],
            padding=True,
            truncation=True,
            max_length=model.config.max_seq_length,
            return_tensors="pt",
        )
        for start in range(0, len(order), batch_size)
    ]


def padding_fraction(batches: list[dict]) -> float:
    total = sum(b["attention_mask"].numel() for b in batches)
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    return 1 - real / total


@torch.inference_mode()
def bare_forward(model: AirRepModel, batches: list[dict]) -> None:
    for batch in batches:
        model(**batch).sentence_embedding.float().cpu()


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1024, help="texts to encode")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    model = AirRepModel.from_encoder().eval()
    records = stdlib_records(args.n)
    texts = [model.config.format_text(r) for r in records]
    _, sorted_order = longest_first(model.tokenizer, texts, model.config.max_seq_length)  # what encode() uses
    sorted_batches = tokenized_batches(model, texts, sorted_order, args.batch_size)
    unsorted_batches = tokenized_batches(model, texts, list(range(len(texts))), args.batch_size)
    tokens = sum(int(b["attention_mask"].sum()) for b in sorted_batches)

    variants = {
        "bare sorted": lambda: bare_forward(model, sorted_batches),
        "encode": lambda: model.encode(records, batch_size=args.batch_size, show_progress_bar=False),
        "bare unsorted": lambda: bare_forward(model, unsorted_batches),
    }
    bare_forward(model, sorted_batches[:2])  # warm-up
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for repeat in range(args.repeats):
        # Rotate the order each repeat so that no variant always runs first (or after the slowest).
        for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
            times[name].append(timed(variants[name]))
    median = {name: statistics.median(values) for name, values in times.items()}

    figures = {
        "texts": args.n,
        "batch_size": args.batch_size,
        "torch_threads": torch.get_num_threads(),
        "mean_tokens_per_text": tokens / args.n,
        "seconds": median,
        "seconds_all_repeats": times,
        "texts_per_second": {name: args.n / t for name, t in median.items()},
        "encode_overhead_vs_bare": median["encode"] / median["bare sorted"] - 1,
        "sorting_speedup": median["bare unsorted"] / median["bare sorted"],
        "padding_fraction": {
            "sorted": padding_fraction(sorted_batches),
            "unsorted": padding_fraction(unsorted_batches),
        },
    }
    print(
        f"{args.n} texts, {figures['mean_tokens_per_text']:.0f} tokens each on average, batch {args.batch_size}, "
        f"{figures['torch_threads']} threads, median of {args.repeats}"
    )
    for name, seconds in median.items():
        print(f"  {name:<14} {seconds:7.2f} s  {args.n / seconds:7.1f} texts/s")
    print(f"  encode overhead vs bare sorted forward: {figures['encode_overhead_vs_bare']:+.1%} (goal: at most +10%)")
    print(
        f"  length sorting speed-up (bare unsorted / bare sorted): {figures['sorting_speedup']:.2f}x; "
        f"padding {figures['padding_fraction']['unsorted']:.0%} -> {figures['padding_fraction']['sorted']:.0%}"
    )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(figures, handle, indent=2)


if __name__ == "__main__":
    main()
