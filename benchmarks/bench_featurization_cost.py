"""Featurization cost against target-LM size: gradient methods on every rung of the target-LM ladder
(``airrep.labels.ladder``) up to the Qwen2.5-0.5B architecture, against AirRep's encoder, in one run.

Rungs ``x1``, ``x10``, ``x100`` are the built-in Llama target LM of a label preset (default ``demo``)
grown to 1x, 10x and 100x its parameters; ``qwen2.5-0.5b`` is Qwen2.5-0.5B's architecture (24 layers,
d=896, 151,936-token vocabulary, 494M parameters). All have random weights: the cost of a forward and
backward pass does not depend on the weights. On every rung:

- ``logra``: LoGra exactly as ``eval_lds.py`` runs it (``airrep.evaluation.gradient_methods.LoGra``): one forward
  and one backward to the activations per batch, and a Kronecker-factored projection of every linear
  layer's gradient to about ``--logra_dim`` numbers.
- ``grad-dot``: per-example gradients (``torch.func`` vmap) and the sparse random projection to
  ``--projection_dim`` numbers, as ``eval_lds.py`` runs grad-dot and grad-cos (TracIn costs this
  once per checkpoint). Per-example gradients take 4 bytes per parameter per example, twice over
  (vmap's output and the flattened copy), so the examples per vmap call shrink with the model to fit
  ``--gradient_memory_gib`` (one at a time at 0.5B). The projector's one-off build is recorded apart.
- Both run the LM head only at response positions (``logits_to_keep``), as ``eval_lds.py`` does;
  ``--compare-lm-head`` also times them with it run at every position.

The AirRep side is ``AirRepModel.encode`` with the bundled all-MiniLM-L6-v2 (6 layers) and with the
architecture of gte-small (12 layers, the paper's encoder; random weights); its cost does not depend
on the target LM. Every side sees the same examples: prompt/response records from standard-library
docstrings. A target LM is fed as many tokens per example as the encoder's WordPiece tokenizer makes
of the same text (random ids in its vocabulary), so all rungs see the same token counts.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_featurization_cost.py --n 16 \\
        --output out/bench/cost_curve.json --plot out/bench/cost_curve.png
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from airrep.evaluation.gradient_methods import GradientProjector, LoGra, examples_per_call, projected_gradients
from airrep.evaluation.ladder import all_crossings, cost_curve_plot
from airrep.labels.ladder import QWEN25_05B, rung_factor, scale_spec
from airrep.labels.target_lm import IGNORE_INDEX, SFTExample, llama_config
from airrep.outputs import write_json
from airrep.presets import LABEL_PRESETS
from benchmarks.bench_encode import stdlib_records
from configuration_airrep import format_text
from modeling_airrep import AirRepConfig, AirRepModel

GTE_SMALL = dict(num_hidden_layers=12, hidden_size=384, num_attention_heads=12, intermediate_size=1536)
QWEN_RUNG = "qwen2.5-0.5b"


def gte_small(minilm: AirRepModel) -> AirRepModel:
    """An AirRep with gte-small's architecture (random weights) and MiniLM's tokenizer (same vocabulary)."""
    model = AirRepModel(AirRepConfig(**{**minilm.config.to_diff_dict(), **GTE_SMALL})).eval()
    model.tokenizer = minilm.tokenizer
    return model


def timed(function, *args, **kwargs):
    tic = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - tic


def build_rung(name: str, preset: str) -> torch.nn.Module:
    """A rung's target LM with random weights, eager attention (vmap needs it), eval mode."""
    if name == QWEN_RUNG:
        from transformers import Qwen2Config, Qwen2ForCausalLM

        model = Qwen2ForCausalLM(Qwen2Config(**QWEN25_05B))
    else:
        from transformers import LlamaForCausalLM

        spec = scale_spec(LABEL_PRESETS[preset].target_lm, rung_factor(name))
        config = llama_config(spec, spec.vocab_size)
        config.max_position_embeddings = 512  # the bench's texts are longer than the corpus's
        model = LlamaForCausalLM(config)
    model.set_attn_implementation("eager")
    return model.eval()


def measure_rung(name: str, args: argparse.Namespace, lengths: list[int]) -> dict:
    torch.manual_seed(0)
    model, build_seconds = timed(build_rung, name, args.preset)
    n_params = sum(p.numel() for p in model.parameters())
    vocab = model.config.vocab_size
    rng = np.random.default_rng(0)
    examples = []
    for length in lengths:
        ids = rng.integers(0, vocab, length).tolist()
        prompt = length // 2
        examples.append(SFTExample(ids, [IGNORE_INDEX] * prompt + ids[prompt:]))
    n = len(examples)

    n_linear = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    rank = max(1, int(np.sqrt(args.logra_dim / n_linear)))
    logra = LoGra(model, rank)
    logra.features(examples[: args.gradient_batch_size], 0, args.gradient_batch_size, "warm-up")
    _, logra_seconds = timed(logra.features, examples, 0, args.gradient_batch_size, f"LoGra {name}")
    entry = {
        "rung": name,
        "parameters": n_params,
        "build_seconds": build_seconds,
        "logra": {"seconds_per_example": logra_seconds / n, "dim": logra.dim, "rank": rank,
                  "linear_layers": n_linear, "bytes_per_example": logra.dim * 4},
    }  # fmt: skip
    projector, projector_seconds = timed(GradientProjector, n_params, args.projection_dim)
    params = dict(model.named_parameters())
    batch = examples_per_call(n_params, args.gradient_batch_size, args.gradient_memory_gib)
    projected_gradients(model, params, examples[:batch], 0, projector, batch, "warm-up")
    _, seconds = timed(projected_gradients, model, params, examples, 0, projector, batch, f"grad-dot {name}")
    entry["grad-dot"] = {"seconds_per_example": seconds / n, "bytes_per_example": args.projection_dim * 4,
                         "kind": "measured", "examples_per_call": batch,
                         "projector_build_seconds": projector_seconds}  # fmt: skip
    if args.compare_lm_head:  # the same work with the LM head run at every position, then gathered
        everywhere = LoGra(model, rank, response_logits_only=False)
        _, seconds = timed(
            everywhere.features, examples, 0, args.gradient_batch_size, f"LoGra {name}, LM head everywhere"
        )
        entry["logra"]["seconds_per_example_lm_head_everywhere"] = seconds / n
        _, seconds = timed(projected_gradients, model, params, examples, 0, projector, batch,
                           f"grad-dot {name}, LM head everywhere", response_logits_only=False)  # fmt: skip
        entry["grad-dot"]["seconds_per_example_lm_head_everywhere"] = seconds / n
    print(json.dumps(entry), flush=True)
    return entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rungs", nargs="+", default=["x1", "x10", "x100", QWEN_RUNG],
                        help=f"ladder rungs (xN) and/or {QWEN_RUNG}")  # fmt: skip
    parser.add_argument("--preset", default="demo", help="label preset whose target LM is the ladder's x1")
    parser.add_argument("--n", type=int, default=16, help="examples featurized by every side")
    parser.add_argument("--encode_repeats", type=int, default=5, help="timed encodes of the examples (median)")
    parser.add_argument("--gradient_batch_size", type=int, default=4)
    parser.add_argument("--encode_batch_size", type=int, default=32)
    parser.add_argument("--logra_dim", type=int, default=18432, help="LoGra numbers per example (the paper's)")
    parser.add_argument("--projection_dim", type=int, default=4096, help="grad-dot numbers stored per example")
    parser.add_argument("--gradient_memory_gib", type=float, default=6.0,
                        help="memory for per-example gradients; fewer examples per call beyond it")  # fmt: skip
    parser.add_argument("--compare-lm-head", action="store_true",
                        help="also time the gradient methods with the LM head at every position, not only at "
                             "response positions (the default)")  # fmt: skip
    parser.add_argument("--output", default=None, help="write the figures as JSON here")
    parser.add_argument("--plot", default=None, help="draw the cost curve (PNG) here")
    args = parser.parse_args()
    for name in args.rungs:
        if name != QWEN_RUNG:
            try:
                rung_factor(name)
            except ValueError as error:
                parser.error(f"{error}, or {QWEN_RUNG}")

    records = stdlib_records(args.n)
    texts = [format_text(r) for r in records][: args.n]
    minilm = AirRepModel.from_encoder()
    lengths = [min(len(ids), 512) for ids in minilm.tokenizer(texts, add_special_tokens=True)["input_ids"]]

    # AirRep encodes the very examples the target LMs featurize, --encode_repeats times; the median counts.
    encoders = {}
    for name, encoder in (("airrep_minilm", minilm), ("airrep_gte_small_arch", gte_small(minilm))):
        encoder.encode(texts[: args.encode_batch_size], batch_size=args.encode_batch_size)  # warm-up
        seconds = statistics.median(
            timed(encoder.encode, texts, batch_size=args.encode_batch_size)[1] for _ in range(args.encode_repeats)
        )
        encoders[name] = {"seconds_per_example": seconds / args.n, "bytes_per_example": 384 * 4}
        print(name, json.dumps(encoders[name]), flush=True)

    rungs = [measure_rung(name, args, lengths) for name in args.rungs]
    figures = {
        "tokens_per_example": float(np.mean(lengths)),
        "threads": torch.get_num_threads(),
        "preset": args.preset,
        "encoders": encoders,
        "rungs": rungs,
    }
    figures["crossings"] = all_crossings(figures)
    print(json.dumps(figures["crossings"], indent=2))
    print(f"{'rung':>14} {'params':>12} {'logra s/ex':>11} {'grad-dot s/ex':>14} {'logra/MiniLM':>13}")
    minilm_cost = encoders["airrep_minilm"]["seconds_per_example"]
    for rung in rungs:
        print(f"{rung['rung']:>14} {rung['parameters']:>12,} {rung['logra']['seconds_per_example']:>11.4f} "
              f"{rung['grad-dot']['seconds_per_example']:>14.4f} "
              f"{rung['logra']['seconds_per_example'] / minilm_cost:>12.2f}x")  # fmt: skip
    if args.output:
        write_json(args.output, figures)  # whole or not at all: run_ladder.sh reuses a saved curve
    if args.plot:
        cost_curve_plot(figures, args.plot)


if __name__ == "__main__":
    main()
