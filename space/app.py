"""AirRep attribution explorer: paste a model output, see which training examples explain it; or paste
target examples, and select the training data that best teaches them.

Runs on a Hugging Face Space with nothing but this folder: the model is loaded with
``AutoModel.from_pretrained(AIRREP_MODEL, trust_remote_code=True)``, and the text format, top-k and
group influence and the selection rule all come from the checkpoint's own code.

    AIRREP_MODEL=out/demo/model python space/app.py

Environment:
    AIRREP_MODEL           checkpoint folder or Hub id (default org/airrep-small-flan)
    AIRREP_MAX_CORPUS      most corpus examples accepted (default 20000)
    AIRREP_MAX_TEXT_CHARS  longest query or corpus text, in characters (default 4000)
    AIRREP_CONCURRENCY     requests worked on at once; the rest wait in the queue (default 2)
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import sys
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd
from transformers import AutoModel

MODEL_ID = os.environ.get("AIRREP_MODEL", "org/airrep-small-flan")
MAX_CORPUS = int(os.environ.get("AIRREP_MAX_CORPUS", "20000"))
MAX_TEXT_CHARS = int(os.environ.get("AIRREP_MAX_TEXT_CHARS", "4000"))
CONCURRENCY = int(os.environ.get("AIRREP_CONCURRENCY", "2"))
MAX_K = 50
MAX_TARGETS = 200
# The checkpoint's modeling_airrep.SELECTION_STRATEGIES (a test keeps the two equal); the model checks it too.
STRATEGIES = ("round-robin", "max", "mean", "sum", "attention")
ADDED_COLUMNS = ("score", "rank", "target")  # as select_data.py writes them
BUILTIN_POOL = Path(__file__).with_name("builtin_pool.parquet")
SOURCES = ("Built-in corpus", "Uploaded file", "Labels dataset pool")
DISPLAY_CHARS = 300


class LRU:
    """A small thread-safe least-recently-used cache whose values are built once per key."""

    def __init__(self, size: int) -> None:
        self.size, self.items, self.lock = size, OrderedDict(), threading.Lock()
        self.key_locks: dict[Any, threading.Lock] = {}

    def get(self, key: Any, build) -> Any:
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
            key_lock = self.key_locks.setdefault(key, threading.Lock())
        with key_lock:  # concurrent requests for one corpus wait for a single computation
            with self.lock:
                if key in self.items:
                    return self.items[key]
            value = build()
            with self.lock:
                self.items[key] = value
                while len(self.items) > self.size:
                    self.items.popitem(last=False)
                self.key_locks.pop(key, None)
            return value


MODELS, CORPORA, EMBEDDINGS = LRU(2), LRU(8), LRU(8)


def load_model(model_id: str):
    model_id = (model_id or "").strip() or MODEL_ID

    def build():
        try:
            return AutoModel.from_pretrained(model_id, trust_remote_code=True).eval()
        except Exception as error:
            raise gr.Error(f"Could not load the model {model_id!r}: {type(error).__name__}: {error}") from None

    return model_id, MODELS.get(model_id, build)


# ----------------------------------------------------------------------------- corpora


def _read_jsonl(path: str) -> list[Any]:
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise ValueError(f"line {number}: {error}") from None
    return records


def _read_json(path: str) -> list[Any]:
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return _read_jsonl(path)  # JSON Lines saved as .json
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise ValueError("expected a list of records (or JSON Lines)")
    return data


def _read_csv(path: str) -> list[Any]:
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def _read_parquet(path: str) -> list[Any]:
    import pyarrow.parquet

    return pyarrow.parquet.read_table(path).to_pylist()


READERS = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet}


def read_records(path: str | Path) -> list[Any]:
    """Records of a JSONL, JSON, CSV or parquet file, exactly as stored (no type inference)."""
    name, suffix = Path(path).name, Path(path).suffix.lower()
    if suffix not in READERS:
        raise gr.Error(f"{name}: unsupported file type {suffix or '(none)'}; upload .jsonl, .json, .csv or .parquet")
    if os.path.getsize(path) == 0:
        raise gr.Error(f"{name} is empty")
    try:
        records = READERS[suffix](str(path))
    except Exception as error:
        raise gr.Error(f"{name} could not be read as {suffix[1:].upper()}: {error}") from None
    # Columnar formats give every record every column; a field a record lacks is absent, not None.
    return [{k: v for k, v in r.items() if v is not None} if isinstance(r, dict) else r for r in records]


def load_corpus(source: str, upload: str | None, labels_id: str) -> tuple[str, list[dict[str, Any]]]:
    """``(key, records)`` of the chosen corpus; ``key`` names its contents for the embeddings cache."""
    if source == SOURCES[0]:
        return "builtin", CORPORA.get("builtin", lambda: read_records(BUILTIN_POOL))
    if source == SOURCES[1]:
        if not upload:
            raise gr.Error("Choose a file to upload, or pick another corpus source")
        path = upload if isinstance(upload, str) else getattr(upload, "name", str(upload))
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        return f"upload:{digest}", CORPORA.get(f"upload:{digest}", lambda: read_records(path))
    if source == SOURCES[2]:
        labels_id = (labels_id or "").strip()
        if not labels_id:
            raise gr.Error("Enter a labels dataset (folder or Hub id) whose 'pool' to search")

        def build():
            from datasets import load_dataset

            try:
                rows = load_dataset(labels_id, "pool", split="train").to_list()
            except Exception as error:
                raise gr.Error(f"Could not load the 'pool' of {labels_id!r}: {type(error).__name__}: {error}") from None

            return [{k: v for k, v in r.items() if v is not None} for r in rows]

        return f"labels:{labels_id}", CORPORA.get(f"labels:{labels_id}", build)
    raise gr.Error(f"Unknown corpus source {source!r}; choose one of {', '.join(SOURCES)}")


def example_texts(model, records: list[Any], what: str) -> list[str]:
    """The texts the model sees, each within the length limit; an unusable record is named as ``what`` N."""
    texts = []
    for index, record in enumerate(records):
        # A labels-pool row carries a formatted `text` beside its fields; format_text reads the fields
        # first and uses `text` only for records that were plain text.
        try:
            text = model.config.format_text(record, index=index)
        except ValueError as error:
            raise gr.Error(f"{what} {index} cannot be used: {error}") from None
        if len(text) > MAX_TEXT_CHARS:
            raise gr.Error(f"{what} {index} has {len(text):,} characters; the limit is {MAX_TEXT_CHARS:,}")
        texts.append(text)
    return texts


def corpus_texts(model, records: list[dict[str, Any]]) -> list[str]:
    """The corpus's texts, with the corpus limits checked."""
    if not records:
        raise gr.Error("The corpus has no examples")
    if len(records) > MAX_CORPUS:
        raise gr.Error(f"The corpus has {len(records):,} examples; this Space accepts at most {MAX_CORPUS:,}")
    return example_texts(model, records, "Corpus record")


def query_input(prompt: str, response: str, free_text: str) -> str | dict[str, str]:
    prompt, response, free_text = (prompt or "").strip(), (response or "").strip(), (free_text or "").strip()
    if free_text:
        query: str | dict[str, str] = free_text
    elif response:
        query = {"prompt": prompt, "response": response} if prompt else response
    elif prompt:
        raise gr.Error("Add the model's response to the prompt, or use the free-text box")
    else:
        raise gr.Error("Enter a query: a prompt and a response, or free text")
    length = len(query) if isinstance(query, str) else len(prompt) + len(response)
    if length > MAX_TEXT_CHARS:
        raise gr.Error(f"The query has {length:,} characters; the limit is {MAX_TEXT_CHARS:,}")
    return query


def parse_indices(text: str, n: int) -> list[int]:
    values = []
    for part in (text or "").replace(",", " ").split():
        try:
            value = int(part)
        except ValueError:
            raise gr.Error(f"Group indices must be whole numbers; {part!r} is not") from None
        if not 0 <= value < n:
            raise gr.Error(f"Index {value} is out of range: the corpus has {n:,} examples (0 to {n - 1:,})")
        values.append(value)
    return values


# ----------------------------------------------------------------------------- the endpoint


def attribute(
    prompt: str,
    response: str,
    free_text: str,
    k: float,
    source: str,
    upload: str | None,
    labels_id: str,
    group_task: str,
    group_indices: str,
    model_id: str,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, str]:
    """Top-k training examples for a query, a bar plot of their scores, and the influence of one group."""
    query = query_input(prompt, response, free_text)
    k = int(k or 10)
    if not 1 <= k <= MAX_K:
        raise gr.Error(f"k must be between 1 and {MAX_K}")
    model_id, model = load_model(model_id)
    key, records = load_corpus(source, upload, labels_id)
    texts = corpus_texts(model, records)
    corpus = EMBEDDINGS.get((model_id, key), lambda: model.encode(texts, batch_size=32))
    q = model.encode([query], batch_size=1)
    scores, indices = model.top_k(q, corpus, k=min(k, len(texts)))
    rows = []
    for rank, (score, index) in enumerate(zip(scores[0].tolist(), indices[0].tolist(), strict=True), start=1):
        text = texts[index]
        rows.append({"rank": rank, "score": round(float(score), 4), "index": int(index),
                     "task": str(records[index].get("task", "")),
                     "text": text if len(text) <= DISPLAY_CHARS else text[:DISPLAY_CHARS] + "…"})  # fmt: skip
    table = pd.DataFrame(rows, columns=["rank", "score", "index", "task", "text"])
    plot = pd.DataFrame({"example": [f"#{r['rank']} (row {r['index']})" for r in rows],
                         "score": [r["score"] for r in rows]})  # fmt: skip

    groups = []
    task = (group_task or "").strip()
    if task:
        members = [i for i, r in enumerate(records) if str(r.get("task", "")) == task]
        if not members:
            known = sorted({str(r["task"]) for r in records if "task" in r})
            hint = f"; tasks here: {', '.join(known[:20])}" if known else "; this corpus has no 'task' column"
            raise gr.Error(f"No corpus example has task {task!r}{hint}")
        groups.append((f"task = {task}", members))
    if (group_indices or "").strip():
        groups.append(("listed indices", parse_indices(group_indices, len(texts))))
    group_rows = []
    for name, members in groups:
        attention = float(model.group_influence(q, corpus, [members], pooling="attention")[0, 0])
        total = float(model.group_influence(q, corpus, [members], pooling="sum")[0, 0])
        group_rows.append({"group": name, "size": len(members), "attention": round(attention, 4),
                           "sum": round(total, 4)})  # fmt: skip
    group_table = pd.DataFrame(group_rows, columns=["group", "size", "attention", "sum"])
    status = f"Model `{model_id}` · corpus of {len(texts):,} examples · top {len(rows)} shown"
    return table, plot, group_table, status


def parse_targets(text: str, upload: str | None) -> list[Any]:
    """Target examples: the uploaded file's records, or one per pasted line (a JSON object, or plain text)."""
    if upload:
        path = upload if isinstance(upload, str) else getattr(upload, "name", str(upload))
        targets = read_records(path)
    else:
        targets = []
        for number, line in enumerate((text or "").splitlines(), start=1):
            line = line.strip()
            if not line:
                continue
            if line.startswith("{"):
                try:
                    targets.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise gr.Error(f"Target line {number} starts like JSON but is not: {error}") from None
            else:
                targets.append(line)
    if not targets:
        raise gr.Error("Enter target examples: one per line (plain text or a JSON record), or upload a file")
    if len(targets) > MAX_TARGETS:
        raise gr.Error(f"{len(targets):,} target examples; this Space accepts at most {MAX_TARGETS:,}")
    return targets


def write_jsonl(rows: list[dict[str, Any]]) -> str:
    """The selection as a JSONL file in a fresh temporary folder; gradio serves it for download."""
    folder = tempfile.mkdtemp(prefix="airrep-selection-")
    path = os.path.join(folder, "selection.jsonl")
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    return path


def select_training_data(
    targets_text: str,
    targets_upload: str | None,
    budget: float,
    strategy: str,
    source: str,
    upload: str | None,
    labels_id: str,
    model_id: str,
) -> tuple[pd.DataFrame, str, str]:
    """The ``budget`` corpus examples that best teach the targets, as a table and a JSONL download.

    Each distinct corpus text is one candidate. The rule is the checkpoint's own
    (``modeling_airrep.select_examples``): ``round-robin`` lets the targets take turns, each taking its
    best example not yet taken (the AirRep authors' rule); the others rank candidates by their max, mean,
    sum or attention-pooled score over the targets.
    """
    targets = parse_targets(targets_text, targets_upload)
    model_id, model = load_model(model_id)
    key, records = load_corpus(source, upload, labels_id)
    texts = corpus_texts(model, records)
    corpus = EMBEDDINGS.get((model_id, key), lambda: model.encode(texts, batch_size=32))
    code = sys.modules[type(model).__module__]  # the checkpoint's modeling_airrep
    if not hasattr(code, "select_examples"):
        raise gr.Error(
            f"The code shipped with {model_id!r} predates data selection; save the checkpoint again "
            "with the current modeling_airrep.py (AirRepModel.from_pretrained(...).save_pretrained(...))"
        )
    candidates = code.distinct_rows(code.text_digests(texts))
    budget = int(budget or 0)
    try:
        code.check_selection(budget, len(candidates), strategy)
    except ValueError as error:
        raise gr.Error(str(error)) from None
    queries = model.encode(example_texts(model, targets, "Target"), batch_size=32)
    chosen = model.select(queries, corpus, budget, strategy, candidates=candidates)
    rows, download = [], []
    for rank, (index, score, target) in enumerate(zip(chosen.rows.tolist(), chosen.scores.tolist(),
                                                      chosen.targets.tolist(), strict=True), start=1):  # fmt: skip
        text = texts[index]
        rows.append({"rank": rank, "score": round(float(score), 4), "index": index, "target": target,
                     "task": str(records[index].get("task", "")) if isinstance(records[index], dict) else "",
                     "text": text if len(text) <= DISPLAY_CHARS else text[:DISPLAY_CHARS] + "…"})  # fmt: skip
        record = records[index] if isinstance(records[index], dict) else {"text": records[index]}
        clash = sorted(set(record) & set(ADDED_COLUMNS))
        if clash:
            raise gr.Error(f"Corpus record {index} already has the field(s) {clash} that a selection adds")
        download.append({**record, "score": float(score), "rank": rank, "target": target})
    table = pd.DataFrame(rows, columns=["rank", "score", "index", "target", "task", "text"])
    status = (f"Model `{model_id}` · {budget:,} of {len(candidates):,} distinct corpus examples selected for "
              f"{len(targets):,} target(s) · strategy `{strategy}`")  # fmt: skip
    return table, write_jsonl(download), status


def corpus_inputs() -> tuple[gr.Radio, gr.File, gr.Textbox]:
    """The corpus choice: the built-in pool, an uploaded file, or a labels dataset's pool."""
    source = gr.Radio(list(SOURCES), value=SOURCES[0], label="Corpus")
    upload = gr.File(label="JSONL, CSV or parquet file", file_types=[".jsonl", ".json", ".csv", ".parquet"],
                     type="filepath")  # fmt: skip
    labels_id = gr.Textbox(label="Labels dataset (folder or Hub id)")
    return source, upload, labels_id


def build_demo() -> gr.Blocks:
    with gr.Blocks(title="AirRep attribution explorer") as demo:
        gr.Markdown(
            "# AirRep attribution explorer\n"
            "Which training examples explain a model's output, and which would teach it a behaviour? AirRep "
            "embeds texts so that the dot product of two embeddings predicts how much training on one "
            "example lowers the loss of the other."
        )
        model_id = gr.Textbox(label="AirRep model (folder or Hub id)", value=MODEL_ID)
        with gr.Tabs():
            with gr.Tab("Attribute an output", id="attribute-tab"):
                gr.Markdown("Paste a prompt and the response to explain. Groups are scored with attention "
                            "pooling (AirRep's) and sum pooling side by side.")  # fmt: skip
                with gr.Row():
                    with gr.Column():
                        prompt = gr.Textbox(label="Prompt", lines=2, elem_id="prompt")
                        response = gr.Textbox(label="Response (the model output to explain)", lines=2,
                                              elem_id="response")  # fmt: skip
                        free_text = gr.Textbox(label="…or free text", lines=2, elem_id="free-text")
                        k = gr.Slider(1, MAX_K, value=10, step=1, label="Top k")
                    with gr.Column():
                        source, upload, labels_id = corpus_inputs()
                        group_task = gr.Textbox(label="Group: all examples of task", elem_id="group-task")
                        group_indices = gr.Textbox(label="Group: row indices (e.g. 3, 17, 42)")
                run = gr.Button("Attribute", variant="primary", elem_id="attribute")
                status = gr.Markdown()
                table = gr.Dataframe(label="Top training examples", elem_id="results", wrap=True)
                plot = gr.BarPlot(x="example", y="score", label="Scores", sort="-y", elem_id="scores-plot")
                group_table = gr.Dataframe(label="Group influence (attention and sum pooling)", elem_id="groups")
            with gr.Tab("Select training data", id="select-tab"):
                gr.Markdown("Paste target examples of the behaviour to teach, one per line (plain text, or a "
                            'JSON record such as `{"prompt": "...", "response": "..."}`), or upload them. '
                            "AirRep picks the corpus examples predicted to lower the targets' loss most.")  # fmt: skip
                with gr.Row():
                    with gr.Column():
                        targets_text = gr.Textbox(label="Target examples, one per line", lines=6,
                                                  elem_id="targets")  # fmt: skip
                        targets_upload = gr.File(label="…or a JSONL, CSV or parquet file of targets",
                                                 file_types=[".jsonl", ".json", ".csv", ".parquet"],
                                                 type="filepath")  # fmt: skip
                        budget = gr.Number(label="Budget (examples to select)", value=20, precision=0,
                                           minimum=1, elem_id="budget")  # fmt: skip
                        strategy = gr.Dropdown(list(STRATEGIES), value=STRATEGIES[0], label="Strategy")
                    with gr.Column():
                        select_source, select_upload, select_labels = corpus_inputs()
                select_run = gr.Button("Select", variant="primary", elem_id="select")
                select_status = gr.Markdown(elem_id="select-status")
                selected = gr.Dataframe(label="Selected training examples", elem_id="selected", wrap=True)
                selection_file = gr.File(label="Download the selection (JSONL)", elem_id="selection-file")
        inputs = [prompt, response, free_text, k, source, upload, labels_id, group_task, group_indices, model_id]
        run.click(attribute, inputs, [table, plot, group_table, status], api_name="attribute")
        select_inputs = [targets_text, targets_upload, budget, strategy, select_source, select_upload, select_labels,
                         model_id]  # fmt: skip
        select_run.click(select_training_data, select_inputs, [selected, selection_file, select_status],
                         api_name="select")  # fmt: skip
    return demo.queue(default_concurrency_limit=CONCURRENCY, max_size=64)


demo = build_demo()

if __name__ == "__main__":
    demo.launch()
