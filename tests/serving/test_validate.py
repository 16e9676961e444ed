"""The pre-upload validation: one good folder of each kind, and broken ones with the right message."""

import json
import shutil
from pathlib import Path

import pytest
from helpers import REPO

from airrep.labels import LabelArguments
from airrep.labels import generate_labels as generate
from airrep.serving.validate import main, validate

SPACE = REPO / "space"


@pytest.fixture(scope="module")
def labels_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("validate") / "labels-lds"
    generate(LabelArguments(output_dir=str(folder), preset="smoke", mode="lds"))
    return folder


def copy(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / folder.name))


def edit_card(folder: Path, old: str, new: str) -> None:
    readme = folder / "README.md"
    text = readme.read_text()
    assert old in text
    readme.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize("kind", ["model", "dataset", "space"])
def test_good_folders_pass_including_the_offline_load(kind, saved_folder, labels_folder):
    folder = {"model": saved_folder, "dataset": labels_folder, "space": SPACE}[kind]
    assert validate(kind, folder) == []


def test_relative_paths_work(monkeypatch):
    monkeypatch.chdir(SPACE.parent)
    assert validate("space", "space") == []


def test_model_problems_are_all_listed(saved_folder, tmp_path):
    folder = copy(saved_folder, tmp_path)
    (folder / "modeling_airrep.py").unlink()
    config = json.loads((folder / "config.json").read_text())
    del config["auto_map"]
    (folder / "config.json").write_text(json.dumps(config))
    edit_card(folder, "pipeline_tag: feature-extraction", "pipeline_tag: text-generation")
    problems = validate("model", folder)
    assert "modeling_airrep.py is missing" in problems
    assert any(p.startswith("config.json has no auto_map") for p in problems)
    assert "card metadata: pipeline_tag is 'text-generation', not 'feature-extraction'" in problems


def test_model_that_does_not_load_is_caught(saved_folder, tmp_path):
    folder = copy(saved_folder, tmp_path)
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    (problem,) = validate("model", folder)
    assert problem.startswith("the folder does not load offline with trust_remote_code:")


def test_model_card_without_metadata_and_with_a_local_dataset(saved_folder, tmp_path):
    folder = copy(saved_folder, tmp_path)
    (folder / "README.md").write_text("# A card with no metadata\n")
    assert validate("model", folder, load=False) == [
        "README.md has no YAML metadata block (it must start with a '---' line and close with one)"
    ]
    folder2 = copy(saved_folder, tmp_path / "second")
    edit_card(folder2, "tags:\n", "datasets:\n- ./out/labels\ntags:\n")
    assert validate("model", folder2, load=False) == [
        "card metadata: datasets entry './out/labels' is a local path, not a Hub id"
    ]


def test_dataset_problems(labels_folder, tmp_path):
    folder = copy(labels_folder, tmp_path)
    labels_file = next((folder / "data").glob("labels-*.parquet"))
    labels_file.unlink()
    (folder / "summary.json").unlink()
    problems = validate("dataset", folder)
    assert f"card metadata: config 'labels' names data file 'data/{labels_file.name}', which is missing" in problems
    assert any(p.startswith("summary.json is missing") for p in problems)
    edit_card(folder, "config_name: queries", "config_name: dev")
    assert "card metadata: configs lack 'queries' (a labels dataset has pool, queries, labels)" in validate(
        "dataset", folder, load=False
    )


def test_space_problems(tmp_path):
    folder = copy(SPACE, tmp_path)
    edit_card(folder, 'python_version: "3.11"', 'python_version: "3.9"')
    edit_card(folder, "app_file: app.py", "app_file: main.py")
    (folder / "requirements.txt").write_text("torch\n")
    problems = validate("space", folder)
    assert "card metadata: python_version is '3.9', not '3.11'" in problems
    assert "card metadata: app_file 'main.py' is not in the folder" in problems
    folder2 = copy(SPACE, tmp_path / "second")
    (folder2 / "requirements.txt").write_text("torch==2.13.0\ndatasets\npyarrow>=15\n")
    assert validate("space", folder2) == ["app.py imports 'transformers', which requirements.txt does not install"]


def test_space_that_cannot_build_is_caught(tmp_path):
    folder = copy(SPACE, tmp_path)
    (folder / "app.py").write_text((folder / "app.py").read_text() + "\nraise RuntimeError('boom')\n")
    assert validate("space", folder) == ["app.py does not build offline from the folder alone: RuntimeError: boom"]


def test_command_line_lists_problems_and_exits_1(tmp_path, capsys):
    assert main(["model", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "is not ready to upload as a model" in err and "config.json is missing" in err
    with pytest.raises(SystemExit):
        main(["checkpoint", str(tmp_path)])
