"""airrep.evaluation.compare_reports on the smoke eval report: paired differences against scipy, the choice of
pooling, and clear errors."""

import json

import numpy as np
import pytest
from datasets import load_dataset
from scipy.stats import spearmanr

from airrep.evaluation.compare_reports import compare, main


def _per_query_lds(scores: np.ndarray, losses: np.ndarray) -> np.ndarray:
    out = []
    for q in range(losses.shape[1]):
        x, y = scores[:, q], -losses[:, q]
        out.append(0.0 if np.ptp(x) == 0 or np.ptp(y) == 0 else spearmanr(x, y).statistic)
    return np.array(out)


def test_paired_differences_match_an_independent_computation(labels, report, tmp_path):
    folder, _ = report
    lds_labels = labels / "labels-lds"
    losses = np.array(load_dataset(str(lds_labels), "labels", split="train")["losses"])
    per_query = {
        (m, p): _per_query_lds(np.load(folder / "scores" / f"{m}.{p}.npy"), losses)
        for m in ("tfidf", "bm25")
        for p in ("sum", "attention")
    }
    best_bm25 = max(("sum", "attention"), key=lambda p: per_query["bm25", p].mean())
    output = tmp_path / "paired.json"
    main(["--labels", str(lds_labels), "--methods", f"{folder}:tfidf.sum", f"{folder}:bm25",
          "--n_resamples", "300", "--output", str(output)])  # fmt: skip
    result = json.loads(output.read_text())
    assert result["reference"] == f"{folder}:tfidf.sum"
    assert list(result["methods"]) == [f"{folder}:tfidf.sum", f"{folder}:bm25.{best_bm25}"]
    entry = result["methods"][f"{folder}:bm25.{best_bm25}"]
    difference = per_query["tfidf", "sum"] - per_query["bm25", best_bm25]
    assert entry["lds"] == pytest.approx(per_query["bm25", best_bm25].mean(), abs=1e-12)
    assert entry["difference"] == pytest.approx(difference.mean(), abs=1e-12)
    low, high = entry["difference_ci"]
    assert low <= difference.mean() <= high
    assert result["methods"][f"{folder}:tfidf.sum"]["difference"] == 0.0


def test_bad_input_gets_a_clear_error(labels, report):
    folder, _ = report
    lds_labels = str(labels / "labels-lds")
    with pytest.raises(ValueError, match="at least two methods"):
        compare(lds_labels, [f"{folder}:tfidf"])
    with pytest.raises(ValueError, match="expected REPORT:METHOD"):
        compare(lds_labels, ["tfidf", f"{folder}:bm25"])
    with pytest.raises(FileNotFoundError, match=r"nope.sum.npy does not exist; .* holds scores for \[.*'tfidf.sum'"):
        compare(lds_labels, [f"{folder}:nope.sum", f"{folder}:bm25"])
    with pytest.raises(ValueError, match="reports are scored on lds labels"):
        compare(str(labels / "labels-train"), [f"{folder}:tfidf", f"{folder}:bm25"])
