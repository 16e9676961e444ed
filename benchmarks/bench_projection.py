"""The gradient projection as ``eval_lds.py`` runs it, against scikit-learn's ``transform`` of the
same matrix, in one run, at the parameter counts of the target-LM ladder.

grad-dot, grad-cos and TracIn project every per-example gradient (one number per target-LM
parameter) to ``dim`` numbers with a ``SparseRandomProjection`` matrix, about ``sqrt(n_features)``
non-zeros per output number. Both sides start from the same per-parameter gradient blocks, random,
shaped as vmap returns them for the rung's Llama (``(batch, *parameter.shape)``):

- scikit-learn: concatenate them into ``(batch, n_features)`` (what ``eval_lds.py`` did before) and
  ``transform``, which multiplies by the matrix stored by output number after transposing the batch;
- ours: concatenate them transposed, feature-major, and multiply by the matrix stored by input feature
  (``GradientProjector.project_feature_major``), as ``airrep.evaluation.gradient_methods.project_gradients`` does.

The batch is what ``eval_lds.py`` would take at that size (``examples_per_call`` with 16 and 6 GiB).
For each size the benchmark builds the projector once, times both sides (median of ``--repeats``),
and checks that the outputs are identical.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_projection.py --rungs x1 x10 x100 --dims 384 4096 18432
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
from sklearn.random_projection import SparseRandomProjection
from transformers import LlamaForCausalLM

from airrep.evaluation.gradient_methods import GradientProjector, examples_per_call
from airrep.labels.ladder import rung_factor, scale_spec
from airrep.labels.target_lm import llama_config
from airrep.presets import LABEL_PRESETS


def median_seconds(function, repeats: int) -> tuple[np.ndarray, float]:
    times, result = [], None
    for _ in range(repeats):
        tic = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - tic)
    return result, statistics.median(times)


def gradient_blocks(preset: str, rung: str) -> list[torch.Tensor]:
    """Random per-example gradients of the rung's target LM, one ``(batch, *shape)`` block per parameter."""
    spec = scale_spec(LABEL_PRESETS[preset].target_lm, rung_factor(rung))
    with torch.device("meta"):  # shapes only
        shapes = [p.shape for p in LlamaForCausalLM(llama_config(spec, spec.vocab_size)).parameters()]
    n_features = sum(int(np.prod(shape)) for shape in shapes)
    batch = examples_per_call(n_features, 16, 6.0)
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(batch, *shape, generator=generator) for shape in shapes]


def measure(rung: str, blocks: list[torch.Tensor], dim: int, repeats: int) -> dict:
    """Build the projector for ``dim`` and time both sides on ``blocks``."""
    batch = len(blocks[0])
    n_features = sum(b[0].numel() for b in blocks)
    tic = time.perf_counter()
    projector = GradientProjector(n_features, dim, seed=0)
    build = time.perf_counter() - tic
    # The very matrix, stored by output number as scikit-learn keeps it (the tests check that it is
    # scikit-learn's own for the seed).
    reference = SparseRandomProjection(n_components=dim, dense_output=True)
    reference.components_ = projector.matrix
    reference.n_features_in_ = n_features

    def ours() -> np.ndarray:
        columns = torch.cat([b.reshape(batch, -1).T for b in blocks], dim=0).numpy()
        return projector.project_feature_major(columns)

    def theirs() -> np.ndarray:
        rows = torch.cat([b.reshape(batch, -1) for b in blocks], dim=1).numpy()
        return np.asarray(reference.transform(rows), dtype=np.float32)

    ours_out, ours_seconds = median_seconds(ours, repeats)
    theirs_out, theirs_seconds = median_seconds(theirs, repeats)
    return {
        "rung": rung,
        "features": n_features,
        "dim": dim,
        "batch": batch,
        "non_zeros": int(reference.components_.nnz),
        "build_seconds": build,
        "sklearn_seconds_per_example": theirs_seconds / batch,
        "ours_seconds_per_example": ours_seconds / batch,
        "speedup": theirs_seconds / ours_seconds,
        "identical": bool(np.array_equal(ours_out, theirs_out)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo", choices=sorted(LABEL_PRESETS), help="whose target LM is x1")
    parser.add_argument("--rungs", nargs="+", default=["x1", "x10", "x100"], help="ladder rungs: feature counts")
    parser.add_argument("--dims", type=int, nargs="+", default=[384, 4096, 18432], help="projection sizes")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    rows = []
    print(
        f"{'rung':>5} {'features':>12} {'dim':>6} {'build s':>8} {'sklearn ms/ex':>14} {'ours ms/ex':>11} {'ratio':>7}"
    )
    for rung in args.rungs:
        blocks = gradient_blocks(args.preset, rung)
        for dim in args.dims:
            row = measure(rung, blocks, dim, args.repeats)
            rows.append(row)
            print(f"{rung:>5} {row['features']:>12,} {dim:>6} {row['build_seconds']:>8.1f} "
                  f"{1e3 * row['sklearn_seconds_per_example']:>14.2f} {1e3 * row['ours_seconds_per_example']:>11.2f} "
                  f"{row['speedup']:>6.1f}x{'' if row['identical'] else '  OUTPUTS DIFFER'}", flush=True)  # fmt: skip
    figures = {"threads": torch.get_num_threads(), "repeats": args.repeats, "rows": rows}
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(figures, handle, indent=2)


if __name__ == "__main__":
    main()
