"""The Gradio Space, served for real: called through gradio_client, driven in Debian's chromium by
playwright, and under 8 concurrent clients. Answers are checked against the model computed directly."""

import contextlib
import importlib.util
import json
import os
import shutil
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from datasets import load_dataset
from helpers import REPO

from airrep.labels import LabelArguments
from airrep.labels import generate_labels as generate
from airrep.serving.space_corpus import BUILTIN_POOL, builtin_pool_records
from configuration_airrep import format_text

SPACE = REPO / "space"
QUERIES = [("What is 12 plus 30?", "42"), ("Reverse the word 'planet'.", "tenalp"),
           ("Convert 15 Celsius to Fahrenheit.", "59"), ("What is the capital of France?", "Paris"),
           ("Sort these numbers: 5, 2, 9.", "2, 5, 9"), ("How many vowels are in 'banana'?", "3"),
           ("What is 7 times 8?", "56"), ("Is 'level' a palindrome?", "yes")]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app(saved_folder):
    os.environ["AIRREP_MODEL"] = str(saved_folder)
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    spec = importlib.util.spec_from_file_location("space_app", SPACE / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.demo.launch(server_name="127.0.0.1", server_port=_free_port(), prevent_thread_lock=True, quiet=True)
    yield module
    module.demo.close()


@pytest.fixture(scope="module")
def client(app):
    from gradio_client import Client

    return Client(app.demo.local_url, verbose=False)


@contextlib.contextmanager
def browser_page(app, tmp_path):
    """Debian's chromium on the served app, and the folder its screenshots go to (AIRREP_SCREENSHOT_DIR)."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    shots = Path(os.environ.get("AIRREP_SCREENSHOT_DIR", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 1400})
        page.goto(app.demo.local_url)
        yield page, shots
        browser.close()


def call(client, prompt="", response="", free_text="", k=5, source="Built-in corpus", upload=None, labels="",
         task="", indices="", model=""):  # fmt: skip
    from gradio_client import handle_file

    upload = handle_file(str(upload)) if upload else None
    return client.predict(prompt, response, free_text, k, source, upload, labels, task, indices, model,
                          api_name="/attribute")  # fmt: skip


def rows(table) -> pd.DataFrame:
    """A Dataframe output (``headers``) or a plot's data (``columns``) as a DataFrame."""
    return pd.DataFrame(table["data"], columns=table.get("headers") or table["columns"])


@pytest.fixture(scope="module")
def expected(model):
    """Top-5 rows and group scores computed directly with the model, for each query."""
    records = builtin_pool_records()
    corpus = model.encode([format_text(r) for r in records], batch_size=64)

    def top(prompt, response, k=5, task=None):
        query = model.encode([{"prompt": prompt, "response": response}])
        scores, indices = model.top_k(query, corpus, k)
        groups = None
        if task:
            members = [i for i, r in enumerate(records) if r["task"] == task]
            groups = {p: float(model.group_influence(query, corpus, [members], pooling=p)[0, 0])
                      for p in ("attention", "sum")}  # fmt: skip
        return indices[0].tolist(), scores[0].tolist(), groups

    return top


def test_bundled_pool_is_the_demo_corpus_pool():
    bundled = pd.read_parquet(BUILTIN_POOL).to_dict(orient="records")
    assert bundled == builtin_pool_records()


def test_attribute_returns_ranked_rows_and_group_scores(client, expected):
    table, plot, groups, status = call(client, *QUERIES[0], task="add", indices="0, 5, 999")
    top = rows(table)
    indices, scores, group_scores = expected(*QUERIES[0], task="add")
    assert top["rank"].tolist() == [1, 2, 3, 4, 5]
    assert top["index"].tolist() == indices
    np.testing.assert_allclose(top["score"], scores, atol=1e-3)
    assert (np.diff(top["score"]) <= 0).all()
    assert len(rows(plot)) == 5
    group_rows = rows(groups)
    assert group_rows["group"].tolist() == ["task = add", "listed indices"]
    assert group_rows.loc[1, "size"] == 3
    np.testing.assert_allclose(group_rows.loc[0, ["attention", "sum"]].astype(float),
                               [group_scores["attention"], group_scores["sum"]], rtol=1e-3)  # fmt: skip
    assert "corpus of 1,000 examples" in status


def test_uploaded_files_and_labels_pools_are_corpora(client, tmp_path):
    records = [{"instruction": "Add 2 and 3.", "input": "", "output": "5"},
               {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
               {"prompt": "Capital of Italy?", "response": "Rome"}]  # fmt: skip
    jsonl = tmp_path / "mixed.jsonl"
    pd.DataFrame(records).to_json(jsonl, orient="records", lines=True)
    top = rows(call(client, "What is 2 plus 3?", "5", source="Uploaded file", upload=jsonl, k=3)[0])
    assert sorted(top["index"]) == [0, 1, 2]
    csv = tmp_path / "pairs.csv"
    pd.DataFrame([{"prompt": f"q{i}", "response": f"a{i}"} for i in range(4)]).to_csv(csv, index=False)
    assert len(rows(call(client, free_text="a2", source="Uploaded file", upload=csv, k=2)[0])) == 2
    parquet = tmp_path / "pool.parquet"
    pd.DataFrame({"text": ["alpha", "beta", "gamma"]}).to_parquet(parquet)
    assert len(rows(call(client, free_text="beta", source="Uploaded file", upload=parquet, k=3)[0])) == 3

    labels = tmp_path / "labels-lds"
    generate(LabelArguments(output_dir=str(labels), preset="smoke", mode="lds"))
    table, _, groups, status = call(client, free_text="x", source="Labels dataset pool", labels=str(labels), k=4,
                                    indices="0 1 2")  # fmt: skip
    pool = load_dataset(str(labels), "pool", split="train")
    top = rows(table)
    assert len(top) == 4 and "corpus of 64 examples" in status
    assert top["text"].tolist() == [pool[int(i)]["text"] for i in top["index"]]
    assert rows(groups)["size"].tolist() == [3]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "Enter a query"),
        ({"prompt": "What is 2 plus 2?"}, "Add the model's response"),
        ({"free_text": "x", "model": "/no/such/model"}, "Could not load the model '/no/such/model'"),
        ({"free_text": "x", "indices": "1, 1000"}, "Index 1000 is out of range: the corpus has 1,000 examples"),
        ({"free_text": "x", "indices": "1, two"}, "Group indices must be whole numbers"),
        ({"free_text": "x", "task": "astrology"}, "No corpus example has task 'astrology'"),
        ({"free_text": "x", "source": "Uploaded file"}, "Choose a file to upload"),
        ({"free_text": "x" * 5000}, "The query has 5,000 characters; the limit is 4,000"),
        ({"free_text": "x", "source": "Labels dataset pool", "labels": "/no/such/labels"}, "Could not load the 'pool'"),
    ],
)
def test_bad_input_gets_a_clear_message_and_the_app_keeps_serving(client, kwargs, message):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=message):
        call(client, **kwargs)
    assert len(rows(call(client, *QUERIES[1], k=2)[0])) == 2


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.jsonl", b"", "empty.jsonl is empty"),
        ("broken.jsonl", b'{"prompt": "a", "response": ', "broken.jsonl could not be read as JSONL"),
        ("odd.jsonl", b'{"prompt": "a", "response": "b"}\n{"question": "c"}\n', "Corpus record 1 cannot be used"),
        ("notes.txt", b"hello", "Invalid file type"),  # gradio's own check, before the app
        ("nothing.csv", b"prompt,response\n", "The corpus has no examples"),
    ],
)
def test_bad_uploads_are_named(client, tmp_path, name, content, message):
    from gradio_client.exceptions import AppError

    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(AppError, match=message):
        call(client, free_text="x", source="Uploaded file", upload=path)


def test_oversize_corpus_is_refused(client, app, monkeypatch):
    from gradio_client.exceptions import AppError

    monkeypatch.setattr(app, "MAX_CORPUS", 100)
    with pytest.raises(AppError, match="The corpus has 1,000 examples; this Space accepts at most 100"):
        call(client, free_text="x")


def test_eight_concurrent_clients_get_their_own_correct_answers(app, expected):
    from gradio_client import Client

    def one(query):
        return rows(call(Client(app.demo.local_url, verbose=False), *query)[0])["index"].tolist()

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, QUERIES))
    assert answers == [expected(*q)[0] for q in QUERIES]


@pytest.mark.slow
@pytest.mark.browser
def test_a_real_browser_types_a_query_and_sees_ranked_rows(app, expected, tmp_path):
    from playwright.sync_api import expect

    with browser_page(app, tmp_path) as (page, shots):
        page.locator("#prompt textarea").fill(QUERIES[0][0])
        page.locator("#response textarea").fill(QUERIES[0][1])
        page.locator("#group-task textarea").fill("add")
        page.locator("#attribute").click()
        results = page.locator("#results")
        indices, _, _ = expected(*QUERIES[0])
        for index in indices:  # every expected row, by its text, in the rendered table
            expect(results).to_contain_text(format_text(builtin_pool_records()[index]).split("\n")[0], timeout=60_000)
        expect(page.locator("#groups")).to_contain_text("task = add")
        expect(page.locator("#scores-plot svg .mark-rect path")).to_have_count(10, timeout=30_000)  # the 10 bars
        page.screenshot(path=str(shots / "space.png"), full_page=True)
    assert (shots / "space.png").stat().st_size > 10_000


def test_corpus_embeddings_are_computed_once_per_corpus(client, app, tmp_path, monkeypatch):
    _, model = app.load_model("")
    sizes = []
    original = model.encode
    monkeypatch.setattr(model, "encode", lambda texts, **kw: sizes.append(len(texts)) or original(texts, **kw))
    upload = tmp_path / "fresh.jsonl"
    upload.write_text("\n".join(f'{{"prompt": "p{i}", "response": "r{i}"}}' for i in range(7)))
    for query in QUERIES[:3]:
        call(client, *query, source="Uploaded file", upload=upload, k=2)
    assert sizes == [7, 1, 1, 1]  # the corpus once, then only the queries


def test_plain_text_pool_rows_keep_their_text(app, model):
    # A labels pool built from plain-text records has rows {"id", "text"}: the text is the record.
    assert app.corpus_texts(model, [{"id": "0", "text": "alpha"}, {"id": "1", "text": "beta"}]) == ["alpha", "beta"]


# ----------------------------------------------------------------------------- the "Select training data" tab

TARGETS = ['{"prompt": "What is 12 plus 30?", "response": "42"}', "What is 7 times 8? 56",
           '{"prompt": "Reverse the word \'stone\'.", "response": "enots"}']  # fmt: skip
PASTED = "\n".join(TARGETS)


def call_select(client, targets=PASTED, targets_upload=None, budget=12, strategy="round-robin",
                source="Built-in corpus", upload=None, labels="", model=""):  # fmt: skip
    from gradio_client import handle_file

    targets_upload = handle_file(str(targets_upload)) if targets_upload else None
    upload = handle_file(str(upload)) if upload else None
    return client.predict(targets, targets_upload, budget, strategy, source, upload, labels, model,
                          api_name="/select")  # fmt: skip


def test_the_spaces_strategies_are_the_checkpoints(app):
    import modeling_airrep

    assert app.STRATEGIES == modeling_airrep.SELECTION_STRATEGIES


@pytest.mark.parametrize("strategy", ["round-robin", "attention"])
def test_the_space_selects_what_select_data_selects(client, saved_folder, tmp_path, strategy):
    from airrep.serving.selection import SelectArguments, select_data

    pool = tmp_path / "pool.jsonl"
    pd.DataFrame(builtin_pool_records()).to_json(pool, orient="records", lines=True)
    targets = tmp_path / "targets.jsonl"
    targets.write_text("".join(line + "\n" if line.startswith("{") else json.dumps({"text": line}) + "\n"
                               for line in TARGETS))  # fmt: skip
    summary = select_data(SelectArguments(pool=str(pool), targets=str(targets), output_dir=str(tmp_path / "cli"),
                                          model=str(saved_folder), budget="12", strategy=strategy))  # fmt: skip
    table, download, status = call_select(client, strategy=strategy)
    selected = rows(table)
    assert selected["index"].tolist() == summary["pool_rows"]
    assert selected["rank"].tolist() == list(range(1, 13))
    expected = load_dataset(str(tmp_path / "cli"), split="train")
    np.testing.assert_allclose(selected["score"], expected["score"], atol=1e-3)
    assert selected["target"].tolist() == expected["target"]
    assert f"12 of {summary['distinct_candidates']:,} distinct corpus examples selected for 3 target(s)" in status
    # The download is the selected records, whole, with the selection's columns, readable by datasets.
    downloaded = load_dataset("json", data_files=download, split="train")
    records = builtin_pool_records()
    assert [{k: r[k] for k in records[0]} for r in downloaded] == [records[i] for i in summary["pool_rows"]]
    assert downloaded["rank"] == list(range(1, 13)) and downloaded["target"] == expected["target"]


def test_targets_upload_and_duplicate_corpus_texts(client, tmp_path):
    upload = tmp_path / "pool.jsonl"
    pool = [{"prompt": "Add 2 and 3.", "response": "5"}, {"prompt": "Add 2 and 3.", "response": "5"},
            {"prompt": "Name a colour.", "response": "red"}, {"text": "The sky is blue."}]  # fmt: skip
    pd.DataFrame(pool).to_json(upload, orient="records", lines=True)
    targets = tmp_path / "targets.csv"
    pd.DataFrame([{"prompt": "Add 4 and 4.", "response": "8"}]).to_csv(targets, index=False)
    table, _, status = call_select(client, targets="", targets_upload=targets, budget=3, strategy="max",
                                   source="Uploaded file", upload=upload)  # fmt: skip
    assert sorted(rows(table)["index"]) == [0, 2, 3]  # row 1 repeats row 0's text: one candidate
    assert "3 of 3 distinct corpus examples selected for 1 target(s)" in status


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"targets": "  \n"}, "Enter target examples"),
        ({"targets": '{"prompt": "a", '}, "Target line 1 starts like JSON but is not"),
        ({"targets": '{"question": "a"}'}, "Target 0 cannot be used"),
        ({"budget": 5000}, "a budget of 5000 examples does not fit a pool of"),
        ({"budget": 0}, "Value 0 is less than minimum value 1"),  # gradio's own check, before the app
        ({"strategy": "best"}, "unknown strategy 'best'|Value: best is not in the list of choices"),
        ({"source": "Uploaded file"}, "Choose a file to upload"),
    ],
)
def test_bad_selection_input_gets_a_clear_message(client, kwargs, message):
    from gradio_client.exceptions import AppError

    with pytest.raises((AppError, ValueError), match=message):
        call_select(client, **kwargs)
    assert len(rows(call_select(client, budget=2)[0])) == 2


@pytest.mark.slow
@pytest.mark.browser
def test_a_real_browser_selects_training_data_and_gets_the_download(app, saved_folder, tmp_path):
    from playwright.sync_api import expect

    import modeling_airrep

    records = builtin_pool_records()
    model = modeling_airrep.AirRepModel.from_pretrained(str(saved_folder))
    texts = [format_text(r) for r in records]
    corpus = model.encode(texts, batch_size=64)
    targets = model.encode([json.loads(TARGETS[0])], batch_size=1)
    candidates = modeling_airrep.distinct_rows(modeling_airrep.text_digests(texts))
    chosen = model.select(targets, corpus, 5, "round-robin", candidates=candidates).rows
    with browser_page(app, tmp_path) as (page, shots):
        page.get_by_role("tab", name="Select training data").click()
        page.locator("#targets textarea").fill(TARGETS[0])
        page.locator("#budget input").fill("5")
        page.locator("#select").click()
        selected = page.locator("#selected")
        for index in chosen:  # every expected row, by its text, in the rendered table
            expect(selected).to_contain_text(texts[index].split("\n")[0], timeout=60_000)
        expect(page.locator("#select-status")).to_contain_text("5 of", timeout=30_000)
        link = page.locator("#selection-file a[data-testid='download-link']")
        expect(link).to_have_attribute("download", "selection.jsonl", timeout=30_000)
        with page.expect_download() as download:
            link.click()
        saved = tmp_path / "selection.jsonl"
        download.value.save_as(saved)
        page.screenshot(path=str(shots / "space-select.png"), full_page=True)
    lines = [json.loads(line) for line in saved.read_text().splitlines()]
    assert [line["rank"] for line in lines] == [1, 2, 3, 4, 5]
    assert [format_text({k: v for k, v in line.items() if k in records[0]}) for line in lines] == [
        texts[i] for i in chosen
    ]


def test_a_checkpoint_whose_code_predates_selection_gets_a_clear_message(client, saved_folder, tmp_path):
    from gradio_client.exceptions import AppError

    old = tmp_path / "old-checkpoint"
    shutil.copytree(saved_folder, old)
    code = (old / "modeling_airrep.py").read_text()
    start = code.index("# ----------------------------------------------------------------------------- data selection")
    (old / "modeling_airrep.py").write_text(code[:start] + code[code.index("class AirRepModel(BertPreTrainedModel)") :]
                                            .replace("    def select(", "    def _removed_select("))  # fmt: skip
    with pytest.raises(AppError, match="predates data selection; save the checkpoint again"):
        call_select(client, budget=2, model=str(old))
