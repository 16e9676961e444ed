"""AirRep's encoder forward through the ecosystem's other CPU runtimes, against eager PyTorch (issue 27).

The roofline benchmark (``bench_encode_roofline.py``) shows eager fp32 ``encode`` at about 75% of the
machine's matrix-multiply peak, so at most a third more can come from fusing the rest (attention,
layer norms, GELU, copies). This measures what the usual tools actually give, on the same
pre-tokenized batches (the real-text corpus, longest first, as ``encode`` batches them):

- ``eager``: ``AirRepModel.forward`` as ``encode`` runs it (fp32, and bf16 autocast where kernels exist);
- ``eager, 1 thread``: the same on one thread, against the default of one per core;
- ``torch.compile``: inductor with dynamic shapes (each batch has its own length), fp32 and bf16;
- ``onnxruntime``: the model exported with ``torch.onnx.export`` (dynamic batch and length) and run
  by ONNX Runtime's CPU provider with every graph optimization (only if ``onnxruntime`` imports; it
  is not a dependency of the project: ``pip install onnxruntime onnxscript`` to include it).

Each variant's embeddings are checked against eager fp32 (smallest cosine over the texts), and the
share of padding in the batches bounds what unpadded (varlen) batches could save. Every variant is
timed ``--repeats`` times, interleaved; medians are reported with the ratio to eager fp32 of the same
run. Compilation and export are timed apart and not counted.

    PYTHONPATH=. python benchmarks/bench_encode_backends.py --n 1024 --repeats 3 --output backends.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from benchmarks.bench_encode_roofline import corpus_texts
from modeling_airrep import AirRepModel, bf16_available, longest_first, padded_batch

NAMES = ("input_ids", "attention_mask", "token_type_ids")


def batches(model: AirRepModel, records: list[dict], batch_size: int) -> tuple[list[dict], float]:
    """Padded token batches, longest text first, as ``encode`` makes them, and the padding's share."""
    texts = [model.config.format_text(r) for r in records]
    encoded, order = longest_first(model.tokenizer, texts, model.config.max_seq_length)
    out, real, total = [], 0, 0
    for start in range(0, len(texts), batch_size):
        features = padded_batch(model.tokenizer, encoded, order[start : start + batch_size])
        out.append({k: features[k] for k in NAMES})
        real += int(features["attention_mask"].sum())
        total += features["attention_mask"].numel()
    return out, 1 - real / total


def torch_runner(module: Callable, bf16: bool = False) -> Callable[[dict], np.ndarray]:
    def run(features: dict) -> np.ndarray:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return module(**features).sentence_embedding.float().numpy()

    return run


class _Embedding(torch.nn.Module):
    """The forward as a plain tensor function, for export."""

    def __init__(self, model: AirRepModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.model(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).sentence_embedding  # fmt: skip


def onnx_runner(model: AirRepModel, example: dict, folder: Path, threads: int) -> Callable[[dict], np.ndarray]:
    import onnxruntime as ort

    path = folder / "airrep.onnx"
    batch, length = torch.export.Dim("batch"), torch.export.Dim("length", max=model.config.max_seq_length)
    torch.onnx.export(_Embedding(model).eval(), tuple(example[k] for k in NAMES), str(path), input_names=list(NAMES),
                      output_names=["sentence_embedding"], dynamo=True,
                      dynamic_shapes={k: {0: batch, 1: length} for k in NAMES})  # fmt: skip
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(features: dict) -> np.ndarray:
        return session.run(None, {k: v.numpy() for k, v in features.items()})[0]

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1024, help="Texts of the real-text corpus.")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=None, help="Also write the figures as JSON here.")
    args = parser.parse_args()

    model = AirRepModel.from_encoder().eval()
    threads = torch.get_num_threads()
    data, padding = batches(model, corpus_texts(args.n), args.batch_size)
    print(f"{args.n} texts in {len(data)} batches of {args.batch_size}, longest first: {100 * padding:.1f}% padding; "
          f"{threads} threads, torch {torch.__version__}, bf16 kernels: {bf16_available()}")  # fmt: skip

    variants: dict[str, Callable[[dict], np.ndarray]] = {"eager fp32": torch_runner(model)}
    setup: dict[str, float] = {}
    if bf16_available():
        variants["eager bf16"] = torch_runner(model, bf16=True)
    eager = variants["eager fp32"]

    def one_thread(features: dict) -> np.ndarray:
        torch.set_num_threads(1)
        try:
            return eager(features)
        finally:
            torch.set_num_threads(threads)

    variants["eager fp32, 1 thread"] = one_thread
    compiled = torch.compile(model, dynamic=True)
    for name, bf16 in [("torch.compile fp32", False)] + ([("torch.compile bf16", True)] if bf16_available() else []):
        variants[name] = torch_runner(compiled, bf16=bf16)
    with tempfile.TemporaryDirectory() as tmp:
        if importlib.util.find_spec("onnxruntime") is not None:
            tic = time.perf_counter()
            variants["onnxruntime fp32"] = onnx_runner(model, data[0], Path(tmp), threads)
            setup["onnxruntime fp32"] = time.perf_counter() - tic
        else:
            print("onnxruntime is not installed: its row is skipped")

        outputs: dict[str, np.ndarray] = {}
        times: dict[str, list[float]] = {name: [] for name in variants}
        for name, run in variants.items():  # warm up; compile sees a few lengths, then generalises
            tic = time.perf_counter()
            for features in data[:: max(1, len(data) // 4)]:
                run(features)
            setup[name] = setup.get(name, 0.0) + time.perf_counter() - tic
        names = list(variants)
        for r in range(args.repeats):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                tic = time.perf_counter()
                outputs[name] = np.concatenate([variants[name](features) for features in data])
                times[name].append(time.perf_counter() - tic)

    reference = outputs["eager fp32"] / np.linalg.norm(outputs["eager fp32"], axis=1, keepdims=True)
    base = statistics.median(times["eager fp32"])
    rows = []
    print(f"\n{'variant':24s} {'texts/s':>8s} {'vs eager fp32':>14s} {'min cosine':>11s} {'setup s':>8s}")
    for name in names:
        seconds = statistics.median(times[name])
        got = outputs[name] / np.linalg.norm(outputs[name], axis=1, keepdims=True)
        cosine = float((got * reference).sum(1).min())
        rows.append({"variant": name, "seconds": seconds, "seconds_spread": [min(times[name]), max(times[name])],
                     "texts_per_second": args.n / seconds, "speedup_vs_eager_fp32": base / seconds,
                     "min_cosine_vs_eager_fp32": cosine, "setup_seconds": setup.get(name, 0.0)})  # fmt: skip
        print(f"{name:24s} {args.n / seconds:8.1f} {base / seconds:13.2f}x {cosine:11.6f} {setup.get(name, 0.0):8.1f}")
    if args.output:
        figures = {"texts": args.n, "batch_size": args.batch_size, "padding": padding, "threads": threads,
                   "torch": torch.__version__, "bf16_available": bf16_available(), "variants": rows}  # fmt: skip
        args.output.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
