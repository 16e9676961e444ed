"""Data selection, measured by retraining: does fine-tuning on what a method selects teach a task?

For each of ``--tasks`` tasks of the built-in corpus and each of ``--seeds`` seeds, a few target
examples of the task are drawn from a fresh held-out draw of the corpus (disjoint from the pool and
from the target LM's warm-start data), and further examples of the task are kept to measure it. Each
method selects ``k`` pool examples for the targets (``airrep.serving.selection``, round-robin by
default); the labels' target LM is fine-tuned on the selection with the labels' own SFT settings
(``airrep.labels.subset_training``, several models at once), and its mean response loss on the
task's held-out examples is recorded. Every method of one (task, seed) is fine-tuned with the same
seed, so differences against random selection are paired; intervals resample (task, seed) units.

Methods: ``random``; ``oracle`` (pool examples of the target task, in a seeded order, then random ones
if the task has fewer than ``k``: the upper reference a method cannot see); ``tfidf``, ``bm25``,
``base-encoder``, ``airrep`` (``--model``), and the gradient methods ``grad-cos`` (cosine of projected
gradients, as LESS ranks data) and ``logra``, on the labels' target LM fine-tuned on the pool.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_selection.py --labels out/demo/labels-lds \\
        --model out/demo/model --budgets 25 50 --output out/bench/selection.json
"""

from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path

import numpy as np
from retraining import Retraining, paired, save_results

from airrep.labels import corpus as synthetic
from airrep.labels import realtext
from airrep.serving.selection import pair_scores, select
from configuration_airrep import format_text
from modeling_airrep import distinct_rows, text_digests

HELD_OUT_SEED_OFFSET = 7919  # a fresh draw of the corpus generator, never the corpus's own seed


def held_out_records(summary: dict, n: int) -> list[dict]:
    """Up to ``n`` fresh records of the labels' built-in corpus that share no text with its own splits.

    A fresh draw is the corpus generator with another seed, less every record whose text occurs in
    the corpus's pool, test or warm-start data; on the real-text corpus also less every record whose
    response does (the same source entry asked with another template).
    """
    corpus = summary["corpus"]
    if corpus.get("name") == realtext.CORPUS_NAME:
        entries = realtext.load_entries(Path("/"))
        draw = functools.partial(realtext.generate_split_records, entries=entries)
    elif corpus.get("name", synthetic.CORPUS_NAME) == synthetic.CORPUS_NAME:
        draw = synthetic.generate_split_records
    else:
        raise SystemExit(f"--labels must be made on a built-in corpus, not {corpus.get('name')!r}")
    own = [r for split in draw(corpus["sizes"], corpus["seed"]).values() for r in split]
    seen = {format_text(r) for r in own}
    responses = {r["targets"] for r in own} if corpus.get("name") == realtext.CORPUS_NAME else set()
    fresh = draw({"test": n}, corpus["seed"] + HELD_OUT_SEED_OFFSET)["test"]
    return [r for r in fresh if format_text(r) not in seen and r["targets"] not in responses]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--labels", required=True, help="labels made on the built-in corpus (their pool, target LM, SFT)"
    )
    parser.add_argument("--model", required=True, help="the AirRep checkpoint of method 'airrep'")
    parser.add_argument("--budgets", type=int, nargs="+", default=[25, 50], help="examples selected (k)")
    parser.add_argument("--tasks", type=int, default=8, help="target tasks")
    parser.add_argument("--seeds", type=int, default=3, help="draws of targets (and fine-tuning seeds) per task")
    parser.add_argument("--n_targets", type=int, default=4, help="target examples per task and seed")
    parser.add_argument("--n_eval", type=int, default=8, help="held-out examples per task that measure it")
    parser.add_argument("--strategy", default="round-robin")
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["random", "oracle", "tfidf", "bm25", "base-encoder", "grad-cos", "logra", "airrep"],
    )
    parser.add_argument("--projection_dim", type=int, default=4096, help="gradient features per example")
    parser.add_argument("--output", default=None, help="write the results as JSON here")
    args = parser.parse_args()

    folder = Path(args.labels)
    retraining = Retraining.from_labels(folder)
    summary, pool = retraining.summary, retraining.pool
    pool_texts = [r["text"] for r in pool]
    candidates = distinct_rows(text_digests(pool_texts))
    fresh = held_out_records(summary, 6000)
    by_task: dict[str, list[dict]] = {}
    for record in fresh:
        by_task.setdefault(record["task"], []).append(record)
    need = args.n_targets + args.n_eval
    eligible = sorted(t for t, rs in by_task.items() if len(rs) >= need and any(p["task"] == t for p in pool))
    tasks = sorted(np.random.default_rng(0).choice(eligible, size=min(args.tasks, len(eligible)), replace=False))
    print(f"{len(fresh)} held-out records; tasks: {', '.join(tasks)}")

    # Targets and measuring examples of every (task, seed); rows index `units`.
    units, target_texts, target_records, eval_records = [], [], [], []
    for task in tasks:
        for seed in range(args.seeds):
            order = np.random.default_rng([seed, len(units)]).permutation(len(by_task[task]))
            chosen = [by_task[task][i] for i in order[:need]]
            units.append(
                {"task": task, "seed": seed, "targets": slice(len(target_texts), len(target_texts) + args.n_targets)}
            )
            target_records += chosen[: args.n_targets]
            target_texts += [format_text(r) for r in chosen[: args.n_targets]]
            eval_records += chosen[args.n_targets :]

    candidate_texts = [pool_texts[i] for i in candidates]
    scores = {}
    for method in args.methods:
        if method in ("random", "oracle"):
            continue
        tic = time.perf_counter()
        scores[method], _ = pair_scores(method, candidate_texts, target_texts, model=args.model,
                                        pool_records=[pool[i] for i in candidates], target_records=target_records,
                                        labels=args.labels, projection_dim=args.projection_dim)  # fmt: skip
        print(f"{method}: pair scores in {time.perf_counter() - tic:.1f} s")

    def selection(method: str, unit: int, k: int) -> np.ndarray:
        rng = np.random.default_rng([unit, k, 17])
        if method == "random":
            return candidates[rng.permutation(len(candidates))[:k]]
        if method == "oracle":
            task = units[unit]["task"]
            same = [i for i in rng.permutation(len(candidates)) if pool[candidates[i]]["task"] == task]
            rest = [i for i in rng.permutation(len(candidates)) if pool[candidates[i]]["task"] != task]
            return candidates[np.asarray((same + rest)[:k])]
        return candidates[select(scores[method][units[unit]["targets"]], k, args.strategy).rows]

    eval_examples = retraining.examples(eval_records)
    losses: dict[str, dict[int, np.ndarray]] = {m: {} for m in args.methods}
    exact: dict[str, dict[int, np.ndarray]] = {m: {} for m in args.methods}
    tic = time.perf_counter()
    for k in args.budgets:
        jobs = [(m, u) for u in range(len(units)) for m in args.methods]
        values, matches = retraining.evaluate(
            eval_examples,
            [selection(m, u, k) for m, u in jobs],
            [np.arange(u * args.n_eval, (u + 1) * args.n_eval) for _, u in jobs],
            [1000 * u + 7 for _, u in jobs],  # one fine-tuning seed per (task, seed): methods are paired
        )
        for m in args.methods:
            losses[m][k] = np.array([values[j] for j, (mm, _) in enumerate(jobs) if mm == m])
            exact[m][k] = np.array([matches[j] for j, (mm, _) in enumerate(jobs) if mm == m])
    train_seconds = time.perf_counter() - tic

    results = {"tasks": tasks, "seeds": args.seeds, "n_targets": args.n_targets, "n_eval": args.n_eval,
               "strategy": args.strategy, "labels": str(folder), "model": args.model, "sft": summary["settings"],
               "train_seconds": train_seconds, "budgets": {}}  # fmt: skip
    print(f"\n{len(units)} (task, seed) units, {len(args.methods) * len(units) * len(args.budgets)} fine-tunes "
          f"in {train_seconds:.0f} s. Held-out loss after fine-tuning on k selected examples; the difference is "
          "random's loss minus the method's (positive: the selection taught the task better), 95% bootstrap "
          "over (task, seed) units.\n")  # fmt: skip
    reference = "airrep" if "airrep" in args.methods else None
    header = "k = {k}: loss | random minus this" + (" | this minus airrep" if reference else "")
    print("| method | " + " | ".join(header.format(k=k) for k in args.budgets) + " |")
    print("|---|" + ("---|---|" + ("---|" if reference else "")) * len(args.budgets))
    for m in args.methods:
        cells = []
        for k in args.budgets:
            entry = {
                "loss": float(losses[m][k].mean()),
                "per_unit": losses[m][k].tolist(),
                "exact_match": float(exact[m][k].mean()),
                "exact_match_per_unit": exact[m][k].tolist(),
            }
            entry |= paired(losses["random"][k], losses[m][k])  # random minus this: positive = taught better
            em = paired(exact[m][k], exact["random"][k])  # this minus random: positive = more answers exact
            entry |= {"exact_match_difference": em["difference"], "exact_match_difference_ci": em["difference_ci"]}
            low, high = entry["difference_ci"]
            cell = f"{entry['loss']:.3f} | {entry['difference']:+.3f} [{low:+.3f}, {high:+.3f}]"
            if reference:
                versus = paired(losses[m][k], losses[reference][k])  # positive where AirRep taught better
                entry |= {"airrep_difference": versus["difference"], "airrep_difference_ci": versus["difference_ci"]}
                v_low, v_high = versus["difference_ci"]
                cell += f" | {versus['difference']:+.3f} [{v_low:+.3f}, {v_high:+.3f}]"
            results["budgets"].setdefault(str(k), {})[m] = entry
            cells.append(cell)
        print(f"| {m} | " + " | ".join(cells) + " |")
    print("\nExact match: the share of held-out examples whose whole response greedy decoding reproduces "
          "(airrep.labels.subset_training.QueryScores), and this method's minus random's, in points.\n")  # fmt: skip
    print("| method | " + " | ".join(f"k = {k}: exact match | this minus random" for k in args.budgets) + " |")
    print("|---|" + "---|---|" * len(args.budgets))
    for m in args.methods:
        cells = []
        for k in args.budgets:
            entry = results["budgets"][str(k)][m]
            low, high = (100 * v for v in entry["exact_match_difference_ci"])
            cells.append(f"{100 * entry['exact_match']:.1f} | {100 * entry['exact_match_difference']:+.1f} "
                         f"[{low:+.1f}, {high:+.1f}]")  # fmt: skip
        print(f"| {m} | " + " | ".join(cells) + " |")
    if args.output:
        corpus = summary["corpus"].get("name", "the built-in corpus")
        title = f"Selection on {corpus}: {len(tasks)} tasks x {args.seeds} seeds ({args.strategy}); 95% intervals"
        entries = {f"k = {k}": v for k, v in results["budgets"].items()}
        save_results(args.output, results, entries, "held-out loss: random minus method", title)


if __name__ == "__main__":
    main()
