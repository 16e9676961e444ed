"""How much of a labels dataset's signal a shared metadata value explains, and where methods win.

A labels dataset's ``pool`` and ``queries`` configs often carry metadata beside the text: the task a
record comes from, its response. This module scores each query with a metadata *oracle*: the number of
a subset's members that share the query's value of a column (sum pooling of a 0/1 match). Its LDS says
how much of the recorded loss changes that one grouping explains, which sets a method's LDS in
context. On the built-in corpus, for example, the count of members with the query's exact response
explains far more than the count of members from the query's task.

Given an ``eval_lds.py`` report over the same ``lds`` labels, it also splits every saved method's
per-query LDS between the queries whose value occurs in the pool and those whose value does not.

    python -m airrep.evaluation.label_structure --labels out/demo/labels-lds --columns task targets \\
        --report out/demo/report --by targets

With ``train``-mode labels, pass the validation splits (``--splits 2 4``); a report needs ``lds`` labels.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from datasets import load_dataset

from airrep import cli
from airrep.cli import UsageError
from airrep.evaluation.report import format_lds, load_scores, saved_scores
from airrep.labels.dataset import LabelsData, LabelsFormatError, Split, lds_split, load_labels
from airrep.lds import bootstrap_ci, lds
from airrep.outputs import write_json
from configuration_airrep import GROUP_POOLINGS
from modeling_airrep import group_influence

logger = logging.getLogger(__name__)


def metadata_column(source: str, config: str, column: str) -> np.ndarray:
    """One column of the ``pool`` or ``queries`` config, as strings (so 5 and "5" match)."""
    table = load_dataset(source, config, split="train")
    if column not in table.column_names:
        raise LabelsFormatError(f"{source}: config {config!r} has no column {column!r}; it has {table.column_names}")
    return np.asarray([str(value) for value in table[column]], dtype=object)


def oracle_scores(pool_values: np.ndarray, query_values: np.ndarray, subsets: list[np.ndarray]) -> np.ndarray:
    """``(n_subsets, n_queries)``: how many of each subset's members share each query's value."""
    match = (pool_values[:, None] == query_values[None, :]).astype(np.float64)  # (n_pool, n_queries)
    # A query whose pair scores are the identity's columns: q . e_i = match[i, q], summed over members.
    return group_influence(np.eye(len(query_values)), match, subsets, pooling="sum")


def _selected_splits(data: LabelsData, splits: list[int] | None) -> list[int]:
    if splits is None:
        return sorted(data.splits)
    unknown = [s for s in splits if s not in data.splits]
    if unknown:
        raise UsageError(f"{data.source} has no split(s) {unknown}; it has {sorted(data.splits)}")
    return splits


def _matched(split: Split, pool_values: np.ndarray, query_values: np.ndarray) -> np.ndarray:
    """Per query of ``split``: does any member of its subsets share the query's value?"""
    members = np.unique(np.concatenate(split.subsets))
    return np.isin(query_values[split.queries], pool_values[members])


def _summary(per_query: np.ndarray, n_resamples: int) -> dict[str, Any]:
    # A group can be empty (on real text no test response occurs in the pool); JSON has no NaN.
    if per_query.size == 0:
        return {"lds": None, "ci": None, "n": 0}
    return {"lds": float(per_query.mean()), "ci": list(bootstrap_ci(per_query, n_resamples)), "n": int(per_query.size)}


def analyse(
    labels: str,
    columns: list[str],
    splits: list[int] | None = None,
    report: str | None = None,
    by: str | None = None,
    n_resamples: int = 1000,
) -> dict[str, Any]:
    """The oracle LDS of each column and, with ``report``, each method's LDS split by ``by`` (default:
    the first column) into queries with and without a pool record of the same value.

    Raises:
        LabelsFormatError: a column is missing from ``pool`` or ``queries``.
        ValueError: an unknown split, a report over labels with several splits, or a report whose score
            matrices do not have the labels' shape.
    """
    data = load_labels(labels)
    split_ids = _selected_splits(data, splits)
    values = {c: (metadata_column(labels, "pool", c), metadata_column(labels, "queries", c)) for c in columns}
    out: dict[str, Any] = {"labels": labels, "splits": split_ids, "oracles": {}}
    for column, (pool_values, query_values) in values.items():
        per_query, matched = [], []
        for split_id in split_ids:
            split = data.splits[split_id]
            scores = oracle_scores(pool_values, query_values[split.queries], split.subsets)
            per_query.append(lds(scores, split.losses))
            matched.append(_matched(split, pool_values, query_values))
        per_query_all, matched_all = np.concatenate(per_query), np.concatenate(matched)
        out["oracles"][column] = _summary(per_query_all, n_resamples) | {
            "queries_with_match": float(matched_all.mean()),
            "lds_on_matched": float(per_query_all[matched_all].mean()) if matched_all.any() else None,
        }
    if report is not None:
        by = by or columns[0]
        if by not in values:
            values[by] = (metadata_column(labels, "pool", by), metadata_column(labels, "queries", by))
        out |= {"report": report, "by": by, "methods": split_report(data, report, *values[by], n_resamples)}
    return out


def split_report(
    data: LabelsData, report: str, pool_values: np.ndarray, query_values: np.ndarray, n_resamples: int
) -> dict[str, dict[str, dict[str, Any]]]:
    """Every saved score matrix's LDS on the queries with a pool match of their value and on the rest."""
    split = lds_split(data)
    matched = _matched(split, pool_values, query_values)
    saved = saved_scores(report)
    if not saved:
        raise FileNotFoundError(f"{report}: no saved score matrices under scores/")
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for method, pooling in saved:
        per_query = lds(load_scores(report, method, pooling, split.losses.shape), split.losses)
        out.setdefault(method, {})[pooling] = {
            "all": _summary(per_query, n_resamples),
            "matched": _summary(per_query[matched], n_resamples),
            "unmatched": _summary(per_query[~matched], n_resamples),
        }
    return out


def markdown(result: dict[str, Any]) -> str:
    """The oracle table and, when a report was given, the split of each method's LDS."""
    lines = [
        f"Oracle LDS x100 on splits {result['splits']} of `{result['labels']}`: each subset scores the "
        "number of its members that share the query's value of a column.",
        "",
        "| column | LDS x100 | queries whose value is in the pool | LDS x100 on those queries |",
        "|---|---|---|---|",
    ]
    for column, entry in result["oracles"].items():
        on_matched = "—" if entry["lds_on_matched"] is None else f"{100 * entry['lds_on_matched']:.1f}"
        lines.append(
            f"| same {column} | {format_lds(entry)} | {100 * entry['queries_with_match']:.0f}% | {on_matched} |"
        )
    if "methods" in result:
        lines += [
            "",
            f"LDS x100 of the methods in `{result['report']}`, on the queries whose `{result['by']}` occurs in "
            "the pool (matched) and on the rest.",
            "",
        ]
        first = next(iter(next(iter(result["methods"].values())).values()))
        lines += [
            f"| method | pooling | all ({first['all']['n']}) | matched ({first['matched']['n']}) | "
            f"unmatched ({first['unmatched']['n']}) |",
            "|---|---|---|---|---|",
        ]
        for method, poolings in result["methods"].items():
            for pooling in (p for p in GROUP_POOLINGS if p in poolings):
                cells = " | ".join(format_lds(poolings[pooling][group]) for group in ("all", "matched", "unmatched"))
                lines.append(f"| {method} | {pooling} | {cells} |")
    return "\n".join(lines) + "\n"


@dataclass
class LabelStructureArguments:
    labels: str = field(metadata={"help": "Labels dataset folder or Hub id."})
    columns: list[str] = field(metadata={"help": "Metadata columns of pool and queries."})
    splits: list[int] | None = field(default=None, metadata={"help": "Split ids to score (default: all)."})
    report: str | None = field(
        default=None, metadata={"help": "An eval_lds.py report folder over the same lds labels."}
    )
    by: str | None = field(
        default=None, metadata={"help": "Column that splits the report's queries (default: the first)."}
    )
    n_resamples: int = field(default=1000, metadata={"help": "Bootstrap resamples."})
    output: str | None = field(default=None, metadata={"help": "Also write the result as JSON here."})


def main(argv: list[str]) -> None:
    (args,) = cli.parse(LabelStructureArguments, argv, __doc__)
    result = analyse(args.labels, args.columns, args.splits, args.report, args.by, args.n_resamples)
    print(markdown(result))
    if args.output:
        write_json(args.output, result)


if __name__ == "__main__":
    sys.exit(cli.run(main, prog="python -m airrep.evaluation.label_structure"))
