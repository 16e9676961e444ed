"""generate_labels.py on the smoke preset: the dataset contract, disjointness, resuming after a real
kill, a 2-process torchrun run, divergence flagging and bad input."""

import copy
import dataclasses
import json
import random
import shutil
from pathlib import Path

import helpers
import numpy as np
import pytest
import torch
from datasets import Dataset, load_dataset
from helpers import kill_when, spawn

from airrep.labels import LabelArguments
from airrep.labels import generate_labels as run
from airrep.labels.subset_training import SFTSettings, finetune, train_and_evaluate, train_and_score
from airrep.labels.target_lm import (
    IGNORE_INDEX,
    SFTExample,
    collate,
    collate_packed,
    pack,
    packed_attention_mask,
    response_losses,
    response_positions,
    selects_logits,
    sft_example,
    takes_packed_rows,
    token_losses,
    train_tokenizer,
)
from airrep.outputs import install_in_offline_cache
from configuration_airrep import RecordFormatError


def load(folder, config):
    return load_dataset(str(folder), config, split="train")


@pytest.fixture(scope="module")
def work(labels):
    """The session's smoke run of each mode (conftest's ``labels``), sharing one corpus and target LM."""
    return labels


def test_three_configs_load_and_match_the_contract(work):
    folder = work / "labels-lds"
    pool, queries, labels = (load(folder, c) for c in ("pool", "queries", "labels"))
    assert {"id", "text", "inputs", "targets", "task"} <= set(pool.column_names)
    assert {"id", "text", "task"} <= set(queries.column_names)
    assert labels.column_names == ["pair_id", "split_id", "subset", "queries", "losses", "seed"]
    assert labels.features["subset"].feature.dtype == "int64"
    assert labels.features["losses"].feature.dtype == "float32"
    assert labels.num_rows == 8 and len(set(labels["pair_id"])) == 8
    for row in labels:
        assert len(row["subset"]) == pool.num_rows // 2 and len(set(row["subset"])) == len(row["subset"])
        assert min(row["subset"]) >= 0 and max(row["subset"]) < pool.num_rows
        assert row["queries"] == list(range(queries.num_rows))
        assert len(row["losses"]) == queries.num_rows and all(np.isfinite(row["losses"]))
    # Subsets differ, so the losses do too: the labels are not constant.
    losses = np.array(labels["losses"])
    assert losses.std(axis=0).min() > 0


def test_loads_from_a_hub_snapshot_copy(work, tmp_path):
    snapshot = install_in_offline_cache(work / "labels-lds", "org/labels", tmp_path, repo_type="dataset")
    assert load(snapshot, "labels")["losses"] == load(work / "labels-lds", "labels")["losses"]


def test_train_mode_subsets_never_hold_their_own_dev_queries(work):
    folder = work / "labels-train"
    queries, labels = load(folder, "queries"), load(folder, "labels")
    pool_index, split_of = np.array(queries["pool_index"]), np.array(queries["split_id"])
    assert len(set(pool_index)) == len(pool_index)  # dev sets of different splits are disjoint
    assert sorted(set(labels["split_id"])) == [0, 1]
    for row in labels:
        own = pool_index[row["queries"]]
        assert set(split_of[row["queries"]]) == {row["split_id"]}
        assert not set(row["subset"]) & set(own.tolist())


def test_lds_queries_are_held_out_from_the_pool(work):
    folder = work / "labels-lds"
    assert not set(load(folder, "queries")["text"]) & set(load(folder, "pool")["text"])
    train_pool_rows = set(load(work / "labels-train", "queries")["pool_index"])
    assert set(load(folder, "pool")["id"]) >= {load(folder, "pool")["id"][i] for i in train_pool_rows}


def test_card_records_the_noise_ceiling_and_settings(work):
    summary = json.loads((work / "labels-lds" / "summary.json").read_text())
    ceiling = summary["noise_ceiling"]
    assert ceiling["subsets"] == 4 and -1 <= ceiling["r"] <= 1
    assert ceiling["sqrt_r"] == pytest.approx(np.sqrt(max(ceiling["r"], 0)))
    card = (work / "labels-lds" / "README.md").read_text()
    assert f"r = {ceiling['r']:.3f}, sqrt(r) = {ceiling['sqrt_r']:.3f}" in card
    assert summary["corpus"]["fingerprint"] in card and "Target LM" in card
    assert load(work / "labels-lds", "noise").num_rows == 4
    assert not (work / "labels-lds" / "shards").exists()


def test_rerun_of_a_complete_folder_does_nothing(work):
    (labels,) = (work / "labels-lds" / "data").glob("labels-*.parquet")
    before = labels.stat().st_mtime_ns
    run(LabelArguments(output_dir=str(work / "labels-lds"), preset="smoke", mode="lds"))
    assert labels.stat().st_mtime_ns == before


def test_a_labels_folder_moved_with_its_parent_finds_its_target_lm_and_resumes(work, tmp_path):
    """The target LM beside the labels is recorded relative to them, so a copy of the parent elsewhere (another
    clone, another machine) loads it and resumes; a folder recorded with an absolute path before that is upgraded."""
    from airrep.evaluation.data import load_eval_data

    moved = tmp_path / "moved"
    for name in ("labels-lds", "target-lm", "corpus"):
        shutil.copytree(work / name, moved / name)
    settings_file = moved / "labels-lds" / "generation_settings.json"
    settings = json.loads(settings_file.read_text())
    assert settings["target_lm"] == "../target-lm"
    assert json.loads((moved / "labels-lds" / "summary.json").read_text())["target_lm"] == "../target-lm"
    assert load_eval_data(str(moved / "labels-lds")).summary["target_lm"] == str(moved / "target-lm")
    # As recorded before: the absolute path of the target LM beside the folder where the labels were made.
    settings_file.write_text(json.dumps(settings | {"target_lm": str(work / "target-lm")}))
    run(LabelArguments(output_dir=str(moved / "labels-lds"), preset="smoke", mode="lds"))
    assert json.loads(settings_file.read_text())["target_lm"] == "../target-lm"
    # An absolute path that names another folder is another target LM, and stays refused.
    settings_file.write_text(json.dumps(settings | {"target_lm": str(work / "another-lm")}))
    with pytest.raises(ValueError, match=r"they differ in \['target_lm'\]"):
        run(LabelArguments(output_dir=str(moved / "labels-lds"), preset="smoke", mode="lds"))


def test_other_settings_are_refused(work):
    with pytest.raises(ValueError, match=r"was made with other settings \(they differ in \['preset'\]\)"):
        run(LabelArguments(output_dir=str(work / "labels-lds"), preset="smoke", mode="lds", learning_rate=0.5))
    # Precision is a setting too: fp32 labels and bf16 ones are not mixed in one folder.
    with pytest.raises(ValueError, match=r"they differ in \['bf16'\]"):
        run(LabelArguments(output_dir=str(work / "labels-lds"), preset="smoke", mode="lds", bf16=True))


def test_a_bf16_preset_runs_bf16_where_the_kernels_exist_unless_told_otherwise(work, monkeypatch):
    from airrep.labels import generation
    from airrep.presets import LABEL_PRESETS

    monkeypatch.setitem(LABEL_PRESETS, "smoke", dataclasses.replace(LABEL_PRESETS["smoke"], bf16=True))
    small = dict(preset="smoke", mode="lds", lds_subsets=2, noise_ceiling=0)

    def precision(name, **flags):
        summary = run(LabelArguments(output_dir=str(work / name), **small, **flags))
        settings = json.loads((work / name / "generation_settings.json").read_text())
        assert settings.get("bf16", False) == summary["settings"]["bf16"]  # the record says what ran
        return summary["precision"]

    monkeypatch.setattr(generation, "bf16_available", lambda: True)
    assert precision("labels-bf16-preset") == "bf16 autocast"
    assert precision("labels-bf16-flag-off", bf16=False) == "fp32"  # the explicit flag wins
    monkeypatch.setattr(generation, "bf16_available", lambda: False)  # a CPU without bf16 kernels
    assert precision("labels-bf16-no-kernels") == "fp32"
    one, two = (load(work / name, "labels")["losses"] for name in ("labels-bf16-preset", "labels-bf16-no-kernels"))
    assert one != two and np.allclose(one, two, atol=0.1)  # autocast ran, and differs by rounding only


def test_lds_subsets_of_a_chosen_size(work):
    folder = work / "labels-lds-quarters"
    run(LabelArguments(output_dir=str(folder), preset="smoke", mode="lds", lds_subsets=3, lds_subset_size=16,
                       noise_ceiling=0))  # fmt: skip
    labels = load(folder, "labels")
    assert [len(set(row)) for row in labels["subset"]] == [16, 16, 16]
    assert "3 random subsets of 16 of the pool" in (folder / "README.md").read_text()
    # The default (half the pool) is recorded as before the option existed, so older folders resume.
    assert "lds_subset_size" not in json.loads((work / "labels-lds" / "generation_settings.json").read_text())["preset"]
    assert json.loads((folder / "generation_settings.json").read_text())["preset"]["lds_subset_size"] == 16
    with pytest.raises(ValueError, match=r"--lds_subset_size must be between 1 and 63 \(the pool's size - 1\), got 64"):
        run(LabelArguments(output_dir=str(work / "labels-lds-whole"), preset="smoke", mode="lds", lds_subset_size=64))


def test_a_preset_may_name_a_pretrained_target_lm(work, monkeypatch):
    from airrep.presets import LABEL_PRESETS

    target = str(work / "target-lm")  # the smoke run's target LM, as any pretrained model folder
    monkeypatch.setitem(LABEL_PRESETS, "smoke", dataclasses.replace(LABEL_PRESETS["smoke"], pretrained_lm=target))
    small = dict(preset="smoke", mode="lds", lds_subsets=2, noise_ceiling=0)
    summary = run(LabelArguments(output_dir=str(work / "labels-preset-lm"), **small))
    assert summary["target_lm"] == "../target-lm" and summary["corpus"].get("warm_start") is None
    with pytest.raises(ValueError, match=f"grows the built-in target LM; it cannot apply to {target}"):
        run(LabelArguments(output_dir=str(work / "labels-preset-lm-x10"), target_lm_scale=10, **small))


def test_cached_frozen_layers_make_the_labels_of_the_whole_model_and_are_recorded(work):
    small = dict(preset="smoke", mode="lds", lds_subsets=2, noise_ceiling=0, lora_rank=2, lora_layers=1, bf16=False)
    whole = run(LabelArguments(output_dir=str(work / "labels-top-layer"), **small))
    cached = run(LabelArguments(output_dir=str(work / "labels-top-layer-cached"), cache_frozen_layers=True, **small))
    assert cached["target_lm_parameters"] == whole["target_lm_parameters"]
    np.testing.assert_allclose(load(work / "labels-top-layer-cached", "labels")["losses"],
                               load(work / "labels-top-layer", "labels")["losses"], rtol=1e-5)  # fmt: skip
    recorded = json.loads((work / "labels-top-layer-cached" / "generation_settings.json").read_text())
    assert recorded["cache_frozen_layers"] is True
    assert "cache_frozen_layers" not in json.loads((work / "labels-top-layer" / "generation_settings.json").read_text())
    with pytest.raises(ValueError, match=r"they differ in \['cache_frozen_layers'\]"):
        run(LabelArguments(output_dir=str(work / "labels-top-layer"), cache_frozen_layers=True, **small))
    with pytest.raises(ValueError, match=r"--cache_frozen_layers needs adapters in the top layers only"):
        run(LabelArguments(output_dir=str(work / "labels-full"), preset="smoke", mode="lds", cache_frozen_layers=True))
    assert not (work / "labels-full").exists()


def test_the_bf16_flag_parses_like_a_bool_flag_and_defaults_to_the_preset():
    from transformers import HfArgumentParser

    parser = HfArgumentParser(LabelArguments)
    for flags, expected in (([], None), (["--bf16"], True), (["--bf16", "False"], False), (["--bf16", "true"], True)):
        (args,) = parser.parse_args_into_dataclasses(args=["--output_dir", "out", *flags])
        assert args.bf16 is expected, flags


def test_diverged_runs_are_flagged_and_excluded(work):
    folder = work / "labels-diverged"
    with pytest.raises(RuntimeError, match="all 8 subset models diverged"):
        run(LabelArguments(output_dir=str(folder), preset="smoke", mode="lds", learning_rate=1e30))
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["diverged"] == 8 and summary["labels"] == 0
    assert not list((folder / "data").glob("labels-*"))
    diverged = load(folder, "diverged")
    assert diverged.num_rows == 8 and not np.isfinite(np.array(diverged["losses"], dtype=float)).all()
    assert "8 diverged (non-finite loss)" in (folder / "README.md").read_text()


@pytest.mark.slow
def test_kill_and_resume_gives_each_pair_exactly_once(work):
    folder = work / "labels-killed"
    flags = ["--preset", "smoke", "--mode", "lds", "--lds_subsets", "120", "--models_per_batch", "1"]
    process = spawn(["generate_labels.py", *flags, "--output_dir", str(folder)])
    kill_when(process, lambda: len(list((folder / "shards").glob("*.json"))) >= 5, timeout=120)
    finished = len(list((folder / "shards").glob("*.json")))
    assert 5 <= finished < 124 and not (folder / "summary.json").exists()
    run(LabelArguments(output_dir=str(folder), preset="smoke", mode="lds", lds_subsets=120, models_per_batch=1))
    labels = load(folder, "labels")
    assert sorted(labels["pair_id"]) == [f"lds-{j:04d}" for j in range(120)]
    assert load(folder, "noise").num_rows == 4


@pytest.mark.slow
def test_two_process_torchrun_equals_one_process(work):
    folder = work / "labels-lds-2proc"
    process = spawn(
        ["-m", "torch.distributed.run", "--nproc_per_node", "2", "generate_labels.py",
         "--preset", "smoke", "--mode", "lds", "--output_dir", str(folder)],
        ACCELERATE_USE_CPU="1",
    )  # fmt: skip
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    one, two = load(work / "labels-lds", "labels"), load(folder, "labels")
    assert one["pair_id"] == two["pair_id"] and one["subset"] == two["subset"]
    np.testing.assert_allclose(np.array(two["losses"]), np.array(one["losses"]), rtol=1e-5)
    np.testing.assert_allclose(
        np.array(load(folder, "noise")["losses"]), np.array(load(work / "labels-lds", "noise")["losses"]), rtol=1e-5
    )


@pytest.fixture(scope="module")
def tiny_target():
    """A 1-layer Llama with a BPE tokenizer trained on the built-in corpus, its pool and queries."""
    return helpers.tiny_target(120, 12, seed=0)


def _subsets(n_models, seed, size=30):
    """``n_models`` random subsets of ``tiny_target``'s 120-example pool."""
    rng = np.random.default_rng(seed)
    return [np.sort(rng.choice(120, size, replace=False)) for _ in range(n_models)]


def test_exact_match_is_what_greedy_generation_gives(tiny_target):
    model, tokenizer, pool, _ = tiny_target
    # Long enough on 16 examples that the model reproduces some of them and not others.
    settings = SFTSettings(epochs=25, learning_rate=1e-2, batch_size=4)
    rows = np.arange(16)
    scores = train_and_evaluate(model, pool, pool, [rows], [rows], [3], settings, tokenizer.pad_token_id)
    trained = copy.deepcopy(model)
    weights = finetune(model, pool, rows, 3, settings, tokenizer.pad_token_id)[-1][0]
    loaded = trained.load_state_dict(weights, strict=False)
    assert not loaded.unexpected_keys and set(loaded.missing_keys) <= {"lm_head.weight"}  # tied to the embeddings
    generated = []
    for row in rows:
        example = pool[row]
        n_prompt = example.labels.count(IGNORE_INDEX)
        response = example.input_ids[n_prompt:]  # ends with the end token
        out = trained.generate(torch.tensor([example.input_ids[:n_prompt]]), max_new_tokens=len(response) + 2,
                               do_sample=False, eos_token_id=tokenizer.eos_token_id,
                               pad_token_id=tokenizer.pad_token_id)[0, n_prompt:].tolist()  # fmt: skip
        generated.append(out[: len(response)] == response)
    assert scores.exact_match[0].tolist() == generated
    assert 0 < sum(generated) < len(rows)  # both outcomes occur
    np.testing.assert_array_equal(
        scores.losses, train_and_score(model, pool, pool, [rows], [rows], [3], settings, tokenizer.pad_token_id)
    )


def test_batched_training_equals_one_model_at_a_time(tiny_target):
    model, tokenizer, pool, queries = tiny_target
    subsets = _subsets(3, seed=0)
    query_sets = [np.arange(12), np.arange(12)[::-1], np.arange(12)]
    settings = SFTSettings(batch_size=8, learning_rate=3e-3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    together = train_and_score(model, pool, queries, subsets, query_sets, [1, 2, 3], settings, tokenizer.pad_token_id)
    alone = np.concatenate(
        [
            train_and_score(model, pool, queries, [s], [q], [seed], settings, tokenizer.pad_token_id)
            for s, q, seed in zip(subsets, query_sets, [1, 2, 3], strict=True)
        ]
    )
    np.testing.assert_allclose(together, alone, rtol=1e-5)
    # Logits at response positions only are the default; every position gives the same models.
    full = dataclasses.replace(settings, response_logits_only=False)
    everywhere = train_and_score(model, pool, queries, subsets, query_sets, [1, 2, 3], full, tokenizer.pad_token_id)
    np.testing.assert_allclose(together, everywhere, rtol=1e-5)
    assert not np.allclose(together[0], together[2])  # different subsets, different models
    for name, tensor in model.state_dict().items():  # the target LM itself is left untouched
        torch.testing.assert_close(tensor, before[name], rtol=0, atol=0)


def test_packing_places_every_example_once_within_capacity():
    examples = [SFTExample([7] * n, [IGNORE_INDEX] * (n - 1) + [3]) for n in (5, 9, 2, 12, 4, 4, 1, 7, 15)]
    rows = pack(examples, 12)
    assert sorted(id(e) for row in rows for e in row) == sorted(id(e) for e in examples)
    # First-fit decreasing: 15 alone (over capacity), 12 alone, 9 + 2 + 1, 7 + 5, 4 + 4.
    assert [[len(e.input_ids) for e in row] for row in rows] == [[15], [12], [9, 2, 1], [7, 5], [4, 4]]
    ids, labels, position_ids = collate_packed(rows[2:4], pad_id=0, length=13, n_rows=3)
    assert position_ids.tolist() == [
        [*range(9), 0, 1, 0, 0],  # examples of 9, 2 and 1 tokens, then one pad: a sequence of its own
        [*range(7), *range(5), 0],
        list(range(13)),  # an added row: all padding
    ]
    assert ids[2].tolist() == [0] * 13 and labels[2].tolist() == [IGNORE_INDEX] * 13
    assert labels[0].tolist() == [IGNORE_INDEX] * 8 + [3] + [IGNORE_INDEX, 3, 3, IGNORE_INDEX]


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_packed_rows_give_each_example_its_own_logits(attention):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    model.set_attn_implementation(attention)
    lengths = (3, 7, 1, 12, 5, 9, 2)
    examples = [SFTExample(torch.randint(2, 50, (n,)).tolist(), [IGNORE_INDEX] * n) for n in lengths]
    rows = pack(examples, 14)
    ids, _, position_ids = collate_packed(rows, pad_id=0, length=16, n_rows=len(rows) + 1)
    mask = packed_attention_mask(model.config, position_ids)
    packed = model(input_ids=ids, position_ids=position_ids, attention_mask=mask).logits
    for r, row in enumerate(rows):
        start = 0
        for example in row:
            end = start + len(example.input_ids)
            alone = model(input_ids=torch.tensor([example.input_ids])).logits[0]
            torch.testing.assert_close(packed[r, start:end], alone, rtol=1e-5, atol=1e-5)
            start = end


def test_packing_is_kept_to_models_with_one_causal_mask():
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    small = dict(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=2)  # fmt: skip
    assert takes_packed_rows(LlamaForCausalLM(LlamaConfig(**small)))
    assert not takes_packed_rows(MistralForCausalLM(MistralConfig(**small, sliding_window=8)))
    # Qwen2 declares a window but uses it only when told to; its layer types say which.
    assert Qwen2Config(**small).layer_types == ["full_attention"] * 2
    windowed = Qwen2Config(**small, use_sliding_window=True, sliding_window=8, max_window_layers=1)
    assert windowed.layer_types == ["full_attention", "sliding_attention"]
    assert takes_packed_rows(Qwen2ForCausalLM(Qwen2Config(**small)))
    assert not takes_packed_rows(Qwen2ForCausalLM(windowed))


def test_packed_training_equals_one_example_per_row(tiny_target):
    model, tokenizer, pool, queries = tiny_target
    subsets, query_sets = _subsets(3, seed=2), [np.arange(12)] * 3
    packed = SFTSettings(batch_size=8, learning_rate=3e-3)
    assert packed.pack_length > 0  # packing is the default
    unpacked = dataclasses.replace(packed, pack_length=0)
    for together in (1, 3):  # the plain forward and the vmapped one
        args = (pool, queries, subsets[:together], query_sets[:together], [1, 2, 3][:together])
        np.testing.assert_allclose(
            train_and_score(model, *args, packed, tokenizer.pad_token_id),
            train_and_score(model, *args, unpacked, tokenizer.pad_token_id),
            rtol=1e-5,
        )


def test_bf16_autocast_differs_from_fp32_by_rounding_only(tiny_target):
    model, tokenizer, pool, queries = tiny_target
    subsets, query_sets = _subsets(2, seed=1), [np.arange(12)] * 2
    settings = SFTSettings(batch_size=8, learning_rate=3e-3)
    fp32 = train_and_score(model, pool, queries, subsets, query_sets, [1, 2], settings, tokenizer.pad_token_id)
    bf16_settings = dataclasses.replace(settings, bf16=True)
    bf16 = train_and_score(model, pool, queries, subsets, query_sets, [1, 2], bf16_settings, tokenizer.pad_token_id)
    assert bf16.dtype == np.float64 and np.isfinite(bf16).all()
    assert not np.array_equal(bf16, fp32)  # autocast really ran
    # bf16 keeps 8 bits of mantissa: losses of a few nats agree to a few hundredths, and the models'
    # ranking of the queries is the same up to near-ties.
    np.testing.assert_allclose(bf16, fp32, atol=0.1)
    for row_bf16, row_fp32 in zip(bf16, fp32, strict=True):
        assert np.corrcoef(row_bf16, row_fp32)[0, 1] > 0.99
    # The models keep fp32 weights, as the optimizer needs.
    checkpoints = finetune(model, pool, subsets[0], 1, bf16_settings, tokenizer.pad_token_id)
    assert all(p.dtype == torch.float32 for p in checkpoints[-1][0].values())


def test_response_positions_reproduce_the_full_response_loss():
    from transformers import LlamaConfig, LlamaForCausalLM

    labels = torch.tensor([[-100, -100, 7, 8, -100], [-100, 5, 6, 9, 4]])  # right-padded; row 0 has 2 pads
    positions, targets = response_positions(labels)
    # Position t predicts token t + 1: row 0 reads positions 1, 2; row 1 reads 0-3. Fill: position 0, ignored.
    assert positions.tolist() == [[1, 2, 0, 0], [0, 1, 2, 3]]
    assert targets.tolist() == [[7, 8, -100, -100], [5, 6, 9, 4]]

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    assert selects_logits(model)
    ids = torch.randint(1, 50, (2, 3, 12))  # (models, examples, length), as subset training stacks them
    labels = torch.full_like(ids, -100)
    for row, (start, end) in enumerate([(4, 12), (2, 6), (10, 12), (1, 3), (7, 11), (3, 12)]):
        labels.view(-1, 12)[row, start:end] = ids.view(-1, 12)[row, start:end]
    positions, targets = response_positions(labels)
    assert positions.shape == (2, 3, 9)  # the longest response
    flat_positions = positions.view(-1, 9)
    kept = model(input_ids=ids.view(-1, 12), logits_to_keep=flat_positions).logits.view(2, 3, 9, -1)
    full = model(input_ids=ids.view(-1, 12)).logits.view(2, 3, 12, -1)
    summed, counts = token_losses(kept, targets)
    expected_summed, expected_counts = response_losses(full, labels)
    torch.testing.assert_close(summed, expected_summed)
    assert counts.tolist() == expected_counts.tolist() == [[8, 4, 2], [2, 4, 9]]
    # And against a loop over tokens, independently of both helpers.
    log_probs = torch.log_softmax(full.float(), -1)
    row_sums = [
        -sum(log_probs[m, e, t - 1, ids[m, e, t]] for t in range(1, 12) if labels[m, e, t] != -100)
        for m in range(2) for e in range(3)
    ]  # fmt: skip
    torch.testing.assert_close(summed.view(-1), torch.stack(row_sums))


def _parquet_corpus(folder: Path, pool: list[dict], test: list[dict]) -> str:
    folder.mkdir(parents=True)
    for split, rows in {"train": pool, "test": test}.items():
        Dataset.from_list(rows).to_parquet(str(folder / f"{split}.parquet"))
    return str(folder)


def _records(n, offset=0):
    return [{"prompt": f"What is {i} plus one?", "response": str(i + 1)} for i in range(offset, offset + n)]


def test_bad_input_is_named(work, tmp_path):
    target = str(work / "target-lm")

    def attempt(pool, test, **overrides):
        corpus = _parquet_corpus(tmp_path / f"corpus{len(list(tmp_path.iterdir()))}", pool, test)
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
        args = dict(preset="smoke", mode="lds", corpus=corpus, target_lm=target, noise_ceiling=0, lds_queries=4)
        run(LabelArguments(output_dir=str(out), **(args | overrides)))

    with pytest.raises(ValueError, match="the pool is empty: --pool_size is 0"):
        run(LabelArguments(output_dir=str(tmp_path / "empty" / "labels"), preset="smoke", mode="lds", pool_size=0))
    with pytest.raises(ValueError, match="subset size 40 exceeds the 16 pool examples left"):
        attempt(_records(20), _records(4, 100), mode="train", n_splits=1, queries_per_split=4, train_subset_size=40)
    with pytest.raises(RecordFormatError, match=r"pool: record 3: field 'response' is empty"):
        attempt([*_records(3), {"prompt": "q", "response": ""}, *_records(4, 10)], _records(4, 100))
    with pytest.raises(ValueError, match=r"test record 1 \(id \?\) is identical to pool record 5"):
        attempt(_records(10), [_records(1, 200)[0], _records(10)[5], *_records(2, 300)])


def test_any_causal_lm_folder_can_be_the_target(work, tmp_path):
    """A GPT-2 folder whose tokenizer has no chat template: prompt + newline, response + eos."""
    from transformers import GPT2Config, GPT2LMHeadModel

    pool = load(work / "labels-lds", "pool")
    tokenizer = train_tokenizer(pool["text"], 400)
    tokenizer.chat_template = None
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=1, n_head=2))
    model.save_pretrained(tmp_path / "gpt2")
    tokenizer.save_pretrained(tmp_path / "gpt2")
    example = sft_example(tokenizer, {"prompt": "Say hi.", "response": "hi"}, 64)
    assert tokenizer.decode(example.input_ids) == "Say hi.\nhi<|eos|>"
    assert tokenizer.decode([t for t in example.labels if t != -100]) == "hi<|eos|>"
    summary = run(
        LabelArguments(
            output_dir=str(work / "labels-gpt2"), preset="smoke", mode="lds", target_lm=str(tmp_path / "gpt2")
        )
    )
    assert summary["labels"] == 8 and summary["target_lm"] == str(tmp_path / "gpt2")
    assert np.isfinite(np.array(load(work / "labels-gpt2", "labels")["losses"])).all()


def test_a_corpus_with_only_train_and_test_files_warm_starts_the_target_lm_on_a_held_out_share(tmp_path):
    """Most corpora have no 'pretrain' split: a seeded share of 'train' warm-starts the built-in target
    LM and leaves the pool (it used to divide by zero in the warm start)."""
    from airrep.labels.generation import hold_out_warm_start

    corpus = tmp_path / "my-corpus"
    corpus.mkdir()
    train, test = _records(80), _records(20, 1000)
    for name, rows in (("train", train), ("test", test)):
        (corpus / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = run(LabelArguments(output_dir=str(tmp_path / "labels-lds"), preset="smoke", mode="lds",
                                 corpus=str(corpus), noise_ceiling=0))  # fmt: skip
    assert summary["pool"] == 60 and summary["labels"] == 8 and summary["corpus"]["held_out_of_pool"] == 20
    lds_summary = summary
    assert summary["corpus"]["warm_start"].startswith("20 of the corpus's 80 'train' records (share 0.25")
    card = (tmp_path / "labels-lds" / "README.md").read_text()
    assert "warm-started on 20 of the corpus's 80 'train' records" in card
    assert "warm-started on 20 `pretrain` records" in (tmp_path / "target-lm" / "README.md").read_text()
    pool = load(tmp_path / "labels-lds", "pool")
    # The pool is 'train' less the warm-start draw, in the corpus's order.
    records, _ = hold_out_warm_start({"train": train, "test": test}, 0.25, summary["settings"]["corpus_seed"])
    assert pool["prompt"] == [r["prompt"] for r in records["train"]]
    assert not set(pool["prompt"]) & {r["prompt"] for r in records["pretrain"]}
    assert np.isfinite(np.array(load(tmp_path / "labels-lds", "labels")["losses"])).all()

    # The train labels of the same corpus reuse its target LM; another corpus in the same folder may not.
    summary = run(LabelArguments(output_dir=str(tmp_path / "labels-train"), preset="smoke", mode="train",
                                 corpus=str(corpus), noise_ceiling=0))  # fmt: skip
    assert summary["pool"] == 60 and summary["corpus"]["warm_start"] == lds_summary["corpus"]["warm_start"]
    other = tmp_path / "other-corpus"
    other.mkdir()
    for name, rows in (("train", _records(80, 500)), ("test", test)):
        (other / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=r"target-lm holds a target LM built from other data \(fingerprint "):
        run(LabelArguments(output_dir=str(tmp_path / "labels-other"), preset="smoke", mode="lds", corpus=str(other)))

    same, line = hold_out_warm_start({"train": train, "test": test, "pretrain": train[:3]}, 0.25, 0)
    assert same["train"] == train and line == "the corpus's 'pretrain' split (3 records)"
    none, line = hold_out_warm_start({"train": train, "test": test}, 0.0, 0)
    assert none["train"] == train and none["pretrain"] == [] and line.startswith("none:")
    with pytest.raises(ValueError, match=r"--warm_start_share must be in \[0, 1\), got 1.5"):
        hold_out_warm_start({"train": train, "test": test}, 1.5, 0)


@pytest.mark.skipif(
    not Path("/usr/share/dictd/foldoc.index").exists(), reason="the real-text corpus's Debian packages are missing"
)
def test_the_builtin_realtext_corpus_gets_labels_and_a_target_lm_of_its_own(work):
    """`--corpus builtin:realtext` builds the real-text corpus beside the labels and warm-starts a target LM on
    its 'pretrain' split in a folder of its own, so the synthetic corpus's target LM next to it is untouched."""
    before = (work / "target-lm" / "target_lm_spec.json").read_text()
    summary = run(LabelArguments(output_dir=str(work / "labels-realtext"), preset="smoke", mode="lds",
                                 corpus="builtin:realtext", noise_ceiling=0))  # fmt: skip
    assert summary["corpus"]["name"] == "airrep-realtext" and summary["labels"] == 8
    assert summary["target_lm"] == "../target-lm-realtext"
    assert (work / "target-lm" / "target_lm_spec.json").read_text() == before
    pool = load(work / "labels-realtext", "pool")
    corpus = load_dataset(str(work / "corpus-realtext"))
    assert pool["inputs"] == corpus["train"]["inputs"] and pool["source"] == corpus["train"]["source"]
    assert np.isfinite(np.array(load(work / "labels-realtext", "labels")["losses"])).all()
    with pytest.raises(ValueError, match=r"unknown corpus 'builtin:nope'; the built-in ones are builtin:synthetic, "):
        run(LabelArguments(output_dir=str(work / "labels-nope"), preset="smoke", corpus="builtin:nope"))


def test_the_release_fine_tuning_equals_a_plain_loop_with_torch_clipping(tiny_target):
    """Constant learning rate, weight decay and per-model gradient clipping, two models stacked, against one
    plain PyTorch loop per model with ``clip_grad_norm_``."""
    model, tokenizer, pool, queries = tiny_target
    settings = SFTSettings(epochs=2, batch_size=8, learning_rate=3e-3, weight_decay=0.01, lr_schedule="constant",
                           max_grad_norm=0.5, pack_length=0, response_logits_only=False)  # fmt: skip
    subsets, seeds = _subsets(2, seed=4, size=24), [3, 4]
    stacked = train_and_score(model, pool, queries, subsets, [np.arange(12)] * 2, seeds, settings,
                              tokenizer.pad_token_id)  # fmt: skip
    clipped = []
    for subset, seed in zip(subsets, seeds, strict=True):
        plain = copy.deepcopy(model).eval()
        optimizer = torch.optim.AdamW(plain.parameters(), lr=3e-3, weight_decay=0.01)
        rng, norms = random.Random(seed), []
        for _ in range(2):
            order = [int(i) for i in subset]
            rng.shuffle(order)
            for begin in range(0, len(order), 8):
                ids, labels = collate([pool[i] for i in order[begin : begin + 8]], tokenizer.pad_token_id)
                summed, counts = response_losses(plain(input_ids=ids).logits, labels)
                (summed.sum() / counts.sum()).backward()
                norms.append(float(torch.nn.utils.clip_grad_norm_(plain.parameters(), 0.5)))
                optimizer.step()
                optimizer.zero_grad()
        clipped.append(np.mean(np.array(norms) > 0.5))
        with torch.no_grad():
            ids, labels = collate(queries, tokenizer.pad_token_id)
            summed, counts = response_losses(plain(input_ids=ids).logits, labels)
        np.testing.assert_allclose(stacked[len(clipped) - 1], (summed / counts).double().numpy(), rtol=1e-4)
    assert min(clipped) > 0  # the clipping did act


def test_the_release_prompt_template_right_truncation_and_empty_response_loss(tiny_target):
    model, tokenizer, pool, _ = tiny_target
    record = {"prompt": "word " * 300, "response": "the answer"}
    release = SFTSettings(prompt_template="Question: {prompt}\nAnswer:", truncation="right", max_tokens=24,
                          empty_response_loss=10.0)  # fmt: skip
    example = release.tokenize(tokenizer, record, model)
    assert len(example.input_ids) == 24 and set(example.labels) == {IGNORE_INDEX}  # the cut took the response
    text = tokenizer.decode(release.tokenize(tokenizer, {"prompt": "Add 2 and 3.", "response": "5"}, model).input_ids)
    assert "<|user|>Question: Add 2 and 3.\nAnswer:\n<|assistant|>5" in text  # the user turn, through the template
    ours = SFTSettings(max_tokens=24).tokenize(tokenizer, record, model)
    assert len(ours.input_ids) == 24 and ours.labels[-1] != IGNORE_INDEX  # the prompt gives way, not the response
    queries = [example, pool[0]]
    for settings, first in ((release, 10.0), (dataclasses.replace(release, empty_response_loss=None), None)):
        losses = train_and_score(model, pool, queries, [np.arange(8)], [np.arange(2)], [0], settings,
                                 tokenizer.pad_token_id)[0]  # fmt: skip
        assert (np.isnan(losses[0]) if first is None else losses[0] == first) and np.isfinite(losses[1])
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        SFTSettings(lr_schedule="cosine")


def test_the_paper_label_preset_is_the_authors_release():
    from airrep.presets import LABEL_PRESETS

    paper = LABEL_PRESETS["paper"]
    release = {"n_splits": 100, "queries_per_split": 10000, "subsets_per_split": 100, "train_subset_size": 1000,
               "epochs": 2, "batch_size": 16, "learning_rate": 2e-5, "weight_decay": 0.01, "lr_schedule": "constant",
               "max_grad_norm": 1.0, "prompt_template": "Question: {prompt}\nAnswer:", "truncation": "right",
               "max_tokens": 512, "empty_response_loss": 10.0}  # fmt: skip
    assert {k: getattr(paper, k) for k in release} == release
