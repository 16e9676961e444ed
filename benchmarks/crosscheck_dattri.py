"""Cross-check the hand-written gradient methods against dattri's on one rung (issue 24).

The target LM is fine-tuned on the whole pool exactly as ``eval_lds.py`` does it (the labels' SFT
settings and seed, through :class:`airrep.evaluation.methods.GradientState`). Then, on the same
examples and the same response-only loss:

- this project's ``grad-dot`` and ``tracin`` score matrices (queries x pool), exact (full per-example
  gradients, dotted in blocks) and as ``eval_lds.py`` reports them (sparse random projection);
- dattri's ``TracInAttributor`` (dattri 0.3.0): with one checkpoint and weight 1 it is grad-dot, with
  the end-of-epoch checkpoints weighted by their mean learning rates it is TracIn-CP; exact (its
  projection switched off) and with its own default random projection at the same size.

Printed: the Spearman correlation of every pair of matrices over all (query, pool) entries, and the
mean over queries of each query's row correlation (what LDS-style use cares about). dattri is not a
dependency of the project: ``pip install --no-deps dattri==0.3.0`` (it declares pretty_midi for its
music benchmarks, which this never imports).

    python benchmarks/crosscheck_dattri.py --labels out/demo/labels-lds --projection_dim 4096 \
        --work_dir out/demo/crosscheck-dattri --output benchmarks/ladder/crosscheck-dattri-x1.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr
from torch.func import functional_call

from airrep.evaluation.data import load_eval_data
from airrep.evaluation.gradient_methods import per_example_gradients
from airrep.evaluation.methods import GradientState
from airrep.labels.target_lm import collate, response_positions, token_losses
from airrep.presets import EVAL_PRESETS


def exact_dots(state: GradientState, checkpoint: int, block: int = 32) -> np.ndarray:
    """(queries, pool) dot products of full per-example gradients at one checkpoint."""
    params = {k: v.detach() for k, v in state.checkpoints[checkpoint][0].items()}
    queries = per_example_gradients(state.model, params, state.queries, state.pad_id)
    out = np.zeros((len(state.queries), len(state.pool)))
    for start in range(0, len(state.pool), block):
        pool = per_example_gradients(state.model, params, state.pool[start : start + block], state.pad_id)
        out[:, start : start + block] = (queries.double() @ pool.double().T).numpy()
    return out


def dattri_scores(state: GradientState, checkpoints: list[int], weights: list[float], projection_dim: int | None,
                  batch_size: int = 256):  # fmt: skip
    """dattri's TracIn over ``checkpoints`` (queries x pool); ``projection_dim`` None: no projection.

    ``batch_size`` examples per dattri batch. On the CPU dattri's projector draws its whole dense
    Gaussian matrix (parameters x ``projection_dim``) again for every batch, so small batches make its
    projected run take hours here; the scores do not depend on the batch size.
    """
    from dattri.algorithm.tracin import TracInAttributor
    from dattri.task import AttributionTask

    model = state.model
    buffers = dict(model.named_buffers())

    def loss(params, data):
        ids, positions, targets = data
        logits = functional_call(model, (params, buffers), (ids.unsqueeze(0),),
                                 {"use_cache": False, "logits_to_keep": positions.unsqueeze(0)}).logits  # fmt: skip
        summed, count = token_losses(logits, targets.unsqueeze(0))
        return summed[0] / count[0].clamp(min=1)

    def load(m, checkpoint):
        with torch.no_grad():
            for name, p in m.named_parameters():
                p.copy_(checkpoint[name])
        return m

    def loader(examples):
        ids, labels = collate(examples, state.pad_id, max(len(e.input_ids) for e in state.pool + state.queries))
        positions, targets = response_positions(labels)
        dataset = torch.utils.data.TensorDataset(ids, positions, targets)
        return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)

    task = AttributionTask(loss_func=loss, model=model, checkpoints=[state.checkpoints[c][0] for c in checkpoints],
                           checkpoints_load_func=load)  # fmt: skip
    attributor = TracInAttributor(task=task, weight_list=weights, normalized_grad=False,
                                  projector_kwargs={"proj_dim": projection_dim or 512, "device": "cpu"})  # fmt: skip
    if projection_dim is None:
        attributor.projector_kwargs = None  # dattri's attribute() then dots the full gradients
    return attributor.attribute(loader(state.pool), loader(state.queries)).T.double().numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labels", required=True, help="lds-mode labels (their target LM and SFT settings).")
    parser.add_argument("--projection_dim", type=int, default=4096)
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument(
        "--dattri_batch_size", type=int, default=256, help="Examples per dattri batch (its CPU projector redraws "
        "its matrix once a batch)."
    )  # fmt: skip
    parser.add_argument(
        "--work_dir",
        type=Path,
        default=None,
        help="Keep each score matrix here as it finishes; a rerun reuses them (same labels only).",
    )
    args = parser.parse_args()

    data = load_eval_data(args.labels)
    if args.work_dir:
        # Matrices kept for other labels would be compared as if they were these labels' own.
        args.work_dir.mkdir(parents=True, exist_ok=True)
        marker, labels_summary = args.work_dir / "labels-summary.json", json.dumps(data.summary, sort_keys=True)
        if marker.exists() and marker.read_text() != labels_summary:
            raise SystemExit(f"{args.work_dir} holds matrices of other labels than {args.labels}; use another one")
        marker.write_text(labels_summary)
    preset = EVAL_PRESETS["demo"]
    state = GradientState(data.summary.get("target_lm"), data.summary.get("settings"), data.pool_records,
                          data.query_records, preset, [args.projection_dim], source=data.source)  # fmt: skip
    last = len(state.checkpoints) - 1
    rates = [rate for _, rate in state.checkpoints]
    matrices: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}

    def run(name, fn):
        # Each matrix is kept as it finishes: dattri's exact runs take minutes each on 2 cores.
        saved = args.work_dir / (name.replace(" ", "_").replace("@", "-") + ".npz") if args.work_dir else None
        if saved is not None and saved.exists():
            with np.load(saved) as stored:
                matrices[name], seconds[name] = stored["scores"], float(stored["seconds"])
            print(f"{name}: {matrices[name].shape}, {seconds[name]:.1f} s (from {saved})", flush=True)
            return
        tic = time.perf_counter()
        matrices[name] = np.asarray(fn(), dtype=np.float64)
        seconds[name] = time.perf_counter() - tic
        print(f"{name}: {matrices[name].shape}, {seconds[name]:.1f} s", flush=True)
        if saved is not None:
            partial = saved.with_suffix(".tmp.npz")
            np.savez(partial, scores=matrices[name], seconds=seconds[name])
            partial.replace(saved)

    run("ours grad-dot exact", lambda: exact_dots(state, last))
    run("ours tracin exact", lambda: sum(r * exact_dots(state, c) for c, r in enumerate(rates)))
    d = args.projection_dim
    run(f"ours grad-dot@{d}", lambda: state.features("grad-dot", d).pair_scores())
    run(f"ours tracin@{d}", lambda: state.features("tracin", d).pair_scores())
    errors: dict[str, str] = {}
    batch = args.dattri_batch_size
    for label, checkpoints, weights in (("grad-dot", [last], [1.0]), ("tracin", list(range(len(rates))), rates)):
        for dim in (None, d):
            name = f"dattri {label} " + ("exact" if dim is None else f"@{dim}")
            try:
                run(name, lambda c=checkpoints, w=weights, dim=dim: dattri_scores(state, c, w, dim, batch))
            except Exception as error:  # a library failure is a result here, named in the report
                errors[name] = f"{type(error).__name__}: {error}"
                print(f"{name} failed: {errors[name]}")

    names = list(matrices)
    table = {}
    print("\nSpearman over all entries / mean per-query Spearman:")
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            whole = spearmanr(matrices[a].ravel(), matrices[b].ravel()).statistic
            rows = np.mean([spearmanr(x, y).statistic for x, y in zip(matrices[a], matrices[b], strict=True)])
            table[f"{a} | {b}"] = {"spearman_all": float(whole), "spearman_per_query_mean": float(rows)}
            print(f"  {a:24s} vs {b:24s}: {whole:.4f} / {rows:.4f}")
    if args.output:
        args.output.write_text(json.dumps({"labels": args.labels, "projection_dim": d, "pairs": table,
                                           "seconds": seconds, "errors": errors}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
