"""Featurization cost against target-LM size: gradient methods on every rung of the target-LM ladder
(``airrep.labels.ladder``) up to the Qwen2.5-0.5B architecture, against AirRep's encoder, in one run.

Rungs ``x1``, ``x10``, ``x100`` are the built-in Llama target LM of a label preset (default ``demo``)
grown to 1x, 10x and 100x its parameters; ``smollm2-135m`` is SmolLM2-135M-Instruct's architecture
(30 layers, d=576, 49,152-token vocabulary, 134.5M parameters), the real rung's target LM;
``qwen2.5-0.5b`` is Qwen2.5-0.5B's (24 layers, d=896, 151,936-token vocabulary, 494M parameters). All
have random weights: the cost of a forward and backward pass does not depend on the weights. On
every rung:

- ``logra``: LoGra exactly as ``eval_lds.py`` runs it (``airrep.evaluation.gradient_methods.LoGra``): one forward
  and one backward to the activations per batch, and a Kronecker-factored projection of every linear
  layer's gradient to about ``--logra_dim`` numbers.
- ``grad-dot`` (unless ``--skip_grad_dot``): per-example gradients (``torch.func`` vmap) and the sparse
  random projection to ``--projection_dim`` numbers, as ``eval_lds.py`` runs grad-dot and grad-cos
  (TracIn costs this once per checkpoint). Per-example gradients take 4 bytes per parameter per example,
  twice over (vmap's output and the flattened copy), so the examples per vmap call shrink with the
  model to fit ``--gradient_memory_gib`` (one at a time at 0.5B). The projector's one-off build is
  recorded apart. It is timed in the first round only (it costs twice LoGra).
- ``ekfac`` (with ``--ekfac``): EK-FAC influence through kronfluence, exactly as ``eval_lds.py`` runs it
  (``airrep.evaluation.influence_functions.kronecker_influence``), on the first ``--ekfac_train`` examples
  as the training set and the next ``--ekfac_queries`` as queries, first round only. EK-FAC stores no
  per-example features: it fits the factors over the training set (covariances, eigendecompositions,
  eigenvalue refit), then recomputes every training gradient once per pass of queries (as many queries
  per pass as their full gradients fit in ``--gradient_memory_gib``). Its cost is therefore given for
  the whole job, and its ratio to AirRep is that job against encoding the same training examples and
  queries; it grows with the number of queries once they need more than one pass.
- All run the LM head only at response positions (``logits_to_keep``), as ``eval_lds.py`` does;
  ``--compare-lm-head`` also times them with it run at every position (first round only).

The AirRep side is ``AirRepModel.encode`` with the bundled all-MiniLM-L6-v2 (6 layers), in fp32 and in
every faster precision of ``--precisions`` that runs here, and with the architecture of gte-small (12
layers, the paper's encoder; random weights); its cost does not depend on the target LM. Every side
sees the same ``--n`` examples: prompt/response records from standard-library docstrings. A target LM
is fed as many tokens per example as the encoder's WordPiece tokenizer makes of the same text (random
ids in its vocabulary), so all rungs see the same token counts.

With ``--device cuda`` every side runs on the GPU (the encoders and the target LMs alike; timings wait
for the device to finish), and ``--encoder`` takes MiniLM from a folder instead of the bundled package,
for a machine that lacks it.

Every side is timed once per round, ``--rounds`` rounds, the sides in the same order each round;
figures are medians over rounds, and each ratio (LoGra over an encoder) is also given per round, so
its spread shows what the machine's variation does to it. With ``--output X.json``, what is measured
so far is rewritten to ``X.partial.json`` after every rung's round (``"complete": false``), so a run
stopped midway keeps its figures; ``X.json`` is written only whole, and the partial file then removed.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_featurization_cost.py --n 256 --rounds 3 \
        --rungs smollm2-135m qwen2.5-0.5b --skip_grad_dot --output out/bench/cost_ratio.json
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from airrep.evaluation.gradient_methods import GradientProjector, LoGra, examples_per_call, projected_gradients
from airrep.evaluation.influence_functions import kronecker_influence
from airrep.evaluation.ladder import all_crossings, cost_curve_plot
from airrep.labels.ladder import QWEN25_05B, SMOLLM2_135M, rung_factor, scale_spec
from airrep.labels.target_lm import IGNORE_INDEX, SFTExample, llama_config
from airrep.outputs import write_json
from airrep.presets import LABEL_PRESETS
from benchmarks.bench_encode import stdlib_records
from benchmarks.bench_encode_roofline import device_name, synchronize
from configuration_airrep import format_text
from modeling_airrep import AirRepConfig, AirRepModel, bf16_available

GTE_SMALL = dict(num_hidden_layers=12, hidden_size=384, num_attention_heads=12, intermediate_size=1536)
QWEN_RUNG = "qwen2.5-0.5b"
SMOLLM_RUNG = "smollm2-135m"
NAMED_RUNGS = (SMOLLM_RUNG, QWEN_RUNG)


def gte_small(minilm: AirRepModel) -> AirRepModel:
    """An AirRep with gte-small's architecture (random weights) and MiniLM's tokenizer (same vocabulary)."""
    model = AirRepModel(AirRepConfig(**{**minilm.config.to_diff_dict(), **GTE_SMALL})).eval()
    model.tokenizer = minilm.tokenizer
    return model


def timed(function, *args, **kwargs):
    synchronize()
    tic = time.perf_counter()
    result = function(*args, **kwargs)
    synchronize()
    return result, time.perf_counter() - tic


def build_rung(name: str, preset: str) -> torch.nn.Module:
    """A rung's target LM with random weights, eager attention (vmap needs it), eval mode."""
    if name == QWEN_RUNG:
        from transformers import Qwen2Config, Qwen2ForCausalLM

        model = Qwen2ForCausalLM(Qwen2Config(**QWEN25_05B))
    elif name == SMOLLM_RUNG:
        from transformers import LlamaConfig, LlamaForCausalLM

        model = LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M))
    else:
        from transformers import LlamaForCausalLM

        spec = scale_spec(LABEL_PRESETS[preset].target_lm, rung_factor(name))
        config = llama_config(spec, spec.vocab_size)
        config.max_position_embeddings = 512  # the bench's texts are longer than the corpus's
        model = LlamaForCausalLM(config)
    model.set_attn_implementation("eager")
    return model.eval()


class Rung:
    """One rung's target LM, its examples and LoGra, built once and timed once per round."""

    def __init__(self, name: str, args: argparse.Namespace, lengths: list[int]) -> None:
        torch.manual_seed(0)
        self.name, self.args = name, args
        self.model, self.build_seconds = timed(build_rung, name, args.preset)
        self.model.to(args.device)
        self.n_params = sum(p.numel() for p in self.model.parameters())
        vocab = self.model.config.vocab_size
        rng = np.random.default_rng(0)
        self.examples = []
        for length in lengths:
            ids = rng.integers(0, vocab, length).tolist()
            prompt = length // 2
            self.examples.append(SFTExample(ids, [IGNORE_INDEX] * prompt + ids[prompt:]))
        self.n_linear = sum(isinstance(m, torch.nn.Linear) for m in self.model.modules())
        self.rank = max(1, int(np.sqrt(args.logra_dim / self.n_linear)))
        self.logra = LoGra(self.model, self.rank)
        self.logra.features(self.examples[: args.gradient_batch_size], 0, args.gradient_batch_size, "warm-up")
        self.logra_seconds: list[float] = []
        self.entry: dict = {
            "rung": name,
            "parameters": self.n_params,
            "build_seconds": self.build_seconds,
            "logra": {"dim": self.logra.dim, "rank": self.rank, "linear_layers": self.n_linear,
                      "bytes_per_example": self.logra.dim * 4},
        }  # fmt: skip

    def time_round(self, first: bool) -> None:
        args, n = self.args, len(self.examples)
        _, seconds = timed(self.logra.features, self.examples, 0, args.gradient_batch_size, f"LoGra {self.name}")
        self.logra_seconds.append(seconds / n)
        self.entry["logra"]["seconds_per_example"] = statistics.median(self.logra_seconds)
        self.entry["logra"]["rounds_seconds_per_example"] = self.logra_seconds
        if first and not args.skip_grad_dot:
            projector, projector_seconds = timed(GradientProjector, self.n_params, args.projection_dim)
            params = dict(self.model.named_parameters())
            batch = examples_per_call(self.n_params, args.gradient_batch_size, args.gradient_memory_gib)
            projected_gradients(self.model, params, self.examples[:batch], 0, projector, batch, "warm-up")
            _, seconds = timed(projected_gradients, self.model, params, self.examples, 0, projector, batch,
                               f"grad-dot {self.name}")  # fmt: skip
            self.entry["grad-dot"] = {"seconds_per_example": seconds / n, "bytes_per_example": args.projection_dim * 4,
                                      "kind": "measured", "rounds": 1, "examples_per_call": batch,
                                      "projector_build_seconds": projector_seconds}  # fmt: skip
            if args.compare_lm_head:  # the same work with the LM head run at every position, then gathered
                everywhere = LoGra(self.model, self.rank, response_logits_only=False)
                _, seconds = timed(everywhere.features, self.examples, 0, args.gradient_batch_size,
                                   f"LoGra {self.name}, LM head everywhere")  # fmt: skip
                self.entry["logra"]["seconds_per_example_lm_head_everywhere"] = seconds / n
                _, seconds = timed(projected_gradients, self.model, params, self.examples, 0, projector, batch,
                                   f"grad-dot {self.name}, LM head everywhere", response_logits_only=False)  # fmt: skip
                self.entry["grad-dot"]["seconds_per_example_lm_head_everywhere"] = seconds / n
        if first and args.ekfac:
            self.time_ekfac()
        print(json.dumps({"rung": self.name, "logra_seconds_per_example": self.logra_seconds[-1]}), flush=True)

    def time_ekfac(self) -> None:
        """One EK-FAC job (factors, then pair scores) on a copy: kronfluence wraps the model in place."""
        args = self.args
        train = self.examples[: args.ekfac_train]
        queries = self.examples[args.ekfac_train : args.ekfac_train + args.ekfac_queries]
        model = copy.deepcopy(self.model)
        model.set_attn_implementation("sdpa")  # as eval_lds.py runs it: no vmap, so the fused attention
        result = kronecker_influence(model, train, queries, 0, "ekfac", args.gradient_batch_size,
                                     args.gradient_memory_gib)  # fmt: skip
        total = result.fit_seconds + result.score_seconds
        self.entry["ekfac"] = {
            "train_examples": len(train), "queries": len(queries), "fit_seconds": result.fit_seconds,
            "score_seconds": result.score_seconds, "total_seconds": total,
            "seconds_per_example": total / (len(train) + len(queries)), "factor_bytes": result.factor_bytes,
            "bytes_per_example": result.factor_bytes / len(train), "layers": result.n_tracked,
            "kind": "measured", "rounds": 1,
        }  # fmt: skip
        print(json.dumps({"rung": self.name, "ekfac": self.entry["ekfac"]}), flush=True)


def measured_figures(
    args: argparse.Namespace,
    lengths: list[int],
    sides: list[tuple[str, AirRepModel, str]],
    encode_seconds: dict[str, list[float]],
    rungs: list,
    complete: bool,
) -> dict:
    """The run's figures from what has been timed so far: medians over the rounds done, ratios per round
    for the rounds both sides have, and only the rungs timed at least once."""
    encoders = {name: {"seconds_per_example": statistics.median(per_round), "rounds_seconds_per_example": per_round,
                       "precision": precision, "bytes_per_example": 384 * 4}
                for (name, _, precision), per_round in zip(sides, encode_seconds.values(), strict=True)
                if per_round}  # fmt: skip
    timed_rungs = [rung for rung in rungs if rung.logra_seconds]
    ratios = {
        rung.name: {
            name: {"rounds": [lg / enc for lg, enc in zip(rung.logra_seconds, encode_seconds[name], strict=False)]}
            for name in encoders
        }
        for rung in timed_rungs
    }
    for per_encoder in ratios.values():
        for figures in per_encoder.values():
            figures["median"] = statistics.median(figures["rounds"])
    figures = {
        "complete": complete,
        "n": args.n,
        "rounds": args.rounds,
        "tokens_per_example": float(np.mean(lengths)),
        "threads": torch.get_num_threads(),
        "device": device_name(args.device),
        "bf16_kernels": bf16_available(args.device),
        "preset": args.preset,
        "encoders": encoders,
        "rungs": [rung.entry for rung in timed_rungs],
        "logra_over_encoder": ratios,
    }
    for rung in timed_rungs:  # an EK-FAC job against encoding its training examples and queries
        job = rung.entry.get("ekfac")
        if job:
            figures.setdefault("ekfac_over_encoder", {})[rung.name] = {
                name: job["total_seconds"] / (encoder["seconds_per_example"] * (job["train_examples"] + job["queries"]))
                for name, encoder in encoders.items()
            }
    figures["crossings"] = all_crossings(figures)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rungs", nargs="+", default=["x1", "x10", "x100", SMOLLM_RUNG, QWEN_RUNG],
                        help=f"ladder rungs (xN) and/or {', '.join(NAMED_RUNGS)}")  # fmt: skip
    parser.add_argument("--preset", default="demo", help="label preset whose target LM is the ladder's x1")
    parser.add_argument("--n", type=int, default=256, help="examples featurized by every side")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds of every side (medians reported)")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "int8"],
                        help="AirRep encode precisions timed (bf16 where it has kernels, int8 on the CPU)")  # fmt: skip
    parser.add_argument("--gradient_batch_size", type=int, default=4)
    parser.add_argument("--encode_batch_size", type=int, default=32)
    parser.add_argument("--logra_dim", type=int, default=18432, help="LoGra numbers per example (the paper's)")
    parser.add_argument("--projection_dim", type=int, default=4096, help="grad-dot numbers stored per example")
    parser.add_argument("--skip_grad_dot", action="store_true", help="time LoGra only on the rungs")
    parser.add_argument("--gradient_memory_gib", type=float, default=6.0,
                        help="memory for per-example gradients; fewer examples per call beyond it")  # fmt: skip
    parser.add_argument("--ekfac", action="store_true",
                        help="also time one EK-FAC job through kronfluence per rung (first round only)")  # fmt: skip
    parser.add_argument("--ekfac_train", type=int, default=64, help="EK-FAC's training examples (the first ones)")
    parser.add_argument("--ekfac_queries", type=int, default=8, help="EK-FAC's queries (the next ones)")
    parser.add_argument("--compare-lm-head", action="store_true",
                        help="also time the gradient methods with the LM head at every position, not only at "
                             "response positions (the default)")  # fmt: skip
    parser.add_argument("--device", type=torch.device, default=torch.device("cpu"),
                        help="where every side runs: cpu (default) or cuda")  # fmt: skip
    parser.add_argument("--encoder", default=None,
                        help="MiniLM's folder (default: the bundled all-MiniLM-L6-v2 package)")  # fmt: skip
    parser.add_argument("--output", default=None, help="write the figures as JSON here")
    parser.add_argument("--plot", default=None, help="draw the cost curve (PNG) here")
    args = parser.parse_args()
    if args.device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no GPU here")
    for name in args.rungs:
        if name not in NAMED_RUNGS:
            try:
                rung_factor(name)
            except ValueError as error:
                parser.error(f"{error}, or one of {', '.join(NAMED_RUNGS)}")

    if args.ekfac and args.ekfac_train + args.ekfac_queries > args.n:
        parser.error(f"--ekfac_train {args.ekfac_train} + --ekfac_queries {args.ekfac_queries} exceeds --n {args.n}")
    records = stdlib_records(args.n)
    texts = [format_text(r) for r in records][: args.n]
    minilm = AirRepModel.from_encoder(args.encoder).float().to(args.device)
    lengths = [min(len(ids), 512) for ids in minilm.tokenizer(texts, add_special_tokens=True)["input_ids"]]

    # AirRep encodes the very examples the target LMs featurize.
    runs_here = {"fp32": True, "bf16": bf16_available(args.device), "int8": args.device.type == "cpu"}
    sides = [(f"airrep_minilm{'' if p == 'fp32' else '_' + p}", minilm, p) for p in args.precisions if runs_here[p]]
    sides.append(("airrep_gte_small_arch", gte_small(minilm).to(args.device), "fp32"))
    for _, encoder, precision in sides:  # warm-up
        encoder.encode(texts[: args.encode_batch_size], batch_size=args.encode_batch_size, precision=precision)
    rungs = [Rung(name, args, lengths) for name in args.rungs]
    partial = Path(args.output).with_suffix(".partial.json") if args.output else None
    encode_seconds: dict[str, list[float]] = {name: [] for name, _, _ in sides}
    for round_ in range(args.rounds):
        for name, encoder, precision in sides:
            seconds = timed(encoder.encode, texts, batch_size=args.encode_batch_size, precision=precision,
                            show_progress_bar=False)[1]  # fmt: skip
            encode_seconds[name].append(seconds / args.n)
            print(name, f"round {round_}: {seconds / args.n:.4f} s/example", flush=True)
        for rung in rungs:
            rung.time_round(first=round_ == 0)
            if args.output:  # a stopped run keeps what it measured, apart from the finished curve
                write_json(partial, measured_figures(args, lengths, sides, encode_seconds, rungs, complete=False))

    figures = measured_figures(args, lengths, sides, encode_seconds, rungs, complete=True)
    ratios = figures["logra_over_encoder"]
    print(json.dumps(figures["crossings"], indent=2))
    print(f"{'rung':>14} {'params':>12} {'logra s/ex':>11}  LoGra / encoder: median [min, max] over rounds")
    for rung in rungs:
        spread = "; ".join(f"{name} {r['median']:.1f}x [{min(r['rounds']):.1f}, {max(r['rounds']):.1f}]"
                           for name, r in ratios[rung.name].items())  # fmt: skip
        print(f"{rung.name:>14} {rung.n_params:>12,} {rung.entry['logra']['seconds_per_example']:>11.4f}  {spread}")
    for name, per_encoder in figures.get("ekfac_over_encoder", {}).items():
        job = next(r.entry["ekfac"] for r in rungs if r.name == name)
        print(f"{name:>14} EK-FAC job ({job['train_examples']} training examples, {job['queries']} queries): "
              f"{job['total_seconds']:.1f} s; over encoding them: "
              + "; ".join(f"{encoder} {ratio:.1f}x" for encoder, ratio in per_encoder.items()))  # fmt: skip
    if args.output:
        write_json(args.output, figures)  # whole or not at all: run_ladder.sh reuses a saved curve
        partial.unlink(missing_ok=True)
    if args.plot:
        cost_curve_plot(figures, args.plot)


if __name__ == "__main__":
    main()
