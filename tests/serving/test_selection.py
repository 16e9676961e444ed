"""select_data.py: every strategy against a brute-force selection, the output folder's round trip, an
embeddings-dataset pool, duplicates, ties, and a clear error for each bad input."""

import itertools
import json
from collections import Counter

import numpy as np
import pytest
from datasets import load_dataset
from helpers import run

from airrep.cli import UsageError
from airrep.serving.embeddings import encode_corpus
from airrep.serving.selection import STRATEGIES, SelectArguments, parse_budget, select, select_data
from airrep.serving.validate import validate
from configuration_airrep import format_text
from modeling_airrep import distinct_rows, select_examples, text_digests


def brute_force(pair_scores: np.ndarray, budget: int, strategy: str) -> tuple[list[int], list[float], list[int]]:
    """The selection written out plainly: Python sorting on (-score, column), one candidate at a time."""
    m, n = pair_scores.shape
    s = pair_scores.astype(np.float64).tolist()
    if strategy == "round-robin":
        ranked = [sorted(range(n), key=lambda i, t=t: (-s[t][i], i)) for t in range(m)]
        rows, targets = [], []
        for t in itertools.cycle(range(m)):
            if len(rows) == budget:
                break
            best = next((i for i in ranked[t] if i not in rows), None)
            if best is not None:
                rows.append(best)
                targets.append(t)
        return rows, [s[t][i] for t, i in zip(targets, rows, strict=True)], targets
    columns = [[s[t][i] for t in range(m)] for i in range(n)]
    if strategy == "attention":
        combined = []
        for col in columns:
            weights = np.exp(np.abs(col) - np.abs(col).max())
            combined.append(float(np.dot(weights / weights.sum(), col)))
    else:
        combined = [{"max": max, "sum": sum, "mean": lambda c: sum(c) / len(c)}[strategy](col) for col in columns]
    rows = sorted(range(n), key=lambda i: (-combined[i], i))[:budget]
    targets = [max(range(m), key=lambda t, i=i: (s[t][i], -t)) for i in rows]
    return rows, [combined[i] for i in rows], targets


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("budget", [1, 5, 12])
def test_each_strategy_matches_a_brute_force_selection(strategy, budget):
    rng = np.random.default_rng(3)
    # Small integers: many ties, which must go to the lower pool row.
    pair_scores = rng.integers(-3, 4, size=(3, 12)).astype(np.float32)
    chosen = select(pair_scores, budget, strategy)
    rows, scores, targets = brute_force(pair_scores, budget, strategy)
    assert chosen.rows.tolist() == rows
    assert chosen.targets.tolist() == targets
    np.testing.assert_allclose(chosen.scores, scores, rtol=1e-5, atol=1e-6)
    assert len(set(rows)) == budget


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("block", [1, 5])
def test_streamed_blocks_in_any_order_select_as_the_whole_matrix(strategy, block):
    rng = np.random.default_rng(4)
    pair_scores = rng.integers(-3, 4, size=(4, 23)).astype(np.float32)
    rows = np.arange(100, 123)  # pool rows of the columns: the selection names rows, not columns
    blocks = [(rows[a : a + block], pair_scores[:, a : a + block]) for a in range(0, 23, block)][::-1]
    chosen = select_examples(blocks, 4, 23, 9, strategy)
    expected_rows, expected_scores, expected_targets = brute_force(pair_scores, 9, strategy)
    assert chosen.rows.tolist() == [100 + r for r in expected_rows]
    assert chosen.targets.tolist() == expected_targets
    np.testing.assert_allclose(chosen.scores, expected_scores, rtol=1e-6, atol=1e-9)


def test_blocks_holding_fewer_candidates_than_promised_are_an_error():
    with pytest.raises(ValueError, match="fewer than the budget of 3"):
        select_examples([(np.arange(2), np.ones((1, 2)))], 1, 5, 3, "round-robin")
    with pytest.raises(ValueError, match=r"shape \(1, 2\), expected \(2, 2\)"):
        select_examples([(np.arange(2), np.ones((1, 2)))], 2, 2, 1, "max")


def test_distinct_rows_are_each_texts_first_occurrence():
    texts = ["b", "a", "b", "c", "a", "", ""]
    assert distinct_rows(text_digests(texts)).tolist() == [0, 1, 3, 5]
    assert distinct_rows(text_digests([])).tolist() == []


def test_the_models_select_streams_a_memory_map(model, tmp_path):
    rng = np.random.default_rng(5)
    corpus = np.lib.format.open_memmap(tmp_path / "corpus.npy", mode="w+", dtype=np.float16, shape=(50, 8))
    corpus[:] = rng.standard_normal((50, 8))
    targets = rng.standard_normal((3, 8)).astype(np.float32)
    candidates = np.arange(0, 50, 2)
    for strategy in STRATEGIES:
        chosen = model.select(targets, corpus, 7, strategy, candidates=candidates)
        scores = targets @ np.asarray(corpus[candidates], dtype=np.float32).T
        expected_rows, _, expected_targets = brute_force(scores, 7, strategy)
        assert chosen.rows.tolist() == candidates[expected_rows].tolist()
        assert chosen.targets.tolist() == expected_targets


def test_round_robin_gives_every_target_its_turn():
    pair_scores = np.array([[9.0, 8.0, 7.0, 0.0], [9.0, 0.0, 0.0, 5.0]])
    chosen = select(pair_scores, 4, "round-robin")
    assert chosen.rows.tolist() == [0, 3, 1, 2]  # target 1 loses row 0 to target 0 and takes its next best
    assert chosen.targets.tolist() == [0, 1, 0, 1]


@pytest.mark.parametrize(("budget", "expected"), [("10", 10), ("0.1", 6), ("1.0", 64), (7, 7)])
def test_a_budget_is_a_count_or_a_fraction(budget, expected):
    assert parse_budget(budget, 64) == expected


@pytest.mark.parametrize(("budget", "message"), [("1.5", r"in \(0, 1\]"), ("some", "a count or a fraction")])
def test_a_bad_budget_is_named(budget, message):
    with pytest.raises(UsageError, match=message):
        parse_budget(budget, 64)


@pytest.fixture(scope="module")
def corpus(labels):
    return labels / "corpus"


def test_task_targets_on_the_built_in_corpus_round_trip(corpus, tmp_path):
    folder = tmp_path / "selection"
    pool = load_dataset(str(corpus), split="train")
    task = Counter(pool["task"]).most_common(1)[0][0]
    summary = select_data(SelectArguments(pool=str(corpus), targets=f"task:{task}", output_dir=str(folder),
                                          method="tfidf", budget="8", strategy="round-robin"))  # fmt: skip
    selection = load_dataset(str(folder), split="train")
    assert selection.num_rows == 8 == summary["budget"]
    assert selection["rank"] == list(range(1, 9))
    assert task not in selection["task"]  # the targets' own records are not candidates
    assert set(pool.column_names) | {"score", "rank", "target"} == set(selection.column_names)
    assert selection["id"] == [pool[row]["id"] for row in summary["pool_rows"]]
    n_targets = sum(t == task for t in pool["task"])
    assert sorted(Counter(selection["target"]).values(), reverse=True)[0] <= -(-8 // n_targets)
    card = (folder / "README.md").read_text()
    assert "round-robin" in card and summary["pool_fingerprint"] in card
    assert validate("dataset", folder) == []


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_airrep_scores_are_the_models_dot_products_and_duplicates_count_once(saved_folder, model, tmp_path):
    records = [{"prompt": f"What is {a} plus {b}?", "response": str(a + b)} for a, b in [(1, 2), (30, 4), (7, 7)]]
    records += [{"prompt": "Name a colour.", "response": "red"}, records[0], {"text": "The sky is blue."}]
    pool = _write_jsonl(tmp_path / "pool.jsonl", records)
    targets = _write_jsonl(tmp_path / "targets.jsonl", [{"prompt": "What is 5 plus 5?", "response": "10"}])
    summary = select_data(SelectArguments(pool=pool, targets=targets, output_dir=str(tmp_path / "out"),
                                          model=str(saved_folder), budget="5", strategy="max"))  # fmt: skip
    assert summary["distinct_candidates"] == 5 and sorted(summary["pool_rows"]) == [0, 1, 2, 3, 5]
    target = model.encode([format_text({"prompt": "What is 5 plus 5?", "response": "10"})])
    expected = target @ model.encode([format_text(r) for r in records]).T
    selection = load_dataset(str(tmp_path / "out"), split="train")
    np.testing.assert_allclose(selection["score"], expected[0, summary["pool_rows"]], rtol=1e-5)
    assert selection["score"] == sorted(selection["score"], reverse=True)


def test_an_embeddings_dataset_is_a_pool(corpus, saved_folder, model, tmp_path):
    embeddings = tmp_path / "embeddings"
    encode_corpus(str(saved_folder), str(corpus), embeddings, shard_size=32)
    summary = select_data(SelectArguments(pool=str(embeddings), targets="task:add", output_dir=str(tmp_path / "s"),
                                          budget="6", strategy="attention"))  # fmt: skip
    assert summary["arguments"]["model"] == str(saved_folder) and summary["pool"]["source"] == str(corpus)
    # The same selection from the stored float16 vectors, computed here from the pool's records.
    pool = load_dataset(str(corpus), split="train")
    stored = np.asarray(load_dataset(str(embeddings), split="train")["embedding"], dtype=np.float16)
    is_target = np.array([t == "add" for t in pool["task"]])
    targets = model.encode([format_text(r) for r, hit in zip(pool, is_target, strict=True) if hit])
    texts = [format_text(r) for r in pool]
    candidates = np.array([i for i in range(len(texts)) if texts.index(texts[i]) == i and not is_target[i]])
    expected = select(targets @ stored[candidates].astype(np.float32).T, 6, "attention")
    assert summary["pool_rows"] == candidates[expected.rows].tolist()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"budget": "100000"}, "a budget of 100000 examples does not fit a pool of"),
        ({"targets": "task:no-such-task"}, "no target examples"),
        ({"method": "gradcam"}, "unknown method 'gradcam'"),
        ({"strategy": "best"}, "unknown strategy 'best'"),
        ({"targets": "{bad_targets}"}, r"targets .*record 0.* matches no .*schema"),
        ({"method": "airrep", "model": "{target_lm}"}, "is not an AirRep checkpoint"),
        ({"method": "airrep"}, "method 'airrep' needs a checkpoint"),
        ({"method": "bm25", "model": "{target_lm}"}, "--model applies only to method 'airrep'"),
        ({"pool": "{missing}"}, "pool .* cannot be read"),
        ({"method": "grad-cos"}, "method 'grad-cos' needs --labels"),
        ({"method": "tfidf", "labels": "{labels_lds}"}, "--labels applies only to the methods that read the target"),
        (
            {"method": "grad-cos-lora", "labels": "{labels_lds}"},
            r"'grad-cos-lora' reads the LoRA adapters, but --labels .*labels-lds was made with full fine-tuning",
        ),
    ],
)
def test_bad_input_gets_a_clear_error(labels, corpus, tmp_path, overrides, message):
    places = {"bad_targets": _write_jsonl(tmp_path / "bad.jsonl", [{"question": "x", "answer": "y"}]),
              "target_lm": str(labels / "target-lm"), "missing": str(tmp_path / "missing"),
              "labels_lds": str(labels / "labels-lds")}  # fmt: skip
    arguments = {"pool": str(corpus), "targets": "task:add", "output_dir": str(tmp_path / "out"), "method": "tfidf"}
    arguments |= {k: v.format(**places) if isinstance(v, str) else v for k, v in overrides.items()}
    with pytest.raises(UsageError, match=message):
        select_data(SelectArguments(**arguments))
    assert not (tmp_path / "out").exists()


def test_the_command_line_reports_a_mistake_in_one_line(corpus, tmp_path):
    result = run(["select_data.py", "--pool", str(corpus), "--targets", "task:add", "--method", "tfidf",
                  "--strategy", "best", "--output_dir", str(tmp_path / "out")])  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("select_data.py: error: unknown strategy 'best'")


@pytest.mark.parametrize("method", ["grad-cos", "logra", "ekfac"])
def test_gradient_methods_select_with_the_labels_target_lm(labels, corpus, tmp_path, method):
    summary = select_data(SelectArguments(pool=str(corpus), targets="task:add", output_dir=str(tmp_path / "g"),
                                          method=method, labels=str(labels / "labels-lds"), projection_dim=64,
                                          budget="8", strategy="sum"))  # fmt: skip
    selection = load_dataset(str(tmp_path / "g"), split="train")
    assert selection.num_rows == 8 and len(set(summary["pool_rows"])) == 8
    assert selection["score"] == sorted(selection["score"], reverse=True)
    assert "target LM" in summary["method"] and str(labels / "target-lm") in summary["method"]
    if method == "ekfac":
        assert "kronfluence" in summary["method"]
    if method == "grad-cos":  # a sum of cosine similarities over the targets
        n_targets = summary["n_targets"]
        assert all(-n_targets - 1e-4 <= s <= n_targets + 1e-4 for s in selection["score"])
