"""Embeddings at scale: a real 2-process torchrun encode equals a 1-process one, a killed encode
resumes with every id exactly once, and the index's top-k matches exact search."""

from pathlib import Path

import numpy as np
import pytest
from datasets import load_dataset
from helpers import kill_when, needs_compiler, spawn

import modeling_airrep
from airrep.cli import UsageError
from airrep.labels.corpus import write_corpus
from airrep.serving.embeddings import encode_corpus
from airrep.serving.index import EmbeddingIndex, recall_at_k
from configuration_airrep import format_text


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("embeddings") / "corpus"
    write_corpus(folder, {"train": 120, "test": 4}, seed=7)
    return folder


@pytest.fixture(scope="module")
def one_process(corpus, saved_folder):
    out = corpus.parent / "one-process"
    summary = encode_corpus(str(saved_folder), str(corpus), out, shard_size=32, batch_size=16, precision="fp32")
    return out, summary


def _table(folder):
    table = load_dataset(str(folder), split="train")
    return table["id"], np.asarray(table["embedding"], dtype=np.float16)


def test_embeddings_dataset_holds_every_row_once_with_the_model_vectors(one_process, corpus, model):
    folder, summary = one_process
    assert summary["rows"] == 120 and summary["shards"] == 4 and summary["dim"] == 384
    ids, vectors = _table(folder)
    records = load_dataset(str(corpus), split="train")
    assert ids == records["id"]
    expected = model.encode([format_text(r) for r in records], batch_size=16)
    np.testing.assert_allclose(vectors.astype(np.float32), expected, atol=2e-3, rtol=2e-3)  # float16 storage


@pytest.mark.slow
def test_two_process_torchrun_encode_equals_one_process(one_process, corpus, saved_folder):
    out = corpus.parent / "two-processes"
    process = spawn(["-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "airrep.serving.embeddings",
                      "--model", str(saved_folder), "--dataset", str(corpus), "--output_dir", str(out),
                      "--shard_size", "32", "--batch_size", "16", "--precision", "fp32"],
                     ACCELERATE_USE_CPU="1")  # fmt: skip
    _, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]
    ids_1, vectors_1 = _table(one_process[0])
    ids_2, vectors_2 = _table(out)
    assert ids_2 == ids_1
    # torchrun gives each process one thread (OMP_NUM_THREADS=1), and a one-thread matrix product
    # blocks its sums differently from a two-thread one: the float32 embeddings differ by rounding, up to
    # 11 float32 unit roundoffs of the largest entry on these texts (measured in one process with
    # torch.set_num_threads 1 and 2). Stored as float16, that flips a number to its neighbour where it
    # sits on a rounding boundary (17 of 46,080 in one run). Allow one float16 spacing plus 64 roundoffs.
    one, two = vectors_1.astype(np.float32), vectors_2.astype(np.float32)
    allowed = np.spacing(np.abs(vectors_1)).astype(np.float32) + 64 * 2.0**-24 * np.abs(one).max()
    assert (np.abs(two - one) <= allowed).all(), np.abs(two - one).max()


@pytest.mark.slow
def test_killed_encode_resumes_without_duplicates_or_gaps(one_process, corpus, saved_folder):
    out = corpus.parent / "killed"
    args = ["-m", "airrep.serving.embeddings", "--model", str(saved_folder), "--dataset", str(corpus), "--output_dir",
            str(out), "--shard_size", "8", "--batch_size", "8", "--precision", "fp32"]  # fmt: skip
    kill_when(spawn(args), lambda: len(list((out / "data").glob("shard-*.parquet"))) >= 2)
    finished = len(list((out / "data").glob("shard-*.parquet")))
    assert 2 <= finished < 15
    encode_corpus(str(saved_folder), str(corpus), out, shard_size=8, batch_size=8, precision="fp32")
    ids, vectors = _table(out)
    reference_ids, reference = _table(one_process[0])
    assert ids == reference_ids  # each id once, in order
    np.testing.assert_allclose(vectors.astype(np.float32), reference.astype(np.float32), atol=2e-3)


def test_other_settings_are_refused(one_process, corpus, saved_folder):
    with pytest.raises(ValueError, match=r"other settings \(they differ in \['shard_size'\]\)"):
        encode_corpus(str(saved_folder), str(corpus), one_process[0], shard_size=50, precision="fp32")
    # The fp32 folder records no precision (as folders made before the option); bf16 is another setting.
    with pytest.raises(ValueError, match=r"other settings \(they differ in \['precision'\]\)"):
        encode_corpus(str(saved_folder), str(corpus), one_process[0], shard_size=32, batch_size=16, precision="bf16")
    with pytest.raises(UsageError, match=r"--precision: precision must be one of .*got 'fp8'"):
        encode_corpus(str(saved_folder), str(corpus), one_process[0], precision="fp8")


@needs_compiler
def test_compiled_encode_writes_the_same_vectors_and_may_resume_an_eager_folder(one_process, corpus, saved_folder,
                                                                                tmp_path):  # fmt: skip
    out = tmp_path / "compiled"
    encode_corpus(str(saved_folder), str(corpus), out, shard_size=32, batch_size=16, precision="fp32", compile=True)
    assert _table(out)[0] == _table(one_process[0])[0]
    # fp32 either way: at most one float16 step apart where the two round across a step boundary.
    np.testing.assert_allclose(_table(out)[1].astype(np.float32), _table(one_process[0])[1].astype(np.float32),
                               rtol=2e-3, atol=1e-4)  # fmt: skip
    # compile changes speed, not precision: it is no setting of the folder.
    encode_corpus(str(saved_folder), str(corpus), one_process[0], shard_size=32, batch_size=16, precision="fp32",
                  compile=True)  # fmt: skip


def test_compile_is_refused_without_a_compiler_or_under_int8(corpus, saved_folder, no_compiler, tmp_path):
    with pytest.raises(UsageError, match=r"^--compile: torch.compile needs a C\+\+ compiler"):
        encode_corpus(str(saved_folder), str(corpus), tmp_path / "a", precision="fp32", compile=True)
    int8 = r"^--compile: torch.compile runs at precision 'fp32', 'bf16' or 'auto', not 'int8'$"
    with pytest.raises(UsageError, match=int8):
        encode_corpus(str(saved_folder), str(corpus), tmp_path / "b", precision="int8", compile=True)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_two_folders_of_one_name_load_their_own_rows(saved_folder, tmp_path):
    # datasets keys its cache for a local folder by the card's configs; equal cards once made the
    # second folder load the first one's rows.
    for n in (6, 9):
        corpus = tmp_path / f"corpus{n}"
        write_corpus(corpus, {"train": n, "test": 2}, seed=n)
        out = tmp_path / str(n) / "embeddings"
        encode_corpus(str(saved_folder), str(corpus), out, shard_size=4, batch_size=4, precision="fp32")
        assert _table(out)[0] == load_dataset(str(corpus), split="train")["id"]
        assert len(_table(out)[0]) == n


@pytest.mark.parametrize("kernels", [True, False], ids=["bf16-kernels", "no-bf16-kernels"])
def test_auto_precision_encodes_in_bf16_where_kernels_exist(corpus, saved_folder, model, monkeypatch, tmp_path,
                                                            kernels):  # fmt: skip
    # Both branches on every machine; without real kernels the bf16 branch is emulated (same numbers).
    monkeypatch.setattr(modeling_airrep, "bf16_available", lambda device=None: kernels)
    summary = encode_corpus(str(saved_folder), str(corpus), tmp_path / "auto", shard_size=64, batch_size=16)
    assert summary.get("precision") == ("bf16" if kernels else None)
    _, vectors = _table(tmp_path / "auto")
    records = load_dataset(str(corpus), split="train")
    texts = [format_text(r) for r in records]
    # Shard by shard, as the job batches them: in bf16 a text's embedding moves with its batch's padding.
    precision = "bf16" if kernels else "fp32"
    expected = np.concatenate([model.encode(texts[i : i + 64], batch_size=16, precision=precision) for i in (0, 64)])
    np.testing.assert_allclose(vectors.astype(np.float32), expected, atol=2e-3, rtol=2e-3)  # float16 storage


def test_index_top_k_matches_exact_search(one_process):
    index = EmbeddingIndex.from_folder(one_process[0])
    corpus = index.embeddings.astype(np.float32)
    queries = corpus[:5] + np.random.default_rng(0).normal(scale=0.01, size=(5, corpus.shape[1])).astype(np.float32)
    brute = np.argsort(-(queries @ corpus.T), axis=1, kind="stable")[:, :10]
    scores, rows = index.top_k(queries, k=10)
    np.testing.assert_array_equal(rows, brute)
    assert (np.diff(scores, axis=1) <= 0).all()
    index.build_faiss("flat")
    assert recall_at_k(index.top_k(queries, k=10)[1], brute) == 1.0
    index.build_faiss("ivf", nlist=4, nprobe=4)  # scanning every list is exact
    assert recall_at_k(index.top_k(queries, k=10)[1], brute) == 1.0
    index.build_faiss("ivf", nlist=8, nprobe=1)
    assert 0 < recall_at_k(index.top_k(queries, k=10)[1], brute) <= 1.0
    with pytest.raises(RuntimeError, match="build_faiss"):
        index.top_k(queries, backend="faiss-flat")
    subsets = [[0, 1, 2], [5, 50, 100]]
    expected = [[(queries[q] @ corpus[s].T).sum() for q in range(5)] for s in subsets]
    np.testing.assert_allclose(index.group_influence(queries, subsets, pooling="sum"), expected, rtol=1e-4)


def test_an_unfinished_folder_is_not_loaded(one_process, tmp_path):
    import shutil

    partial = Path(shutil.copytree(one_process[0], tmp_path / "partial"))
    next((partial / "data").glob("shard-*.parquet")).unlink()
    with pytest.raises(ValueError, match="has 3 of 4 shards"):
        EmbeddingIndex.from_folder(partial)
