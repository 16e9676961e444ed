"""The target-LM ladder: rung construction, labels per rung, the cost crossings, and the ladder report
recomputed from saved score matrices, at smoke size."""

import json
import math
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import asdict

import numpy as np
import pytest
import torch
from helpers import REPO
from scipy.stats import spearmanr
from transformers import LlamaForCausalLM

from airrep.evaluation import EvalArguments, evaluate, load_eval_data
from airrep.evaluation.ladder import (
    LadderReportArguments,
    ReportMismatchError,
    all_crossings,
    cost_crossings,
    parse_rungs,
)
from airrep.evaluation.ladder import build_ladder_report as build
from airrep.labels import LabelArguments
from airrep.labels import generate_labels as generate
from airrep.labels.dataset import read_summary
from airrep.labels.ladder import count_parameters, ladder, rung_factor, rung_name, scale_spec
from airrep.labels.target_lm import llama_config
from airrep.presets import LABEL_PRESETS


@pytest.mark.parametrize("preset", ["smoke", "demo", "bench"])
def test_rungs_grow_by_their_factor_and_keep_the_recipe(preset):
    base = LABEL_PRESETS[preset].target_lm
    rungs = ladder(base, (1, 10, 100))
    assert list(rungs) == ["x1", "x10", "x100"]
    assert rungs["x1"] == base
    for factor, spec in zip((10, 100), (rungs["x10"], rungs["x100"]), strict=True):
        ratio = count_parameters(spec) / count_parameters(base)
        assert 0.8 * factor <= ratio <= 1.25 * factor, (preset, factor, ratio)
        assert spec.hidden_size // spec.num_heads == base.hidden_size // base.num_heads  # head size
        assert spec.intermediate_size / spec.hidden_size == pytest.approx(base.intermediate_size / base.hidden_size)
        assert spec.num_layers >= base.num_layers and spec.hidden_size > base.hidden_size
        kept = ("vocab_size", "max_length", "warmup_epochs", "warmup_lr", "warmup_batch_size", "seed")
        assert {k: asdict(spec)[k] for k in kept} == {k: asdict(base)[k] for k in kept}
    assert count_parameters(rungs["x100"]) > count_parameters(rungs["x10"])


@pytest.mark.parametrize("factor", [1, 10, 100])
def test_closed_form_parameter_count_matches_a_built_llama(factor):
    spec = scale_spec(LABEL_PRESETS["demo"].target_lm, factor)
    with torch.device("meta"):
        model = LlamaForCausalLM(llama_config(spec, spec.vocab_size))
    assert count_parameters(spec) == sum(p.numel() for p in model.parameters())


def test_bad_factors_are_refused():
    base = LABEL_PRESETS["smoke"].target_lm
    with pytest.raises(ValueError, match="at least 1"):
        scale_spec(base, 0.5)
    with pytest.raises(ValueError, match="repeat"):
        ladder(base, (1, 10, 10))
    assert rung_factor(rung_name(100)) == 100
    with pytest.raises(ValueError, match="not a ladder rung"):
        rung_factor("qwen")


def test_cost_crossing_is_interpolated_in_log_parameters():
    rungs = [
        {"rung": "a", "parameters": 1e6, "m": {"seconds_per_example": 0.5}},
        {"rung": "b", "parameters": 1e8, "m": {"seconds_per_example": 2.0}},
        {"rung": "c", "parameters": 1e9, "m": {"seconds_per_example": 8.0}},
    ]
    crossing = cost_crossings(rungs, "m", 1.0)
    # log-ratios -log 2 and +log 2 around 1e6 and 1e8: the crossing is halfway in log space, 1e7.
    assert crossing["crossing_parameters"] == pytest.approx(1e7)
    assert crossing["between"] == ["a", "b"]
    assert crossing["cheaper_than_reference_on"] == ["a"] and crossing["dearer_on"] == ["b", "c"]
    never = cost_crossings(rungs, "m", 0.1)
    assert never["crossing_parameters"] is None and never["cheaper_than_reference_on"] == []
    # Every method some rung measured, against every encoder; a method no rung measured is left out.
    curve = {"rungs": [{"rung": "a", "parameters": 1e6, "logra": {"seconds_per_example": 0.5}},
                       {"rung": "b", "parameters": 1e8, "logra": {"seconds_per_example": 2.0},
                        "ekfac": {"seconds_per_example": 4.0}}],
             "encoders": {"e1": {"seconds_per_example": 1.0}, "e2": {"seconds_per_example": 0.1}}}  # fmt: skip
    crossings = all_crossings(curve)
    assert list(crossings) == ["logra vs e1", "logra vs e2", "ekfac vs e1", "ekfac vs e2"]
    assert crossings["logra vs e1"]["crossing_parameters"] == pytest.approx(1e7)
    assert crossings["ekfac vs e1"]["dearer_on"] == ["b"]


@pytest.fixture(scope="module")
def rungs(tmp_path_factory):
    """Smoke lds labels on rungs x1 and x10 of one corpus, each scored at two projection sizes: x1 in one
    folder per size and in one run at both sizes, x10 in one run at both sizes."""
    work = tmp_path_factory.mktemp("ladder")
    reports = {}
    methods = ["tfidf", "grad-cos", "logra"]
    for factor in (1, 10):
        labels = work / f"labels-lds-x{factor}"
        generate(LabelArguments(output_dir=str(labels), preset="smoke", mode="lds", target_lm_scale=factor))
        reports[f"x{factor}"] = []
        for dim in (16, 32) if factor == 1 else ():
            folder = work / f"report-x{factor}-d{dim}"
            evaluate(EvalArguments(labels=str(labels), output_dir=str(folder), methods=methods, projection_dim=[dim]))
            reports[f"x{factor}"].append(str(folder))
        folder = work / f"report-x{factor}-both"
        evaluate(EvalArguments(labels=str(labels), output_dir=str(folder), methods=methods, projection_dim=[16, 32]))
        reports[f"x{factor}"].append(str(folder))
    return work, reports


def test_one_run_at_several_sizes_equals_a_run_per_size(rungs):
    work, _ = rungs
    both = json.loads((work / "report-x1-both" / "results.json").read_text())
    assert list(both["methods"]) == ["tfidf", "grad-cos@16", "grad-cos@32", "logra@16", "logra@32"]
    for dim in (16, 32):
        for method in ("grad-cos", "logra"):
            for pooling in ("sum", "attention"):
                alone = np.load(work / f"report-x1-d{dim}" / "scores" / f"{method}.{pooling}.npy")
                shared = np.load(work / "report-x1-both" / "scores" / f"{method}@{dim}.{pooling}.npy")
                np.testing.assert_array_equal(shared, alone)
        assert both["method_details"][f"grad-cos@{dim}"]["dim"] == dim
        # A projected method's one-off setup is the shared fine-tune plus building its own matrix;
        # LoGra builds no such matrix, so its setup is the fine-tune alone.
        details = both["method_details"]
        assert details[f"grad-cos@{dim}"]["setup_seconds"] > details[f"logra@{dim}"]["setup_seconds"] > 0
    assert both["method_details"]["logra@16"]["setup_seconds"] == both["method_details"]["logra@32"]["setup_seconds"]
    assert json.loads((work / "report-x1-both" / "eval_settings.json").read_text())["projection_dims"] == [16, 32]


def test_each_rung_builds_its_own_target_lm_from_the_same_corpus(rungs):
    work, _ = rungs
    summaries = {f: read_summary(work / f"labels-lds-{f}") for f in ("x1", "x10")}
    assert summaries["x1"]["target_lm"] == str(work / "target-lm")
    assert summaries["x10"]["target_lm"] == str(work / "target-lm-x10")
    assert summaries["x1"]["corpus"]["fingerprint"] == summaries["x10"]["corpus"]["fingerprint"]
    built = LlamaForCausalLM.from_pretrained(summaries["x10"]["target_lm"])
    expected = scale_spec(LABEL_PRESETS["smoke"].target_lm, 10)
    assert summaries["x10"]["target_lm_parameters"] == sum(p.numel() for p in built.parameters())
    assert summaries["x10"]["target_lm_parameters"] == count_parameters(expected)
    assert summaries["x10"]["settings"]["target_lm"] == asdict(expected)
    card = (work / "labels-lds-x10" / "README.md").read_text()
    assert f"{summaries['x10']['target_lm_parameters']:,} parameters" in card and "s wall" in card


def test_scale_applies_only_to_the_built_in_target_lm(rungs, tmp_path):
    work, _ = rungs
    with pytest.raises(ValueError, match=r"grows the built-in target LM; it cannot apply to \S*target-lm"):
        generate(LabelArguments(output_dir=str(tmp_path / "x"), preset="smoke", mode="lds", target_lm_scale=10,
                                target_lm=str(work / "target-lm")))  # fmt: skip


def test_ladder_report_recomputes_every_lds_from_the_saved_scores(rungs, tmp_path):
    work, reports = rungs
    items = [f"{rung}={','.join(folders)}" for rung, folders in reports.items()]
    report = build(LadderReportArguments(output_dir=str(tmp_path / "ladder"), rung=items))
    assert list(report["rungs"]) == ["x1", "x10"]
    for rung, folders in reports.items():
        entry = report["rungs"][rung]
        # tfidf appears once however many folders scored it; gradient methods once per projection size.
        assert set(entry["methods"]) == {"tfidf", "grad-cos@16", "grad-cos@32", "logra@16", "logra@32"}
        losses = load_eval_data(entry["labels"]).losses
        for folder in folders:
            results = json.loads((work / folder / "results.json").read_text())
            for name in (n for n in results["methods"] if n.startswith("grad-cos")):
                label = name if "@" in name else f"{name}@{results['settings']['projection_dim']}"
                scores = np.load(work / folder / "scores" / f"{name}.attention.npy")
                # An independent LDS: Spearman of scores with negated losses, per query, averaged.
                rhos = [spearmanr(scores[:, q], -losses[:, q]).statistic for q in range(losses.shape[1])]
                expected = float(np.mean([0.0 if math.isnan(r) else r for r in rhos]))
                assert entry["methods"][label]["poolings"]["attention"]["lds"] == pytest.approx(expected)
        assert (tmp_path / "ladder" / f"frontier-{rung}.png").read_bytes()[:4] == b"\x89PNG"
    markdown = (tmp_path / "ladder" / "ladder.md").read_text()
    assert "## Rung x10" in markdown and "| logra@32 |" in markdown and "noise ceiling sqrt(r)" in markdown
    # The summary across rungs takes each method's better pooling on the test queries, and says so.
    summary = markdown.split("## Best pooling per method and rung")[1]
    assert "not a choice made on validation splits" in summary
    poolings = report["rungs"]["x1"]["methods"]["tfidf"]["poolings"]
    better = max(poolings, key=lambda p: poolings[p]["lds"])
    row = next(line for line in summary.splitlines() if line.startswith("| tfidf |"))
    assert row.split("|")[2].strip().endswith(f"({better})") and len(poolings) == 2
    on_disk = json.loads((tmp_path / "ladder" / "ladder.json").read_text())
    assert on_disk["rungs"]["x10"]["parameters"] == report["rungs"]["x10"]["parameters"]


def test_a_changed_score_matrix_is_caught(rungs, tmp_path):
    _, reports = rungs
    copy = tmp_path / "report"
    shutil.copytree(reports["x1"][0], copy)
    file = copy / "scores" / "tfidf.sum.npy"
    np.save(file, -np.load(file))
    with pytest.raises(ReportMismatchError, match=r"tfidf\.sum\.npy"):
        build(LadderReportArguments(output_dir=str(tmp_path / "out"), rung=[f"x1={copy}"]))


@pytest.mark.parametrize(
    "items, message",
    [
        ([], "at least one --rung"),
        (["x1"], "expected NAME=REPORT_FOLDER"),
        (["x1=/no/such/report"], "not an eval_lds.py report"),
    ],
)
def test_bad_rung_arguments_are_named(items, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        parse_rungs(items)


def test_a_rung_given_twice_is_refused(rungs):
    _, reports = rungs
    with pytest.raises(ValueError, match="given twice"):
        parse_rungs([f"x1={reports['x1'][0]}", f"x1={reports['x1'][1]}"])


@pytest.mark.slow
def test_run_ladder_script_end_to_end(saved_folder, tmp_path):
    """benchmarks/run_ladder.sh at smoke size: labels, evaluations, cost curve and report from one command."""
    repo = REPO
    env = {
        **os.environ,
        "PRESET": "smoke",
        "OUT": str(tmp_path),
        "MODEL": str(saved_folder),
        "FACTORS": "1 10",
        "DIMS": "16 24",
        "COST_RUNGS": "x1 x10",
        "COST_ARGS": "--n 4 --rounds 1 --logra_dim 64 --projection_dim 64 --ekfac --ekfac_train 3 --ekfac_queries 1",
        "PYTHON": sys.executable,
    }
    result = subprocess.run(["bash", "benchmarks/run_ladder.sh"], cwd=repo, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    ladder = json.loads((tmp_path / "ladder" / "report" / "ladder.json").read_text())
    assert list(ladder["rungs"]) == ["x1", "x10"]
    gradient = {f"{m}@{d}" for m in ("grad-dot", "grad-cos", "tracin", "logra") for d in (16, 24)}
    assert set(ladder["rungs"]["x10"]["methods"]) == {"airrep", "base-encoder", "bm25", "tfidf", *gradient}
    assert [r["rung"] for r in ladder["cost_curve"]["rungs"]] == ["x1", "x10"]
    for rung in ladder["cost_curve"]["rungs"]:  # one EK-FAC job per rung: 3 training examples, 1 query
        job = rung["ekfac"]
        assert (job["train_examples"], job["queries"]) == (3, 1) and job["factor_bytes"] > 0
        assert job["seconds_per_example"] == pytest.approx((job["fit_seconds"] + job["score_seconds"]) / 4)
        minilm = ladder["cost_curve"]["encoders"]["airrep_minilm"]["seconds_per_example"]
        assert ladder["cost_curve"]["ekfac_over_encoder"][rung["rung"]]["airrep_minilm"] == pytest.approx(
            job["total_seconds"] / (4 * minilm)
        )
    assert "ekfac vs airrep_minilm" in ladder["cost_curve"]["crossings"]
    assert ladder["cost_curve"]["complete"] and not list((tmp_path / "ladder").glob("*.partial.json"))
    assert ladder["rungs"]["x10"]["parameters"] > ladder["rungs"]["x1"]["parameters"]
    for name in ("frontier-x1.png", "frontier-x10.png", "cost_curve.png", "ladder.md"):
        assert (tmp_path / "ladder" / "report" / name).is_file()

    # A rerun redoes nothing that finished: the saved cost curve over the same rungs is reused byte for byte...
    cost_json = tmp_path / "ladder" / "cost_curve.json"
    measured = cost_json.read_bytes()
    rerun = subprocess.run(["bash", "benchmarks/run_ladder.sh"], cwd=repo, env={**env, "FACTORS": "1"},
                           capture_output=True, text=True)  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "reusing the cost curve" in rerun.stdout
    assert cost_json.read_bytes() == measured
    # ...and one over other rungs is measured again, whole.
    other = subprocess.run(["bash", "benchmarks/run_ladder.sh"], cwd=repo,
                           env={**env, "FACTORS": "1", "COST_RUNGS": "x1"}, capture_output=True, text=True)  # fmt: skip
    assert other.returncode == 0, other.stderr[-3000:]
    assert "reusing the cost curve" not in other.stdout
    assert [r["rung"] for r in json.loads(cost_json.read_text())["rungs"]] == ["x1"]


@pytest.mark.slow
def test_run_real_rung_script_end_to_end(saved_folder, tmp_path):
    """benchmarks/run_real_rung.sh's steps at smoke size, with LoRA subset models as on the real rung."""
    env = {
        **os.environ,
        "OUT": str(tmp_path),
        "PRESET": "smoke",
        "LABEL_ARGS": "--lora_rank 2 --lora_layers 1 --learning_rate 1e-2 --lds_subset_size 16",
        "TRAIN_PRESET": "smoke",
        "EVAL_PRESET": "smoke",
        "DIMS": "16 24",
        "EKFAC_MEMORY_GIB": "1",
        "MODELS": f"{saved_folder} {tmp_path / 'model-smollm2'}",
        "BEST": saved_folder.name,
        "COLUMNS": "task targets",
        "RUNG": "x1",
        "COST_ARGS": "--rungs x1 --n 4 --rounds 1 --logra_dim 64 --projection_dim 64 --ekfac --ekfac_train 3 "
        "--ekfac_queries 1",
        "PYTHON": sys.executable,
    }
    trained = {**env, "MODELS": str(tmp_path / "model-smollm2")}  # validation reads how a checkpoint was trained
    for step in ("labels", "recipe", "validate", "eval", "report"):
        result = subprocess.run(["bash", "benchmarks/run_real_rung.sh", step], cwd=REPO, capture_output=True,
                                text=True, env=trained if step == "validate" else env)  # fmt: skip
        assert result.returncode == 0, (step, result.stderr[-3000:])
    paired = json.loads((tmp_path / "paired.json").read_text())
    # AirRep enters at the pooling chosen on validation (BEST_POOLING, default attention), not the better one on test.
    assert paired["reference"] == f"{tmp_path}/report-airrep-{saved_folder.name}:airrep.attention"
    compared = json.dumps(paired)
    for name in ("grad-dot-lora@16", "tracin-lora@24", "grad-cos@24", "logra@16", "ekfac", "tfidf"):
        assert name in compared, name
    assert json.loads((tmp_path / "cost.json").read_text())["rungs"][0]["ekfac"]["queries"] == 1
    # EK-FAC's resumable job kept its factors in the report's work folder until it was scored.
    assert (tmp_path / "report-ekfac" / "work").is_dir() and not (tmp_path / "report-ekfac" / "work" / "ekfac").exists()
    ladder = json.loads((tmp_path / "ladder" / "ladder.json").read_text())
    assert {"airrep", "ekfac", "grad-dot-lora@16"} <= set(ladder["rungs"]["x1"]["methods"])
    # The third recipe: train labels with the frozen layers cached, a checkpoint on them, and the choice
    # among the checkpoints on those labels' validation splits.
    assert json.loads((tmp_path / "labels-train" / "generation_settings.json").read_text())["cache_frozen_layers"]
    validation = json.loads((tmp_path / "validation.json").read_text())
    assert {str(tmp_path / "model-smollm2"), "untrained"} <= set(json.dumps(validation).split('"'))
    again = subprocess.run(["bash", "benchmarks/run_real_rung.sh", "recipe"], cwd=REPO, env=env, capture_output=True,
                           text=True)  # fmt: skip
    assert again.returncode == 0 and "model-smollm2 is trained" in again.stdout
    labels_card = (tmp_path / "labels-lds" / "README.md").read_text()
    assert "random subsets of 16 of the pool" in labels_card and "LoRA adapters only" in labels_card
    wrong = subprocess.run(["bash", "benchmarks/run_real_rung.sh", "label"], cwd=REPO, env=env, capture_output=True,
                           text=True)  # fmt: skip
    assert wrong.returncode == 2 and "usage: bash benchmarks/run_real_rung.sh labels|recipe|validate|eval|report" in (
        wrong.stderr
    )
    # Each checkpoint has its own report, named after its folder; BEST names one that was scored.
    assert (tmp_path / f"report-airrep-{saved_folder.name}" / "results.json").exists()
    unscored = subprocess.run(["bash", "benchmarks/run_real_rung.sh", "report"], cwd=REPO, env={**env, "BEST": "other"},
                              capture_output=True, text=True)  # fmt: skip
    assert unscored.returncode == 2 and "BEST=other: no report" in unscored.stderr
    twins = subprocess.run(["bash", "benchmarks/run_real_rung.sh", "eval"], cwd=REPO, capture_output=True, text=True,
                           env={**env, "MODELS": f"{saved_folder} {tmp_path}/x/{saved_folder.name}"})  # fmt: skip
    assert twins.returncode == 2 and f"share the folder name '{saved_folder.name}'" in twins.stderr


def test_a_stopped_cost_run_keeps_what_it_measured():
    """The cost bench's figures from a run stopped midway: only timed rungs, ratios over the rounds both had."""
    from types import SimpleNamespace

    from benchmarks.bench_featurization_cost import measured_figures

    args = SimpleNamespace(n=4, rounds=3, preset="demo", device=torch.device("cpu"))
    sides = [("airrep_minilm", None, "fp32"), ("airrep_minilm_bf16", None, "bf16")]
    encode_seconds = {"airrep_minilm": [0.01, 0.03], "airrep_minilm_bf16": [0.005, 0.005]}
    done = SimpleNamespace(name="x1", logra_seconds=[0.02, 0.09], entry={
        "rung": "x1", "parameters": 1e6, "logra": {"seconds_per_example": 0.055},
        "ekfac": {"total_seconds": 1.5, "train_examples": 2, "queries": 1, "seconds_per_example": 0.5}})  # fmt: skip
    started = SimpleNamespace(name="x10", logra_seconds=[], entry={"rung": "x10", "parameters": 1e7, "logra": {}})
    figures = measured_figures(args, [10, 12], sides, encode_seconds, [done, started], complete=False)
    assert figures["complete"] is False and [r["rung"] for r in figures["rungs"]] == ["x1"]
    assert figures["device"] == (platform.processor() or platform.machine())
    assert figures["encoders"]["airrep_minilm"]["seconds_per_example"] == pytest.approx(0.02)
    assert figures["logra_over_encoder"]["x1"]["airrep_minilm"]["rounds"] == pytest.approx([2.0, 3.0])
    assert figures["ekfac_over_encoder"]["x1"]["airrep_minilm"] == pytest.approx(1.5 / (0.02 * 3))
    assert set(figures["crossings"]) == {f"{m} vs {e}" for m in ("logra", "ekfac") for e in encode_seconds}
    # A stop during the first round of the first rung: the encoders' first round, and no rung yet.
    first = measured_figures(args, [10], sides, {"airrep_minilm": [0.01], "airrep_minilm_bf16": []},
                             [started], complete=False)  # fmt: skip
    assert list(first["encoders"]) == ["airrep_minilm"] and first["rungs"] == [] and first["crossings"] == {}
