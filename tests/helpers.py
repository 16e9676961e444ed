"""What several test modules share: running the repository's command lines in a fresh process,
killing one mid-run to check that it resumes, and marking tests that need a C++ compiler."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from modeling_airrep import compile_available

REPO = Path(__file__).resolve().parents[1]

# The compiled branch of encode runs where the machine has a C++ compiler; the branch without one runs
# everywhere, through conftest's `no_compiler` fixture.
needs_compiler = pytest.mark.skipif(not compile_available(), reason="no C++ compiler for torch.compile's inductor")


def _env(extra: dict[str, str]) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), **extra}


def spawn(args: list[str], **env: str) -> subprocess.Popen:
    """``python ARGS`` started from the repository root, stderr kept for the failure message."""
    return subprocess.Popen([sys.executable, *args], cwd=REPO, env=_env(env), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def run(args: list[str], timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    """``python ARGS`` from the repository root, to the end; stdout and stderr captured as text."""
    return subprocess.run([sys.executable, *args], cwd=REPO, env=_env(env), capture_output=True, text=True,
                          check=False, timeout=timeout)  # fmt: skip


def kill_when(process: subprocess.Popen, ready: Callable[[], bool], timeout: float = 300) -> None:
    """SIGKILL ``process`` (no chance to clean up) as soon as ``ready()`` holds; fail if it ends first."""
    deadline = time.time() + timeout
    while time.time() < deadline and not ready():
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.05)
    assert ready(), f"not ready after {timeout} s"
    process.send_signal(signal.SIGKILL)
    process.wait()


def tiny_target(n_train: int, n_test: int, seed: int, layers: int = 1) -> tuple:
    """A tiny Llama (hidden 32, eager attention) with a 400-token BPE tokenizer trained on the built-in
    corpus, and SFT examples of a pool and queries drawn from it: ``(model, tokenizer, pool, queries)``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from airrep.labels.corpus import generate_split_records
    from airrep.labels.target_lm import sft_example, train_tokenizer
    from configuration_airrep import format_text

    records = generate_split_records({"train": n_train, "test": n_test}, seed=seed)
    tokenizer = train_tokenizer([format_text(r) for r in records["train"]], 400)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    model = LlamaForCausalLM(config)
    model.set_attn_implementation("eager")
    pool = [sft_example(tokenizer, r, 64) for r in records["train"]]
    queries = [sft_example(tokenizer, r, 64) for r in records["test"]]
    return model, tokenizer, pool, queries
