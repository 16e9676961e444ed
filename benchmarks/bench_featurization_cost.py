"""Featurization cost at the paper's scale: gradients of a Qwen2.5-0.5B-architecture target LM against
AirRep's encoder, per example, in one run.

The target LM has Qwen2.5-0.5B's architecture (24 layers, d=896, 151,936-token vocabulary, 494M
parameters) with random weights: the cost of a forward and backward pass does not depend on the
weights. Its gradient featurization is LoGra as ``eval_lds.py`` runs it (``airrep.gradient_methods``):
one forward and one backward to the activations per batch, and a Kronecker-factored projection of
every linear layer's gradient. LoGra is the cheapest gradient method we ship; with ``--full_gradient``
the run also times one plain backward per example, the full gradient that grad-dot, grad-cos and TracIn start from (a
lower bound on their cost: the projection is not timed).

The AirRep side is ``AirRepModel.encode`` with the bundled all-MiniLM-L6-v2 (6 layers) and with the
architecture of gte-small (12 layers, the paper's encoder; random weights).

Both sides see the same texts, real prompt/response records from standard-library docstrings. The
target LM is fed as many tokens per example as the encoder's WordPiece tokenizer produces for the
same text (random ids), since Qwen's tokenizer is not available offline; the response is the second
half of each sequence.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_featurization_cost.py --n 16 --full_gradient
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from airrep.gradient_methods import LoGra
from airrep.target_lm import IGNORE_INDEX, SFTExample, collate, response_losses
from benchmarks.bench_encode import stdlib_records
from configuration_airrep import format_text
from modeling_airrep import AirRepConfig, AirRepModel

QWEN25_05B = dict(
    vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
    num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)  # fmt: skip
GTE_SMALL = dict(num_hidden_layers=12, hidden_size=384, num_attention_heads=12, intermediate_size=1536)


def gte_small(minilm: AirRepModel) -> AirRepModel:
    """An AirRep with gte-small's architecture (random weights) and MiniLM's tokenizer (same vocabulary)."""
    model = AirRepModel(AirRepConfig(**{**minilm.config.to_diff_dict(), **GTE_SMALL})).eval()
    model.tokenizer = minilm.tokenizer
    return model


def timed(function, *args, **kwargs):
    tic = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - tic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=16, help="examples featurized by both sides")
    parser.add_argument("--encode_repeats", type=int, default=5, help="timed encodes of the examples (median)")
    parser.add_argument("--gradient_batch_size", type=int, default=4)
    parser.add_argument("--encode_batch_size", type=int, default=32)
    parser.add_argument("--logra_dim", type=int, default=18432, help="LoGra numbers per example (the paper's)")
    parser.add_argument("--full_gradient", action="store_true", help="also time grad-dot's full gradients")
    parser.add_argument("--projection_dim", type=int, default=4096, help="grad-dot numbers stored per example")
    parser.add_argument("--output", default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    torch.manual_seed(0)

    records = stdlib_records(args.n)
    texts = [format_text(r) for r in records]
    minilm = AirRepModel.from_encoder()
    lengths = [min(len(ids), 512) for ids in minilm.tokenizer(texts, add_special_tokens=True)["input_ids"]]

    # AirRep encodes the very examples the target LM featurizes, --encode_repeats times; the median counts.
    sample = texts[: args.n]
    encoder_seconds = {}
    for name, encoder in (("airrep_minilm", minilm), ("airrep_gte_small_arch", gte_small(minilm))):
        encoder.encode(sample[: args.encode_batch_size], batch_size=args.encode_batch_size)  # warm-up
        encoder_seconds[name] = statistics.median(
            timed(encoder.encode, sample, batch_size=args.encode_batch_size)[1] for _ in range(args.encode_repeats)
        )

    from transformers import Qwen2Config, Qwen2ForCausalLM

    target, build_seconds = timed(lambda: Qwen2ForCausalLM(Qwen2Config(**QWEN25_05B)).eval())
    target.set_attn_implementation("eager")
    n_params = sum(p.numel() for p in target.parameters())
    rng = np.random.default_rng(0)
    examples = []
    for length in lengths:
        ids = rng.integers(0, QWEN25_05B["vocab_size"], length).tolist()
        prompt = length // 2
        examples.append(SFTExample(ids, [IGNORE_INDEX] * prompt + ids[prompt:]))
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in target.modules())
    rank = max(1, int(np.sqrt(args.logra_dim / n_linear)))
    logra = LoGra(target, rank)
    logra.features(examples[: args.gradient_batch_size], 0, args.gradient_batch_size, "warm-up")
    _, logra_seconds = timed(logra.features, examples, 0, args.gradient_batch_size, "LoGra")

    figures = {
        "target_lm": {"architecture": "Qwen2.5-0.5B (random weights)", "parameters": n_params,
                      "build_seconds": build_seconds},
        "tokens_per_example": float(np.mean(lengths)),
        "threads": torch.get_num_threads(),
        "logra": {"seconds_per_example": logra_seconds / args.n, "dim": logra.dim, "rank": rank,
                  "linear_layers": n_linear, "bytes_per_example": logra.dim * 4},
        **{name: {"seconds_per_example": seconds / args.n, "bytes_per_example": 384 * 4}
           for name, seconds in encoder_seconds.items()},
    }  # fmt: skip
    if args.full_gradient:
        # A lower bound for grad-dot, grad-cos and TracIn: one plain backward per example and the
        # flattened gradient, before any projection. (vmap over examples runs out of 24 GiB at this size,
        # and scikit-learn's sparse projection is too slow to build at 494M parameters; at this scale
        # TRAK-style methods project on a GPU.)
        def full_gradient(example: SFTExample) -> torch.Tensor:
            target.zero_grad(set_to_none=True)
            ids, labels = collate([example], 0)
            summed, count = response_losses(target(input_ids=ids, use_cache=False).logits, labels)
            (summed[0] / count[0]).backward()
            return torch.cat([p.grad.reshape(-1) for p in target.parameters()])

        full_gradient(examples[0])
        _, grad_seconds = timed(lambda: [full_gradient(e).sum() for e in examples])
        target.zero_grad(set_to_none=True)
        figures["full_gradient_lower_bound"] = {"seconds_per_example": grad_seconds / args.n,
                                                "bytes_per_example": args.projection_dim * 4}  # fmt: skip

    print(json.dumps(figures, indent=2))
    for side in ("airrep_minilm", "airrep_gte_small_arch"):
        encode = figures[side]["seconds_per_example"]
        for method in ("logra", "full_gradient_lower_bound"):
            if method in figures:
                cost = figures[method]["seconds_per_example"]
                storage = figures[method]["bytes_per_example"] / figures[side]["bytes_per_example"]
                print(f"{method} / {side}: {cost / encode:.1f}x seconds per example, {storage:.1f}x bytes per example")
    if args.output:
        with open(args.output, "w") as handle:
            json.dump(figures, handle, indent=2)


if __name__ == "__main__":
    main()
