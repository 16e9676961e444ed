"""airrep.evaluation.label_structure on smoke labels: the metadata oracle and the matched/unmatched split of a
report, each against an independent computation, and its errors."""

import json
import warnings

import numpy as np
import pytest
from datasets import load_dataset
from scipy.stats import spearmanr

from airrep.evaluation.label_structure import analyse, main, markdown
from airrep.evaluation.report import format_lds
from airrep.labels.dataset import LabelsFormatError


def _spearman_or_zero(x: np.ndarray, y: np.ndarray) -> float:
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    return float(spearmanr(x, y).statistic)


def _configs(folder):
    return [load_dataset(str(folder), c, split="train") for c in ("pool", "queries", "labels")]


def test_oracle_counts_members_sharing_the_query_value(labels):
    folder = labels / "labels-train"
    pool, queries, rows = _configs(folder)
    result = analyse(str(folder), ["task"], splits=[1], n_resamples=200)
    per_query, matched = [], []
    split_rows = [r for r in rows if r["split_id"] == 1]
    for q in sorted({q for r in split_rows for q in r["queries"]}):
        task = queries[q]["task"]
        counts, losses = [], []
        for r in split_rows:
            counts.append(sum(pool[i]["task"] == task for i in r["subset"]))
            losses.append(r["losses"][r["queries"].index(q)])
        per_query.append(_spearman_or_zero(np.array(counts, float), -np.array(losses)))
        matched.append(any(pool[i]["task"] == task for r in split_rows for i in r["subset"]))
    entry = result["oracles"]["task"]
    assert result["splits"] == [1]
    assert entry["n"] == len(per_query)
    assert entry["lds"] == pytest.approx(np.mean(per_query), abs=1e-12)
    assert entry["queries_with_match"] == pytest.approx(np.mean(matched))
    assert entry["lds_on_matched"] == pytest.approx(np.array(per_query)[np.array(matched)].mean(), abs=1e-12)
    assert entry["ci"][0] <= entry["lds"] <= entry["ci"][1]


def test_report_is_split_by_whether_the_query_value_is_in_the_pool(labels, report, tmp_path):
    folder, _ = report
    lds_labels = labels / "labels-lds"
    pool, queries, rows = _configs(lds_labels)
    output = tmp_path / "structure.json"
    main(["--labels", str(lds_labels), "--columns", "targets", "--report", str(folder), "--by", "task",
          "--n_resamples", "200", "--output", str(output)])  # fmt: skip
    result = json.loads(output.read_text())
    assert result["by"] == "task" and set(result["oracles"]) == {"targets"}
    pool_tasks = set(pool["task"])
    matched = np.array([t in pool_tasks for t in queries["task"]])
    assert 0 < matched.sum() < matched.size  # both groups are exercised on the smoke labels
    scores = np.load(folder / "scores" / "tfidf.sum.npy")
    losses = np.array(rows["losses"])
    per_query = np.array([_spearman_or_zero(scores[:, q], -losses[:, q]) for q in range(losses.shape[1])])
    entry = result["methods"]["tfidf"]["sum"]
    assert entry["matched"]["n"] == matched.sum() and entry["unmatched"]["n"] == (~matched).sum()
    assert entry["matched"]["lds"] == pytest.approx(per_query[matched].mean(), abs=1e-12)
    assert entry["unmatched"]["lds"] == pytest.approx(per_query[~matched].mean(), abs=1e-12)
    assert entry["all"]["lds"] == pytest.approx(per_query.mean(), abs=1e-12)
    assert set(result["methods"]) >= {"airrep", "bm25", "tfidf"}


def test_an_empty_group_has_no_lds_rather_than_nan(labels, report):
    # No query's id is a pool id, so every query is unmatched: the matched group is empty.
    folder, _ = report
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy warns on the mean of an empty slice
        result = analyse(str(labels / "labels-lds"), ["id"], report=str(folder), by="id", n_resamples=50)
    assert result["oracles"]["id"]["queries_with_match"] == 0 and result["oracles"]["id"]["lds_on_matched"] is None
    entry = result["methods"]["tfidf"]["sum"]
    assert entry["matched"] == {"lds": None, "ci": None, "n": 0}
    assert entry["unmatched"]["n"] == entry["all"]["n"] and entry["unmatched"]["lds"] == entry["all"]["lds"]
    json.dumps(result, allow_nan=False)
    table = markdown(result)
    assert "| matched (0) |" in table and f"| tfidf | sum | {format_lds(entry['all'])} | — |" in table


def test_bad_input_gets_a_clear_error(labels, report, tmp_path):
    with pytest.raises(LabelsFormatError, match="config 'pool' has no column 'answer'"):
        analyse(str(labels / "labels-lds"), ["answer"])
    with pytest.raises(ValueError, match=r"has no split\(s\) \[7\]"):
        analyse(str(labels / "labels-train"), ["task"], splits=[7])
    with pytest.raises(ValueError, match="reports are scored on lds labels"):
        analyse(str(labels / "labels-train"), ["task"], report=str(report[0]))
    wrong = tmp_path / "wrong"
    (wrong / "scores").mkdir(parents=True)
    np.save(wrong / "scores" / "m.sum.npy", np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"m.sum.npy: scores of shape \(3, 2\)"):
        analyse(str(labels / "labels-lds"), ["task"], report=str(wrong))
    with pytest.raises(FileNotFoundError, match="no saved score matrices"):
        analyse(str(labels / "labels-lds"), ["task"], report=str(tmp_path))
