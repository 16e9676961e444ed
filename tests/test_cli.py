"""Every command line reports a user's mistake in one line and exits with status 2, with no
traceback unless asked for; a programming error still raises."""

import pytest
from helpers import run

from airrep import cli


def _one_line_error(result, prog: str, *fragments: str) -> str:
    assert result.returncode == cli.USAGE_STATUS, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith(f"{prog}: error:")]
    assert len(errors) == 1, result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


@pytest.mark.parametrize("script", ["generate_labels.py", "train_airrep.py", "eval_lds.py"])
def test_an_unknown_preset(script, tmp_path):
    flags = {"generate_labels.py": [], "train_airrep.py": ["--labels", "x"], "eval_lds.py": ["--labels", "x"]}
    result = run([script, "--preset", "huge", *flags[script], "--output_dir", str(tmp_path / "out")])
    _one_line_error(result, script, "--preset must be one of", "'huge'")


def test_an_unknown_method(labels, tmp_path):
    result = run(["eval_lds.py", "--labels", str(labels / "labels-lds"), "--output_dir", str(tmp_path / "r"),
                  "--methods", "tfidf", "gradcam"])  # fmt: skip
    _one_line_error(result, "eval_lds.py", "unknown method(s) ['gradcam']")


def test_eval_lds_on_train_mode_labels(labels, tmp_path):
    result = run(["eval_lds.py", "--labels", str(labels / "labels-train"), "--output_dir", str(tmp_path / "r"),
                  "--methods", "tfidf"])  # fmt: skip
    _one_line_error(result, "eval_lds.py", "'train'-mode labels", "--mode lds")
    assert not (tmp_path / "r" / "results.json").exists()


def test_train_airrep_on_a_missing_folder(tmp_path):
    missing = tmp_path / "no-labels-here"
    result = run(
        ["train_airrep.py", "--preset", "smoke", "--labels", str(missing), "--output_dir", str(tmp_path / "m")]
    )
    _one_line_error(result, "train_airrep.py", str(missing), "not a folder")
    assert not (tmp_path / "m").exists()


def test_a_bad_flag_value_is_one_line_too(tmp_path):
    result = run(["generate_labels.py", "--epochs", "two", "--output_dir", str(tmp_path)])
    _one_line_error(result, "generate_labels.py", "--epochs", "'two'")


def test_a_python_m_tool_behaves_alike(labels):
    result = run(
        ["-m", "airrep.evaluation.compare_reports", "--labels", str(labels / "labels-lds"), "--methods", "a", "b"]
    )
    _one_line_error(result, "python -m airrep.evaluation.compare_reports", "'a': expected REPORT:METHOD")


def test_a_folder_that_is_not_a_labels_dataset(tmp_path):
    result = run(["-m", "airrep.evaluation.compare_reports", "--labels", str(tmp_path), "--methods", "a", "b"])
    _one_line_error(result, "python -m airrep.evaluation.compare_reports", f"{tmp_path}: not a labels dataset")


@pytest.mark.parametrize(("flag", "env"), [(["--debug"], {}), ([], {"AIRREP_DEBUG": "1"})])
def test_the_traceback_on_request(tmp_path, flag, env):
    result = run(["train_airrep.py", *flag, "--labels", str(tmp_path / "x"), "--output_dir", str(tmp_path)], **env)
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "FileNotFoundError" in result.stderr


def test_a_programming_error_still_raises():
    def broken(argv):
        return {}["missing"]

    with pytest.raises(KeyError):
        cli.run(broken, [])


def test_a_user_error_in_process(capsys):
    def mistaken(argv):
        raise cli.UsageError(f"--colour must be red or blue,\n got {argv[0]!r}")

    assert cli.run(mistaken, ["green"], prog="paint") == 2
    err = capsys.readouterr().err
    assert err.startswith("paint: error: --colour must be red or blue, got 'green' (set AIRREP_DEBUG=1")
    assert err.count("\n") == 1
