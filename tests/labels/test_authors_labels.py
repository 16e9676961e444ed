"""The AirRep authors' label formats: an LDS benchmark folder that eval_lds.py scores as their evaluation script
does, training labels that train_airrep.py trains on, and a clear error for every malformed index."""

import json

import numpy as np
import pytest
import scipy.stats
from datasets import load_dataset
from helpers import run

from airrep.cli import UsageError
from airrep.evaluation import EvalArguments, evaluate
from airrep.labels.authors_labels import convert_lds_benchmark, convert_training_labels
from airrep.labels.corpus import generate_split_records


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def authors_record(record: dict, i: int) -> dict:
    """The built-in corpus's record in one of the schemas the authors' files use."""
    if i % 3 == 0:
        return {"data": [record["inputs"], record["targets"]]}
    if i % 3 == 1:
        return {"prompt": record["inputs"], "response": record["targets"]}
    return {"inputs": record["inputs"], "targets": record["targets"]}


def authors_format_item(x: dict) -> str:
    """The authors' evaluation formatter (scripts/04_evaluate.py), written out again here."""
    prompt = response = ""
    if "data" in x:
        prompt = " ".join(x["data"][0].split()[:100])
        response = x["data"][1]
    for op in ["inputs", "prompt", "instruction"]:
        if op in x:
            prompt = x[op]
            break
    for op in ["response", "targets", "output"]:
        if op in x:
            response = x[op]
            break
    return "Question: " + " ".join(prompt.split()[:256]) + "\nAnswer:" + " " + response


def authors_lds(score: np.ndarray, lds: list[dict], pooling: str) -> float:
    """Their average_lds_spearman: softmax of the raw scores (no abs) or a sum, Spearman, NaN as 0."""
    values = []
    labels = -np.column_stack([np.asarray(s["test_loss"], dtype=float) for s in lds])
    for i in range(score.shape[0]):
        pooled = []
        for s in lds:
            a = score[i, np.asarray(s["train_subset"])].astype(np.float64)
            if pooling == "softmax":
                w = np.exp(a - a.max())
                pooled.append(float((w / w.sum() * a).sum()))
            else:
                pooled.append(float(a.sum()))
        corr = scipy.stats.spearmanr(pooled, labels[i]).statistic
        values.append(0.0 if np.isnan(corr) else float(corr))
    return float(np.mean(values))


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory):
    """A hand-built authors' LDS benchmark folder: 60 train records, 8 test records, 24 subset models."""
    folder = tmp_path_factory.mktemp("airrep-test") / "flan"
    folder.mkdir()
    records = generate_split_records({"train": 60, "test": 8}, seed=5)
    train = [authors_record(r, i) for i, r in enumerate(records["train"])]
    test = [authors_record(r, i) for i, r in enumerate(records["test"])]
    rng = np.random.default_rng(0)
    lds = [{"train_subset": sorted(rng.choice(60, 30, replace=False).tolist()),
            "test_loss": rng.uniform(0.5, 3.0, 8).round(4).tolist()} for _ in range(24)]  # fmt: skip
    write_jsonl(folder / "train.jsonl", train)
    write_jsonl(folder / "test.jsonl", test)
    write_jsonl(folder / "lds.jsonl", lds)
    return folder, train, test, lds


def test_an_lds_benchmark_is_scored_as_the_authors_evaluation_scores_it(benchmark, saved_folder, model, tmp_path):
    folder, train, test, lds = benchmark
    done = run(["-m", "airrep.convert", "labels", str(folder), str(tmp_path / "labels")])
    assert done.returncode == 0, done.stderr
    assert "lds labels, 24 subset models, pool 60, 8 queries" in done.stdout
    labels = load_dataset(str(tmp_path / "labels"), "labels", split="train")
    assert labels["subset"] == [s["train_subset"] for s in lds]
    np.testing.assert_allclose(np.array(labels["losses"]), [s["test_loss"] for s in lds], rtol=1e-6)
    assert labels["seed"] == [-1] * 24
    assert "converted from the authors' release format" in (tmp_path / "labels" / "README.md").read_text()

    results = evaluate(EvalArguments(labels=str(tmp_path / "labels"), output_dir=str(tmp_path / "report"),
                                     model=[str(saved_folder)], methods=["airrep"],
                                     poolings=["sum", "attention", "softmax"]))  # fmt: skip
    train_embeddings = model.encode([authors_format_item(x) for x in train])
    score = model.encode([authors_format_item(x) for x in test]) @ train_embeddings.T
    for pooling in ("softmax", "sum"):
        assert results["methods"]["airrep"][pooling]["lds"] == pytest.approx(authors_lds(score, lds, pooling), abs=1e-6)
    assert "LDS softmax" in (tmp_path / "report" / "results.md").read_text()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ({"train_subset": [0, 60], "test_loss": [1.0] * 8}, r"lds\.jsonl, line 3: train_subset holds row 60, out of"),
        ({"train_subset": [0, 1], "test_loss": [1.0] * 7}, r"lds\.jsonl, line 3: 7 test_loss values for 8 queries"),
        ({"train_subset": [0, "a"], "test_loss": [1.0] * 8}, "line 3: train_subset must be a list of row numbers"),
        ({"subset": [0]}, "line 3: expected an object with 'train_subset' and 'test_loss'"),
    ],
)
def test_a_bad_benchmark_line_is_named(benchmark, tmp_path, line, message):
    _, train, test, lds = benchmark
    bad = tmp_path / "bad"
    bad.mkdir()
    write_jsonl(bad / "train.jsonl", train)
    write_jsonl(bad / "test.jsonl", test)
    write_jsonl(bad / "lds.jsonl", [lds[0], lds[1], line])
    with pytest.raises(UsageError, match=message):
        convert_lds_benchmark(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def training(tmp_path_factory):
    """The authors' training labels: 80 records, 3 splits of 6 dev rows, 5 pairs each of 16 rows (one unrun)."""
    work = tmp_path_factory.mktemp("authors-train")
    records = generate_split_records({"train": 80}, seed=9)["train"]
    data = write_jsonl(work / "flan.jsonl", [authors_record(r, i) for i, r in enumerate(records)])
    rng = np.random.default_rng(1)
    index, losses = [], work / "losses"
    losses.mkdir()
    for split in range(3):
        order = rng.permutation(80)
        dev, rest = sorted(order[:6].tolist()), order[6:]
        for k in range(5):
            pair = {"id": f"{split}-{k}", "select": sorted(rng.choice(rest, 16, replace=False).tolist()), "dev": dev,
                    "dev_id": split}  # fmt: skip
            index.append(pair)
            if (split, k) != (2, 4):  # a pair whose SFT never ran
                loss = rng.uniform(0.5, 3.0, 6).tolist()
                (losses / f"loss-{pair['id']}.json").write_text(
                    json.dumps(
                        {"pair_id": pair["id"], "dev_id": split, "losses": loss, "mean_loss": float(np.mean(loss))}
                    )
                )
    write_jsonl(work / "train_index.jsonl", index)
    return work, data, losses, index


def test_training_labels_convert_and_train_with_the_smoke_preset(training, tmp_path):
    work, data, losses, index = training
    done = run(["-m", "airrep.convert", "labels", str(work / "train_index.jsonl"), str(tmp_path / "labels"),
                "--data", str(data), "--loss_dir", str(losses)])  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "1 pair(s) of" in done.stderr and "train labels, 14 subset models, pool 80, 18 queries" in done.stdout
    queries = load_dataset(str(tmp_path / "labels"), "queries", split="train")
    labels = load_dataset(str(tmp_path / "labels"), "labels", split="train")
    first = labels[0]
    assert first["subset"] == index[0]["select"] and first["split_id"] == 0
    assert [queries[q]["pool_index"] for q in first["queries"]] == index[0]["dev"]
    loss = json.loads((losses / "loss-0-0.json").read_text())["losses"]
    np.testing.assert_allclose(first["losses"], loss, rtol=1e-6)

    trained = run(["train_airrep.py", "--preset", "smoke", "--labels", str(tmp_path / "labels"), "--output_dir",
                   str(tmp_path / "model"), "--max_steps", "2"])  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert (tmp_path / "model" / "model.safetensors").is_file()


def test_bad_training_labels_are_named(training, tmp_path):
    work, data, losses, index = training
    records = [json.loads(line) for line in data.read_text().splitlines()]
    overlapping = [{**index[0], "select": [index[0]["dev"][0], *index[0]["select"][1:]]}, *index[1:]]
    write_jsonl(tmp_path / "overlap.jsonl", overlapping)
    with pytest.raises(UsageError, match=r"overlap\.jsonl, line 1: select holds dev row"):
        convert_training_labels(tmp_path / "overlap.jsonl", records, "flan", losses, tmp_path / "out")
    with pytest.raises(UsageError, match=r"train_index\.jsonl, line 1: select holds row \d+, out of range for 40"):
        convert_training_labels(work / "train_index.jsonl", records[:40], "flan", losses, tmp_path / "out")
    short = tmp_path / "short"
    short.mkdir()
    for file in losses.iterdir():
        short.joinpath(file.name).write_text(file.read_text())
    short.joinpath("loss-1-2.json").write_text(json.dumps({"pair_id": "1-2", "dev_id": 1, "losses": [1.0]}))
    with pytest.raises(UsageError, match=r"loss-1-2\.json: 1 losses for 6 queries"):
        convert_training_labels(work / "train_index.jsonl", records, "flan", short, tmp_path / "out")
    short.joinpath("loss-1-2.json").write_text(json.dumps({"pair_id": "0-2", "dev_id": 1, "losses": [1.0] * 6}))
    with pytest.raises(UsageError, match=r"loss-1-2\.json: pair_id '0-2' and dev_id 1 do not match"):
        convert_training_labels(work / "train_index.jsonl", records, "flan", short, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    missing = run(["-m", "airrep.convert", "labels", str(work / "train_index.jsonl"), str(tmp_path / "x")])
    assert missing.returncode == 2 and "training labels need --data" in missing.stderr.splitlines()[-1]
