"""eval_lds.py on smoke labels: every method, the report folder, recomputation from the saved score
matrices, resuming, a failing method, and clear errors for bad input."""

import json

import numpy as np
import pytest
from helpers import needs_compiler
from helpers import run as run_command

from airrep.evaluation import METHODS, EvalArguments, Featurized, load_eval_data
from airrep.evaluation import evaluate as run
from airrep.evaluation.gradient_methods import LORA_GRADIENT_METHODS
from airrep.evaluation.methods import base_normalises, weights_sha256
from airrep.evaluation.report import recompute_lds
from airrep.evaluation.runner import classify
from airrep.labels.dataset import LabelsFormatError


def main(argv: list[str]) -> int:
    """eval_lds.py with ``argv`` in a subprocess; its exit status."""
    return run_command(["eval_lds.py", *argv]).returncode


def test_every_method_and_pooling_is_reported(report):
    folder, results = report
    assert results["errors"] == {}
    # The smoke labels fine-tune every weight, so the methods that read LoRA adapters are left out.
    assert list(results["methods"]) == [m for m in METHODS if m not in LORA_GRADIENT_METHODS]
    for name, poolings in results["methods"].items():
        assert set(poolings) == {"sum", "attention"}
        for pooling, entry in poolings.items():
            assert set(entry) >= {"lds", "ci", "featurize_seconds_per_example", "query_seconds", "bytes_per_example"}
            assert entry["ci"][0] <= entry["lds"] <= entry["ci"][1]
            assert entry["bytes_per_example"] > 0 and entry["featurize_seconds_per_example"] > 0
            scores = np.load(folder / "scores" / f"{name}.{pooling}.npy")
            assert scores.shape == (results["n_subsets"], results["n_queries"])
        assert 0 <= results["classification"]["accuracy"][name] <= 1
    ceiling = results["noise_ceiling"]
    assert ceiling["sqrt_r"] == pytest.approx(np.sqrt(max(ceiling["r"], 0)))
    table = (folder / "results.md").read_text()
    assert "| logra |" in table and "noise ceiling sqrt(r)" in table
    assert (folder / "lds.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    on_disk = json.loads((folder / "results.json").read_text())
    assert on_disk["methods"] == results["methods"]


def test_results_are_recomputed_from_the_saved_score_matrices(report, labels):
    folder, results = report
    data = load_eval_data(str(labels / "labels-lds"))
    recomputed = recompute_lds(folder, data.losses, n_resamples=results["settings"]["bootstrap_resamples"])
    for name, poolings in results["methods"].items():
        for pooling, entry in poolings.items():
            assert recomputed[name][pooling]["lds"] == pytest.approx(entry["lds"], abs=1e-12)
            assert recomputed[name][pooling]["ci"] == pytest.approx(entry["ci"], abs=1e-12)


def test_airrep_encodes_at_the_precision_asked_for(labels, saved_folder, report, tmp_path):
    from modeling_airrep import AirRepModel, group_influence

    args = EvalArguments(labels=str(labels / "labels-lds"), output_dir=str(tmp_path / "int8"),
                         model=[str(saved_folder)], methods=["airrep"], encode_precision="int8")  # fmt: skip
    results = run(args)
    assert "encoded in int8" in results["method_details"]["airrep"]["description"]
    assert json.loads((tmp_path / "int8" / "eval_settings.json").read_text())["encode_precision"] == "int8"
    data = load_eval_data(str(labels / "labels-lds"))
    model = AirRepModel.from_pretrained(saved_folder)
    encode = lambda texts: model.encode(texts, batch_size=64, precision="int8")  # noqa: E731
    expected = group_influence(encode(data.query_texts).astype(np.float64), encode(data.pool_texts), data.subsets)
    np.testing.assert_allclose(np.load(tmp_path / "int8" / "scores" / "airrep.attention.npy"), expected, rtol=1e-9)
    # The fp32 report of the same checkpoint records no precision and differs.
    assert "encode_precision" not in json.loads((report[0] / "eval_settings.json").read_text())
    assert results["methods"]["airrep"] != report[1]["methods"]["airrep"]


@needs_compiler
def test_airrep_encodes_through_torch_compile_when_asked(labels, saved_folder, report, tmp_path):
    out = tmp_path / "compiled"
    args = EvalArguments(labels=str(labels / "labels-lds"), output_dir=str(out), model=[str(saved_folder)],
                         methods=["airrep"], encode_compile=True)  # fmt: skip
    results = run(args)
    assert "through torch.compile" in results["method_details"]["airrep"]["description"]
    assert json.loads((out / "eval_settings.json").read_text())["encode_compile"] is True
    # fp32 compiled kernels reorder sums, nothing more: the same scores as the eager report's.
    for pooling in ("sum", "attention"):
        compiled, eager = (np.load(folder / "scores" / f"airrep.{pooling}.npy") for folder in (out, report[0]))
        np.testing.assert_allclose(compiled, eager, rtol=1e-4, atol=1e-6)
    assert "encode_compile" not in json.loads((report[0] / "eval_settings.json").read_text())


def test_compile_without_a_compiler_is_refused_before_any_work(labels, saved_folder, no_compiler, tmp_path):
    args = EvalArguments(labels=str(labels / "labels-lds"), output_dir=str(tmp_path / "out"),
                         model=[str(saved_folder)], methods=["airrep"], encode_compile=True)  # fmt: skip
    with pytest.raises(ValueError, match=r"^--encode_compile: torch.compile needs a C\+\+ compiler"):
        run(args)
    assert not (tmp_path / "out").exists()


def test_base_encoder_is_used_as_its_pipeline_intends(saved_folder):
    # The bundled MiniLM's sentence-transformers pipeline ends with Normalize; an AirRep checkpoint's does not.
    assert base_normalises(None)
    assert not base_normalises(str(saved_folder))


def test_a_rerun_skips_finished_methods_and_other_settings_are_refused(report, labels, saved_folder, caplog):
    folder, results = report
    before = {f.name: f.stat().st_mtime_ns for f in (folder / "scores").iterdir()}
    again = run(EvalArguments(labels=str(labels / "labels-lds"), output_dir=str(folder), model=[str(saved_folder)]))
    assert {f.name: f.stat().st_mtime_ns for f in (folder / "scores").iterdir()} == before
    assert again["methods"] == results["methods"]
    with pytest.raises(ValueError, match="other settings"):
        run(EvalArguments(labels=str(labels / "labels-lds"), output_dir=str(folder), model=[str(saved_folder)],
                          projection_dim=[32]))  # fmt: skip


def test_a_checkpoint_trained_again_in_place_is_scored_again(labels, saved_folder, tmp_path, caplog):
    import shutil

    import torch

    from modeling_airrep import AirRepModel

    checkpoint = tmp_path / "model"
    shutil.copytree(saved_folder, checkpoint)
    args = EvalArguments(labels=str(labels / "labels-lds"), output_dir=str(tmp_path / "report"),
                         model=[str(checkpoint)], methods=["airrep", "tfidf"])  # fmt: skip
    first = run(args)
    tfidf_scores = tmp_path / "report" / "scores" / "tfidf.sum.npy"
    tfidf_time = tfidf_scores.stat().st_mtime_ns
    model = AirRepModel.from_pretrained(checkpoint)
    with torch.no_grad():  # as if training had moved the projector
        model.projector.weight.mul_(-1.0).add_(0.05 * torch.randn_like(model.projector.weight))
    model.save_pretrained(checkpoint)
    with caplog.at_level("WARNING"):
        second = run(args)
    assert "other weights than when it was scored; scoring it again" in caplog.text
    assert second["methods"]["airrep"] != first["methods"]["airrep"]
    assert tfidf_scores.stat().st_mtime_ns == tfidf_time  # what does not depend on the checkpoint is kept
    details = json.loads((tmp_path / "report" / "methods" / "airrep.json").read_text())["details"]
    assert details["weights_sha256"] == weights_sha256(str(checkpoint)) != weights_sha256(str(saved_folder))


def test_a_failing_method_keeps_the_others(labels, tmp_path):
    folder = tmp_path / "report"
    argv = ["--labels", str(labels / "labels-lds"), "--output_dir", str(folder), "--methods", "tfidf", "grad-dot",
            "bm25", "--target_lm", str(tmp_path / "no-such-model")]  # fmt: skip
    assert main(argv) == 1
    results = json.loads((folder / "results.json").read_text())
    assert list(results["methods"]) == ["tfidf", "bm25"]
    assert "no-such-model" in results["errors"]["grad-dot"]
    assert "grad-dot | failed" in (folder / "results.md").read_text()


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        ({"methods": ["airrep", "gradcam"]}, ValueError, r"unknown method\(s\) \['gradcam'\]"),
        ({"methods": ["airrep"]}, ValueError, "needs at least one checkpoint"),
        ({"methods": ["bm25"], "model": ["x"]}, ValueError, "--model applies only to method 'airrep'"),
        ({"methods": ["bm25", "airrep"], "poolings": ["max"]}, ValueError, "--poolings must be"),
        (
            {"methods": ["bm25", "tfidf"], "projection_dim": [8]},
            ValueError,
            "--projection_dim apply only to the projected gradient methods",
        ),
        (
            {"methods": ["ekfac"], "projection_dim": [8]},
            ValueError,
            "--projection_dim apply only to the projected gradient methods",
        ),
        (
            {"methods": ["tfidf"], "target_lm": "{target_lm}"},
            ValueError,
            r"--target_lm apply only to the methods of the target LM \('grad-dot', .*'ekfac', 'kfac'\)",
        ),
        ({"methods": ["grad-dot"], "logra_rank": 2}, ValueError, "--logra_rank applies only to method 'logra'"),
        (
            {"methods": ["bm25", "grad-dot-lora"]},
            ValueError,
            r"grad-dot-lora read the subset models' LoRA adapters, but .*labels-lds was made with full fine-tuning",
        ),
        (
            {"methods": ["logra"], "logra_rank": 2, "projection_dim": [8, 16]},
            ValueError,
            r"--logra_rank fixes LoGra's size, so it takes one --projection_dim, not \[8, 16\]",
        ),
        (
            {"methods": ["grad-dot"], "projection_dim": [16, 0]},
            ValueError,
            "--projection_dim must be at least 1, got 0",
        ),
        ({"methods": ["grad-dot"], "gradient_memory_gib": 0}, ValueError, "--gradient_memory_gib must be positive"),
        ({"methods": ["bm25"], "base_encoder": "x"}, ValueError, "--base_encoder applies only"),
        ({"methods": ["bm25"], "encode_precision": "bf16"}, ValueError, "--encode_precision applies only to method"),
        ({"model": ["x"], "encode_precision": "fp8"}, ValueError, r"--encode_precision must be one of \("),
        ({"methods": ["bm25"], "encode_compile": True}, ValueError, "--encode_compile applies only to method"),
        (
            {"model": ["x"], "encode_compile": True, "encode_precision": "int8"},
            ValueError,
            "^--encode_compile: torch.compile runs",
        ),
        ({"model": ["{missing}"]}, ValueError, "cannot load AirRep checkpoint"),
        ({"model": ["{target_lm}"]}, ValueError, "not an AirRep checkpoint: its config.json has model_type 'llama'"),
        ({"labels": "{train_labels}"}, LabelsFormatError, "'train'-mode labels; LDS is measured on 'lds'-mode"),
        ({"labels": "{missing}"}, FileNotFoundError, "not a folder, and no dataset repo"),
    ],
)
def test_bad_input_gets_a_clear_error(labels, tmp_path, overrides, error, message):
    places = {"missing": str(tmp_path / "missing"), "target_lm": str(labels / "target-lm"),
              "train_labels": str(labels / "labels-train")}  # fmt: skip
    arguments = {"labels": str(labels / "labels-lds"), "output_dir": str(tmp_path / "out")}
    for key, value in overrides.items():
        if isinstance(value, str):
            value = value.format(**places)
        elif isinstance(value, list):
            value = [v.format(**places) if isinstance(v, str) else v for v in value]
        arguments[key] = value
    with pytest.raises(error, match=message):
        run(EvalArguments(**arguments))
    assert not (tmp_path / "out" / "results.json").exists()


def test_classification_vote_and_tie_break():
    scores = np.array([[0.9, 0.8, 0.7, 0.1], [0.1, 0.2, 0.9, 0.8]])
    pool_tasks = ["a", "b", "b", "a"]
    # Query 0: top-3 votes a, b, b -> b (wrong); query 1: top-2 is b (0.9), a (0.8): a tie goes to b.
    assert classify(scores, pool_tasks, ["a", "b"], k=3) == 0.5
    assert classify(scores, pool_tasks, ["a", "b"], k=2) == 1.0  # query 0: a (0.9) and b tie -> a


def test_score_matrix_methods_pool_like_embedding_methods():
    rng = np.random.default_rng(0)
    query, pool = rng.normal(size=(4, 6)).astype(np.float32), rng.normal(size=(10, 6)).astype(np.float32)
    subsets = [np.array([0, 3, 4]), np.array([1, 2, 5, 9]), np.array([7])]
    dense = Featurized("x", "", 1.0, 1.0, query=query, pool=pool)
    matrix = Featurized("x", "", 1.0, 1.0, scores=query @ pool.T)
    for pooling in ("sum", "attention"):
        np.testing.assert_allclose(matrix.group_scores(subsets, pooling), dense.group_scores(subsets, pooling),
                                   rtol=1e-5)  # fmt: skip
    s = (query @ pool.T)[:, subsets[1]]
    weights = np.exp(np.abs(s)) / np.exp(np.abs(s)).sum(1, keepdims=True)
    np.testing.assert_allclose(matrix.group_scores(subsets, "attention")[1], (weights * s).sum(1), rtol=1e-5)


def test_labels_load_by_repo_id_from_an_offline_hub_cache(labels, tmp_path):
    from airrep.outputs import install_in_offline_cache

    cache = tmp_path / "hub"
    install_in_offline_cache(labels / "labels-lds", "org/airrep-labels-smoke", cache, repo_type="dataset")
    code = (
        "from airrep.evaluation import load_eval_data; d = load_eval_data('org/airrep-labels-smoke'); "
        "print(d.losses.shape, d.summary['mode'])"
    )
    done = run_command(["-c", code], HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "lds"
    expected = load_eval_data(str(labels / "labels-lds")).losses.shape
    assert done.stdout.strip().startswith(str(expected))


def test_gradient_state_frees_its_projections_once_every_checkpoint_is_projected(labels):
    from dataclasses import replace

    from airrep.evaluation.gradient_methods import GradientProjector, per_example_gradients
    from airrep.evaluation.methods import GradientState
    from airrep.presets import EVAL_PRESETS

    data = load_eval_data(str(labels / "labels-lds"))
    settings = {**data.summary["settings"], "epochs": 2}  # two checkpoints: the matrices outlive the first
    state = GradientState(data.summary["target_lm"], settings, data.pool_records[:6], data.query_records[:3],
                          replace(EVAL_PRESETS["demo"], seed=5), [8, 16])  # fmt: skip
    assert len(state.checkpoints) == 2
    first = state.projected(0, 16)
    assert state._projectors[False][1].dim == 16  # still needed for checkpoint 1
    last = state.projected(1, 8)
    assert False not in state._projectors
    # What was projected stays, and is what a fresh projection of the same gradients gives.
    assert state.projected(0, 16)[0] is first[0] and state.projected(1, 8)[1] is last[1]
    gradients = per_example_gradients(state.model, state.checkpoints[1][0], state.pool, state.pad_id)
    np.testing.assert_allclose(GradientProjector(state.n_params, 8, 5)(gradients), last[0], rtol=1e-4, atol=1e-6)
