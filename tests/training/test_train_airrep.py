"""train_airrep.py on the smoke preset: training, resuming, a 2-process run, and labels that break the contract."""

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import load_dataset
from helpers import run as run_command
from huggingface_hub import ModelCard

from airrep.cli import UsageError
from airrep.labels import LabelArguments
from airrep.labels import generate_labels as run
from airrep.labels.dataset import LabelsFormatError, load_labels
from airrep.outputs import configs_yaml, write_parquet
from airrep.serving.validate import validate
from airrep.training import parse_arguments, train_airrep
from airrep.training.data import sample_rows
from modeling_airrep import AirRepModel


def main(argv: list[str]) -> Path:
    """What train_airrep.py does with ``argv``, in this process."""
    return train_airrep(*parse_arguments(argv))


@pytest.fixture(scope="module")
def labels(tmp_path_factory):
    folder = tmp_path_factory.mktemp("train") / "labels-train"
    run(LabelArguments(output_dir=str(folder), preset="smoke", mode="train", noise_ceiling=0))
    return folder


@pytest.fixture(scope="module")
def trained(labels):
    output = labels.parent / "model"
    main(["--preset", "smoke", "--labels", str(labels), "--output_dir", str(output)])
    return output


def test_smoke_training_lowers_the_loss_and_saves_a_checkpoint(trained, labels):
    record = json.loads((trained / "airrep_training.json").read_text())
    losses = [entry["loss"] for entry in record["log_history"] if "loss" in entry]
    assert len(losses) >= 4 and np.mean(losses[-2:]) < losses[0]
    assert set(record["validation"]) == {"validation_lds_attention", "validation_lds_sum"}
    assert record["held_out_splits"] == [0] or record["held_out_splits"] == [1]
    model = AirRepModel.from_pretrained(trained)
    assert model.encode(["a text"]).shape == (1, 384)
    assert not (trained / ".initial-model").exists()
    card = ModelCard.load(trained / "README.md").data
    # A local labels folder is named in the card's text; only a Hub id belongs in its `datasets` metadata.
    assert card.base_model == "sentence-transformers/all-MiniLM-L6-v2" and card.datasets is None
    names = {result.metric_name for result in card.eval_results}
    assert names == {"LDS (attention pooling)", "LDS (sum pooling)"}
    text = (trained / "README.md").read_text()
    assert '"weighting": "paper", "t_min": 0.1, "t_max": 5.0, "pooling": "attention", "mini_batch_size": 16' in text
    assert "R = 4" in text and "2505.18513" in text and str(labels) in text
    assert validate("model", trained) == []  # ready for hf upload as it is


def test_a_rerun_resumes_from_the_last_checkpoint(labels, caplog):
    output = labels.parent / "model-resume"
    flags = ["--labels", str(labels), "--output_dir", str(output), "--train_steps", "4", "--eval_steps", "2"]
    main(flags)
    assert sorted(p.name for p in output.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    shutil.rmtree(output / "checkpoint-4")  # as if the run had been killed after step 3
    with caplog.at_level(logging.INFO):
        main(flags)
    assert f"Resuming from {output / 'checkpoint-2'}" in caplog.text
    history = json.loads((output / "airrep_training.json").read_text())["log_history"]
    assert max(e["step"] for e in history) == 4 and (output / "checkpoint-4").exists()


def test_training_changes_the_encoder(trained):
    untrained = AirRepModel.from_encoder()
    reloaded = AirRepModel.from_pretrained(trained)
    texts = ["Question: What is 3 plus 4?\nAnswer: 7", "Paris is in France."]
    assert not np.allclose(untrained.encode(texts), reloaded.encode(texts), atol=1e-3)


@pytest.mark.slow
def test_two_process_torchrun_trains_and_its_result_loads(labels):
    output = labels.parent / "model-ddp"
    result = run_command(
        ["-m", "torch.distributed.run", "--nproc_per_node", "2", "train_airrep.py",
         "--preset", "smoke", "--labels", str(labels), "--output_dir", str(output),
         "--train_steps", "4", "--eval_steps", "2", "--logging_steps", "1"],
        ACCELERATE_USE_CPU="1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((output / "airrep_training.json").read_text())
    assert [e["epoch"] for e in record["log_history"] if "loss" in e] == [0.5, 1.0]  # 2 rows per process
    assert AirRepModel.from_pretrained(output).encode("x").shape == (384,)


@pytest.mark.slow
def test_a_sampled_backward_refuses_several_processes(labels):
    # Each process would replay its own number of mini-batches, and DDP needs the same count in all.
    result = run_command(
        ["-m", "torch.distributed.run", "--nproc_per_node", "2", "train_airrep.py",
         "--preset", "smoke", "--labels", str(labels), "--output_dir", str(labels.parent / "model-ddp-sampled"),
         "--backward_fraction", "0.5", "--dropout", "0"],
        ACCELERATE_USE_CPU="1",
    )  # fmt: skip
    assert result.returncode != 0
    assert "--backward_fraction below 1 trains in one process only" in result.stderr


def test_rows_favour_the_least_seen(labels):
    data = load_labels(str(labels))
    rows = sample_rows(data, [0, 1], queries_per_row=3, subsets_per_row=2, n_rows=16, seed=0)
    for split in (0, 1):
        picked = [r for r in rows if r["split_id"] == split]
        query_counts = np.bincount(np.concatenate([r["query_columns"] for r in picked]), minlength=8)
        subset_counts = np.bincount(np.concatenate([r["subset_rows"] for r in picked]), minlength=4)
        assert query_counts.max() - query_counts.min() <= 1 and subset_counts.max() - subset_counts.min() <= 1


def _rewrite(labels: Path, target: Path, edit=None, drop_config=None) -> str:
    shutil.copytree(labels, target)
    configs = {}
    for name in ("pool", "queries", "labels"):
        if name == drop_config:
            continue
        table = load_dataset(str(labels), name, split="train")
        if name == "labels" and edit is not None:
            table = edit(table)
        configs[name] = {"train": write_parquet(table, target, name)}
    (target / "README.md").write_text(f"---\n{configs_yaml(configs)}\n---\n")
    return str(target)


def test_bad_labels_fail_before_training(labels, tmp_path, caplog):
    with pytest.raises(LabelsFormatError, match="has no config 'labels'"):
        load_labels(_rewrite(labels, tmp_path / "a", drop_config="labels"))

    def out_of_range(table):
        return table.map(lambda row, i: {"subset": [10_000, *row["subset"][1:]]} if i == 3 else {}, with_indices=True)

    with pytest.raises(LabelsFormatError, match=r"labels row 'train-000-0003'.*subset index 10000 is out of range"):
        load_labels(_rewrite(labels, tmp_path / "b", edit=out_of_range))

    def one_subset_in_split_1(table):
        return table.filter(lambda row: row["split_id"] == 0 or row["pair_id"].endswith("0000"))

    with pytest.raises(LabelsFormatError, match="split 1 has 1 subset"):
        main(
            [
                "--labels",
                _rewrite(labels, tmp_path / "c", edit=one_subset_in_split_1),
                "--output_dir",
                str(tmp_path / "m"),
            ]
        )
    assert not (tmp_path / "m").exists()

    def without_columns(table):
        return table.remove_columns(["losses"])

    with pytest.raises(LabelsFormatError, match=r"config 'labels' lacks the column\(s\) \['losses'\]"):
        load_labels(_rewrite(labels, tmp_path / "d", edit=without_columns))

    def nan_losses(table):
        return table.map(
            lambda row, i: {"losses": [float("nan")] * 3 + row["losses"][3:]} if i < 2 else {}, with_indices=True
        )

    with caplog.at_level(logging.WARNING):
        data = load_labels(_rewrite(labels, tmp_path / "e", edit=nan_losses))
    assert data.excluded_nan == 6 and "6 non-finite loss value(s) excluded" in caplog.text
    assert np.isnan(data.splits[0].targets).sum() == 6


def _text_column(batch: dict) -> dict:
    """The collator's one text column (``sentence_0_*``), as the model's features."""
    return {k.removeprefix("sentence_0_"): v for k, v in batch.items() if k.startswith("sentence_0_")}


def test_cached_frozen_layers_feed_the_same_embeddings_as_token_ids(labels, saved_folder):
    from sentence_transformers import SentenceTransformer

    from airrep.training.data import AirRepDataCollator, FrozenLayerCache

    data = load_labels(str(labels))
    model = SentenceTransformer(str(saved_folder), trust_remote_code=True).eval()
    model[0].auto_model.config.frozen_layers = 4
    cache = FrozenLayerCache(model, data, 4, batch_size=7)  # batches of mixed lengths: padding must not leak
    row = sample_rows(data, sorted(data.splits), 3, 2, 1, seed=0)[0]
    cached = AirRepDataCollator(model.preprocess, data, cache=cache)([row])
    tokens = AirRepDataCollator(model.preprocess, data)([row])
    assert "sentence_0_layer_inputs" in cached and "sentence_0_input_ids" not in cached
    assert torch.equal(cached["label"]["members"], tokens["label"]["members"])

    def embed(batch):
        return model(_text_column(batch))

    with torch.no_grad():
        torch.testing.assert_close(embed(cached)["sentence_embedding"], embed(tokens)["sentence_embedding"],
                                   atol=1e-5, rtol=1e-5)  # fmt: skip


def test_a_step_column_runs_longest_first_and_the_loss_ignores_the_order(labels, saved_folder):
    from sentence_transformers import SentenceTransformer

    from airrep.training.data import AirRepDataCollator
    from airrep.training.ranking_loss import AirRepRankingLoss

    data = load_labels(str(labels))
    model = SentenceTransformer(str(saved_folder), trust_remote_code=True).eval()
    row = sample_rows(data, sorted(data.splits), 4, 3, 1, seed=0)[0]
    by_length = AirRepDataCollator(model.preprocess, data)([row])
    as_listed = AirRepDataCollator(model.preprocess, data, sort_by_length=False)([row])
    lengths = by_length["sentence_0_attention_mask"].sum(dim=1)
    listed_lengths = as_listed["sentence_0_attention_mask"].sum(dim=1)
    assert torch.all(lengths[:-1] >= lengths[1:])
    assert not torch.all(listed_lengths[:-1] >= listed_lengths[1:])  # else the comparison shows nothing
    assert torch.equal(lengths.sort().values, listed_lengths.sort().values)

    def text_at(batch, position):
        ids = batch["sentence_0_input_ids"][position]
        return ids[batch["sentence_0_attention_mask"][position].bool()].tolist()

    # Every query and subset member names the same text in both columns.
    for key in ("queries", "members"):
        for a, b in zip(
            by_length["label"][key].flatten().tolist(), as_listed["label"][key].flatten().tolist(), strict=True
        ):
            assert (a < 0) == (b < 0)
            if a >= 0:
                assert text_at(by_length, a) == text_at(as_listed, b)
    torch.testing.assert_close(by_length["label"]["targets"], as_listed["label"]["targets"])

    loss = AirRepRankingLoss(model, mini_batch_size=3)  # mini-batches of mixed lengths in the listed order

    def value(batch):
        with torch.no_grad():
            return loss([_text_column(batch)], batch["label"])

    torch.testing.assert_close(value(by_length), value(as_listed), atol=1e-5, rtol=1e-5)


def test_training_over_frozen_layers_changes_only_the_layers_above(labels, saved_folder):
    output = labels.parent / "model-frozen"
    main(["--preset", "smoke", "--labels", str(labels), "--output_dir", str(output), "--frozen_layers", "5"])
    before, after = AirRepModel.from_pretrained(saved_folder), AirRepModel.from_pretrained(output)
    assert after.config.frozen_layers == 5
    changed = {name for name, p in after.state_dict().items() if not torch.equal(p, before.state_dict()[name])}
    assert changed and all(name.startswith(("bert.encoder.layer.5.", "projector.")) for name in changed)
    assert any(name.startswith("bert.encoder.layer.5.") for name in changed)
    record = json.loads((output / "airrep_training.json").read_text())
    assert record["preset"]["frozen_layers"] == 5


def test_a_bf16_preset_trains_under_autocast_unless_told_otherwise(labels, saved_folder, monkeypatch):
    import dataclasses

    from airrep.presets import TRAIN_PRESETS
    from airrep.training import trainer

    monkeypatch.setitem(TRAIN_PRESETS, "smoke", dataclasses.replace(TRAIN_PRESETS["smoke"], bf16=True))
    # The branch of a CPU with bf16 kernels, on any machine: without them autocast emulates bf16 (slowly)
    # but rounds the same way. The next test takes the other branch.
    monkeypatch.setattr(trainer, "bf16_available", lambda: True)
    flags = ["--preset", "smoke", "--labels", str(labels), "--frozen_layers", "5", "--train_steps", "2"]
    main([*flags, "--output_dir", str(labels.parent / "model-bf16")])
    main([*flags, "--output_dir", str(labels.parent / "model-fp32"), "--bf16", "False"])  # the flag wins
    runs = {}
    for name in ("bf16", "fp32"):
        folder = labels.parent / f"model-{name}"
        assert json.loads((folder / "airrep_training.json").read_text())["preset"]["bf16"] == (name == "bf16")
        runs[name] = AirRepModel.from_pretrained(folder).state_dict()
    assert all(p.dtype == torch.float32 for p in runs["bf16"].values())  # autocast keeps fp32 weights
    before = AirRepModel.from_pretrained(saved_folder).state_dict()
    top = [name for name in before if name.startswith("bert.encoder.layer.5.")]
    updates = {name: torch.cat([(run[n] - before[n]).flatten() for n in top]) for name, run in runs.items()}
    assert not torch.equal(updates["bf16"], updates["fp32"])  # autocast really ran
    # The same two steps, apart by bf16 rounding only.
    cosine = torch.nn.functional.cosine_similarity(updates["bf16"], updates["fp32"], dim=0)
    assert cosine > 0.99


def test_without_bf16_kernels_a_bf16_preset_trains_its_fp32_fallback_and_the_demo_reuses_it(
    labels, saved_folder, monkeypatch, caplog
):
    import dataclasses

    import airrep.demo
    from airrep.presets import TRAIN_PRESETS
    from airrep.training import trainer

    smoke = TRAIN_PRESETS["smoke"]
    fallback = dataclasses.replace(smoke, train_steps=2, frozen_layers=4, learning_rate=3e-4, dropout=0.0)
    preset = dataclasses.replace(smoke, bf16=True, train_steps=3, frozen_layers=5, fp32_fallback=fallback)
    monkeypatch.setitem(TRAIN_PRESETS, "smoke", preset)
    monkeypatch.setattr(trainer, "bf16_available", lambda: False)  # a CPU without bf16 kernels
    monkeypatch.setattr(airrep.demo, "bf16_available", lambda: False)
    output = labels.parent / "model-no-bf16"
    with caplog.at_level(logging.WARNING, logger="airrep.training.trainer"):
        main(["--preset", "smoke", "--labels", str(labels), "--output_dir", str(output)])
    assert (
        "trains its fp32 fallback, which differs in dropout=0.0, frozen_layers=4, learning_rate=0.0003" in caplog.text
    )
    record = json.loads((output / "airrep_training.json").read_text())
    assert record["preset"] == {**dataclasses.asdict(fallback), "bf16": False}
    assert max(entry["step"] for entry in record["log_history"]) == 2
    assert (
        record["log_history"][0]["learning_rate"] > 0
        and max(e.get("learning_rate", 0) for e in record["log_history"]) <= 3e-4
    )
    trained = AirRepModel.from_pretrained(output)
    assert (trained.config.frozen_layers, trained.config.hidden_dropout_prob) == (4, 0.0)
    before = AirRepModel.from_pretrained(saved_folder).state_dict()
    changed = {name for name, p in trained.state_dict().items() if not torch.equal(p, before[name])}
    assert any(name.startswith("bert.encoder.layer.4.") for name in changed)
    assert not any(name.startswith("bert.encoder.layer.3.") for name in changed)
    folders = {"model": output, "report": labels.parent / "report"}
    airrep.demo._check_training_preset(folders, "smoke")  # what this machine trains: reused on a rerun
    monkeypatch.setattr(airrep.demo, "bf16_available", lambda: True)  # a machine that would train the bf16 preset
    with pytest.raises(ValueError, match=r"differ in \['bf16', 'dropout', 'fp32_fallback', 'frozen_layers', "):
        airrep.demo._check_training_preset(folders, "smoke")


def test_set_dropout_switches_every_dropout_and_records_it(model):
    import copy

    from airrep.training.data import set_dropout

    airrep = copy.deepcopy(model).train()
    batch = dict(
        airrep.tokenizer(["a text long enough for dropout to show", "another"], padding=True, return_tensors="pt")
    )

    def twice():
        with torch.no_grad():
            return airrep(**batch).sentence_embedding, airrep(**batch).sentence_embedding

    one, two = twice()
    assert not torch.equal(one, two)  # MiniLM's own dropout, 0.1
    set_dropout(airrep, 0.0)
    one, two = twice()
    torch.testing.assert_close(one, two, rtol=0, atol=0)
    assert airrep.config.hidden_dropout_prob == airrep.config.attention_probs_dropout_prob == 0.0
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\), got 1.0"):
        set_dropout(airrep, 1.0)


def test_validation_comparison_is_paired_on_the_same_queries(trained, labels, capsys):
    from airrep.evaluation.compare_validation import UNTRAINED, compare, held_out_splits
    from airrep.evaluation.compare_validation import main as compare_main
    from airrep.training.lds_evaluator import LDSEvaluator

    splits = held_out_splits([UNTRAINED, str(trained)])
    assert splits == json.loads((trained / "airrep_training.json").read_text())["held_out_splits"]
    result = compare(str(labels), [UNTRAINED, str(trained)], str(trained), splits, n_resamples=200)
    evaluator = LDSEvaluator(load_labels(str(labels)), splits)
    for name, model in ((UNTRAINED, AirRepModel.from_encoder()), (str(trained), AirRepModel.from_pretrained(trained))):
        values = evaluator.per_query(model.eval())
        for pooling, v in values.items():
            entry = result["models"][name][pooling]
            assert entry["lds"] == pytest.approx(v.mean())
    own = result["models"][str(trained)]["attention"]
    assert own["difference"] == 0 and own["difference_ci"] == [0, 0]
    other = result["models"][UNTRAINED]["attention"]
    assert other["difference"] == pytest.approx(other["lds"] - own["lds"])
    assert other["difference_ci"][0] <= other["difference"] <= other["difference_ci"][1]
    compare_main(["--labels", str(labels), "--models", UNTRAINED, str(trained), "--n_resamples", "50"])
    assert "| untrained |" in capsys.readouterr().out


def test_validation_comparison_refuses_mismatched_inputs(trained, labels, tmp_path):
    from airrep.evaluation.compare_validation import UNTRAINED, compare, held_out_splits

    other = tmp_path / "other"
    shutil.copytree(trained, other)
    record = json.loads((other / "airrep_training.json").read_text())
    record["held_out_splits"] = [99]
    (other / "airrep_training.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="different splits"):
        held_out_splits([str(trained), str(other)])
    with pytest.raises(ValueError, match=r"no split\(s\) \[99\]"):
        compare(str(labels), [UNTRAINED], UNTRAINED, [99])
    with pytest.raises(ValueError, match="not among --models"):
        compare(str(labels), [UNTRAINED], str(trained), [0])


def test_more_queries_or_subsets_per_step_than_a_split_holds_is_an_error(labels, tmp_path):
    # The smoke labels hold 8 queries and 4 subsets per split; the paper preset's R = 1,000 was capped silently.
    for flag, value in (("--queries_per_step", "9"), ("--subsets_per_step", "5")):
        with pytest.raises(UsageError, match=r"split \d holds 8 queries and 4 subsets, but a step .* takes R = "):
            main(["--preset", "smoke", "--labels", str(labels), "--output_dir", str(tmp_path / "m"), flag, value])
    assert not (tmp_path / "m").exists()


def test_the_release_recipe_reaches_the_trainer_and_the_card(labels, tmp_path):
    output = tmp_path / "release"
    main(["--preset", "smoke", "--labels", str(labels), "--output_dir", str(output), "--max_steps", "2",
          "--weighting", "reference", "--projector_init", "random", "--dropout", "0", "--weight_decay", "0.01",
          "--lr_scheduler_type", "constant_with_warmup"])  # fmt: skip
    record = json.loads((output / "airrep_training.json").read_text())
    assert record["preset"]["weighting"] == "reference" and record["preset"]["projector_init"] == "random"
    checkpoint = json.loads(next(output.glob("checkpoint-*/trainer_state.json")).read_text())
    rates = [entry["learning_rate"] for entry in checkpoint["log_history"] if "learning_rate" in entry]
    assert rates and len(set(rates)) == 1  # constant: the smoke preset's 2 warmup steps are done by then
    text = (output / "README.md").read_text()
    assert "constant_with_warmup" in text and "weight decay 0.01" in text and "projector started as random" in text
    assert '"weighting": "reference"' in text


def test_a_sampled_backward_trains_only_without_dropout(labels, tmp_path):
    with pytest.raises(UsageError, match=r"--backward_fraction below 1 .* needs --dropout 0"):
        main(["--preset", "smoke", "--labels", str(labels), "--output_dir", str(tmp_path / "m"),
              "--backward_fraction", "0.5"])  # fmt: skip
    output = tmp_path / "sampled"
    main(["--preset", "smoke", "--labels", str(labels), "--output_dir", str(output), "--max_steps", "2",
          "--backward_fraction", "0.5", "--dropout", "0"])  # fmt: skip
    record = json.loads((output / "airrep_training.json").read_text())
    assert record["preset"]["backward_fraction"] == 0.5
    assert '"backward_fraction": 0.5' in (output / "README.md").read_text()


def test_a_random_projector_is_seeded_normal_with_the_initializer_range(model):
    from airrep.training.trainer import randomise_projector

    first, second = AirRepModel.from_encoder(), AirRepModel.from_encoder()
    randomise_projector(first, 3)
    randomise_projector(second, 3)
    weight = first.projector.weight.detach()
    torch.testing.assert_close(weight, second.projector.weight.detach(), rtol=0, atol=0)
    assert abs(weight.std().item() - first.config.initializer_range) < 0.002 and not first.projector.bias.any()
    assert not torch.allclose(weight, torch.eye(384))


def test_the_paper_preset_is_the_authors_release():
    from airrep.presets import TRAIN_PRESETS

    paper = TRAIN_PRESETS["paper"]
    release = {"queries_per_step": 1000, "subsets_per_step": 32, "train_steps": 5000, "learning_rate": 1e-4,
               "weight_decay": 0.01, "lr_scheduler_type": "constant_with_warmup", "warmup_steps": 10, "dropout": 0.0,
               "projector_init": "random", "weighting": "reference"}  # fmt: skip
    assert {k: getattr(paper, k) for k in release} == release
