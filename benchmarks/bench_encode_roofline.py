"""How close AirRep's ``encode`` runs to the machine's matrix-multiply peak, per precision (issue 27).

In one run, on this machine:

1. **Peak**: ``torch.mm`` throughput at the encoder's own shapes (a batch's tokens times each linear
   layer: Q/K/V/O ``d x d``, FFN up ``d x f`` and down ``f x d``), in fp32, in bf16 where oneDNN has
   bf16 kernels, and through int8 dynamically quantized ``nn.Linear`` (activations quantized per
   call, as int8 ``encode`` runs them). The encoder's peak is the FLOP-weighted mix of those shapes:
   the time a forward would take if every linear layer ran at its measured rate.
2. **encode**: ``AirRepModel.encode`` end to end (formatting, tokenizing, sorting, copying out) over
   ``--n`` texts of the real-text corpus, for each precision and batch size. Its FLOPs are counted
   from the model's shapes and each text's real token count, padding excluded:
   ``layers * (2 L (4 d^2 + 2 d f) + 4 L^2 d) + 2 d p`` per text of ``L`` tokens.
   With ``--compile`` each fp32 and bf16 variant also runs as ``encode(compile=True)``
   (``torch.compile``); its compilation is timed apart, in the warm-up, as its setup.
3. **Quality**: each variant's embeddings against fp32's: the smallest cosine over the texts.
4. **Tokenizing alone**: the tokenizer calls ``encode`` makes for the same texts and batch size, which
   run on the CPU whatever the device: the floor under ``encode`` once the forward is fast.

With ``--device cuda`` the encoder and the peak's matrix products run on the GPU (fp32 and bf16; int8
is CPU-only), and clocks wait for the device. ``--records`` reads the texts from a JSON-lines file
instead of drawing them from the real-text corpus, for a machine without Debian's text packages.

Every variant runs ``--repeats`` times, interleaved in a rotating order; medians are reported.

    python benchmarks/bench_encode_roofline.py --n 2048 --repeats 3 --output roofline.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import modeling_airrep
from modeling_airrep import ENCODE_PRECISIONS, AirRepModel, bf16_available, padded_batch, tokenized_windows


def corpus_texts(n: int, path: Path | None = None) -> list[dict]:
    """``n`` records of the real-text corpus (Debian's text packages), a fixed draw; or the first ``n``
    of a JSON-lines file of records (``--records``, gzipped if it ends in ``.gz``)."""
    if path is not None:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rt") as handle:
            records = [json.loads(line) for line, _ in zip(handle, range(n), strict=False)]
    else:
        from airrep.labels import realtext

        records = realtext.generate_split_records({"train": n}, seed=27)["train"]
    if len(records) < n:
        raise SystemExit(f"{path or 'the real-text corpus'} gave {len(records)} records, asked for {n}")
    return records


def token_counts(model: AirRepModel, records: list[dict]) -> list[int]:
    texts = [model.config.format_text(r) for r in records]
    encoded = model.tokenizer(texts, truncation=True, max_length=model.config.max_seq_length)
    return [len(ids) for ids in encoded["input_ids"]]


def encoder_flops(model: AirRepModel, lengths: list[int]) -> float:
    """Multiply-adds x 2 of one forward over texts of ``lengths`` real tokens, padding excluded."""
    c = model.config
    d, f, n = c.hidden_size, c.intermediate_size, c.num_hidden_layers
    per_text = [n * (2 * L * (4 * d * d + 2 * d * f) + 4 * L * L * d) + 2 * d * c.projection_dim for L in lengths]
    return float(sum(per_text))


def synchronize() -> None:
    """Wait for queued GPU work, so that a host clock read after it counts that work."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def device_name(device: torch.device) -> str:
    """The processor that ran the figures, as the reports name it."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


CPU = torch.device("cpu")


def time_call(fn: Callable[[], object], repeats: int = 5) -> float:
    fn()  # warm up: oneDNN primitives and quantized weights are made on the first call
    times = []
    for _ in range(repeats):
        synchronize()
        tic = time.perf_counter()
        fn()
        synchronize()
        times.append(time.perf_counter() - tic)
    return statistics.median(times)


def matmul_peaks(model: AirRepModel, tokens: int) -> dict[str, dict[str, float]]:
    """GFLOP/s of each linear shape of the encoder, per precision, for ``tokens`` rows at once, on the
    model's device."""
    c, device = model.config, model.device
    d, f = c.hidden_size, c.intermediate_size
    shapes = {"qkvo d x d": (d, d, 4), "ffn up d x f": (d, f, 1), "ffn down f x d": (f, d, 1)}
    precisions = ["fp32"] + (["int8"] if device.type == "cpu" else []) + (["bf16"] if bf16_available(device) else [])
    peaks: dict[str, dict[str, float]] = {}
    generator = torch.Generator().manual_seed(0)
    for precision in precisions:
        peaks[precision] = {}
        for name, (k, m, _) in shapes.items():
            x = torch.randn(tokens, k, generator=generator).to(device)
            flops = 2.0 * tokens * k * m
            if precision == "int8":
                layer = torch.ao.quantization.quantize_dynamic(
                    torch.nn.Sequential(torch.nn.Linear(k, m, bias=False)), {torch.nn.Linear}, dtype=torch.qint8
                )
                with torch.inference_mode():
                    seconds = time_call(lambda layer=layer, x=x: layer(x))
            else:
                dtype = torch.bfloat16 if precision == "bf16" else torch.float32
                a, w = x.to(dtype), torch.randn(k, m, generator=generator).to(device, dtype)
                with torch.inference_mode():
                    seconds = time_call(lambda a=a, w=w: a @ w)
            peaks[precision][name] = flops / seconds / 1e9
        # The mix: each shape's share of a layer's linear FLOPs (Q, K, V and O are four d x d).
        total = sum(k * m * count for k, m, count in shapes.values())
        peaks[precision]["encoder mix"] = total / sum(
            k * m * count / peaks[precision][name] for name, (k, m, count) in shapes.items()
        )
    return peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="AirRep checkpoint; default: the bundled MiniLM, untrained.")
    parser.add_argument("--n", type=int, default=2048, help="Texts of the real-text corpus to encode.")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[32, 128])
    concrete = [p for p in ENCODE_PRECISIONS if p != "auto"]
    parser.add_argument("--precisions", nargs="+", default=concrete, choices=concrete)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peak_tokens", type=int, default=4096, help="Rows of the peak's matrix products.")
    parser.add_argument("--output", type=Path, default=None, help="Also write the figures as JSON here.")
    parser.add_argument("--device", type=torch.device, default=CPU, help="cpu (default) or cuda")
    parser.add_argument("--records", type=Path, default=None,
                        help="JSON-lines records to encode instead of the real-text corpus's")  # fmt: skip
    parser.add_argument("--encoder", default=None,
                        help="Encoder folder for an untrained AirRep (default: the bundled MiniLM).")  # fmt: skip
    parser.add_argument("--window", type=int, default=modeling_airrep.ENCODE_WINDOW,
                        help="Texts encode() tokenizes at once (ENCODE_WINDOW); under --n makes several")  # fmt: skip
    parser.add_argument("--compile", action="store_true",
                        help="Also time encode(compile=True) at fp32 and bf16 (needs a C++ compiler).")  # fmt: skip
    parser.add_argument("--prefetch", choices=["auto", "on", "off"], default="auto",
                        help="Tokenize the next window while this one encodes: auto = on accelerators only, "
                             "as encode() does")  # fmt: skip
    args = parser.parse_args()
    if args.device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no GPU here")
    modeling_airrep.ENCODE_WINDOW = args.window
    if args.prefetch != "auto":
        modeling_airrep.prefetches_tokenization = lambda device: args.prefetch == "on"

    model = AirRepModel.from_pretrained(args.model) if args.model else AirRepModel.from_encoder(args.encoder)
    model = model.float().to(args.device).eval()
    device, bf16 = model.device, bf16_available(model.device)
    records = corpus_texts(args.n, args.records)
    lengths = token_counts(model, records)
    flops = encoder_flops(model, lengths)
    processor = device_name(device)
    prefetch = modeling_airrep.prefetches_tokenization(device)
    print(f"{processor}, {torch.get_num_threads()} CPU threads, torch {torch.__version__}, bf16 kernels: {bf16}; "
          f"windows of {args.window} texts, tokenized ahead: {prefetch}")  # fmt: skip
    print(f"{len(records)} texts, median {int(np.median(lengths))} tokens (max {max(lengths)}), "
          f"{flops / len(records) / 1e9:.2f} GFLOP per text")  # fmt: skip

    peaks = matmul_peaks(model, args.peak_tokens)
    print(f"\nmatrix products, {args.peak_tokens} rows (GFLOP/s):")
    for precision, rates in peaks.items():
        print(f"  {precision:5s} " + ", ".join(f"{name} {rate:.0f}" for name, rate in rates.items()))

    precisions = [p for p in args.precisions if p in peaks]  # each where it has kernels on this device
    compiles = [False, True] if args.compile else [False]
    variants = [(p, b, c) for p in precisions for b in args.batch_sizes for c in compiles if not (c and p == "int8")]
    times: dict[tuple[str, int, bool], list[float]] = {v: [] for v in variants}
    embeddings: dict[tuple[str, int, bool], np.ndarray] = {}
    setup: dict[tuple[str, int, bool], float] = {}
    for v in variants:  # warm up every variant once (oneDNN primitives, quantized weights, compilation)
        tic = time.perf_counter()
        embeddings[v] = model.encode(records[:64], batch_size=v[1], precision=v[0], compile=v[2],
                                     show_progress_bar=False)  # fmt: skip
        setup[v] = time.perf_counter() - tic
    for r in range(args.repeats):
        for v in variants[r % len(variants) :] + variants[: r % len(variants)]:
            synchronize()
            tic = time.perf_counter()
            embeddings[v] = model.encode(records, batch_size=v[1], precision=v[0], compile=v[2],
                                         show_progress_bar=False)  # fmt: skip
            times[v].append(time.perf_counter() - tic)
    texts = [model.config.format_text(r) for r in records]
    tokenize_seconds = {}
    for batch_size in args.batch_sizes:  # what encode() runs on the CPU before each forward

        def tokenize(batch_size: int = batch_size) -> None:
            for _, encoded, order in tokenized_windows(model.tokenizer, texts, model.config.max_seq_length):
                for start in range(0, len(order), batch_size):
                    padded_batch(model.tokenizer, encoded, order[start : start + batch_size])

        tokenize_seconds[batch_size] = time_call(tokenize, repeats=args.repeats)
    reference = embeddings[("fp32", args.batch_sizes[0], False)]
    unit_reference = reference / np.linalg.norm(reference, axis=1, keepdims=True)

    rows = []
    print(f"\nencode over {len(records)} texts, median of {args.repeats} (fraction of its precision's peak):")
    for precision, batch_size, compiled in variants:
        v = (precision, batch_size, compiled)
        seconds = statistics.median(times[v])
        got = embeddings[v]
        cosine = float((got / np.linalg.norm(got, axis=1, keepdims=True) * unit_reference).sum(1).min())
        rate = flops / seconds / 1e9
        peak = peaks[precision]["encoder mix"]
        fastest = min(statistics.median(t) for t in times.values())
        rows.append({"precision": precision, "batch_size": batch_size, "compile": compiled, "seconds": seconds,
                     "seconds_spread": [min(times[v]), max(times[v])], "warm_up_seconds": setup[v],
                     "texts_per_second": len(records) / seconds, "gflops": rate, "fraction_of_peak": rate / peak,
                     "min_cosine_vs_fp32": cosine, "tokenize_seconds": tokenize_seconds[batch_size],
                     "tokenize_share": tokenize_seconds[batch_size] / seconds})  # fmt: skip
        name = precision + (" compiled" if compiled else "")
        print(f"  {name:14s} batch {batch_size:4d}: {seconds:6.2f} s, {len(records) / seconds:6.1f} texts/s, "
              f"{rate:6.1f} GFLOP/s = {100 * rate / peak:5.1f}% of {peak:.0f}; x{seconds / fastest:.2f} the fastest; "
              f"min cosine vs fp32 {cosine:.6f}; tokenizing alone {tokenize_seconds[batch_size]:.2f} s"
              + (f"; warm-up (compiling) {setup[v]:.1f} s" if compiled else ""))  # fmt: skip
    if args.output:
        args.output.write_text(json.dumps({"texts": len(records), "median_tokens": float(np.median(lengths)),
                                           "flops": flops, "peaks_gflops": peaks, "encode": rows,
                                           "threads": torch.get_num_threads(), "bf16_available": bf16,
                                           "device": processor, "window": args.window, "prefetch": prefetch,
                                           "torch": torch.__version__}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
