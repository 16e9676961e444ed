r"""Check a folder before ``hf upload``: the files its kind of repo needs, ``auto_map``, the card
metadata, and that it loads offline with nothing but its own files.

    python -m airrep.serving.validate model out/demo/model && hf upload ORG/airrep-small-demo out/demo/model
    python -m airrep.serving.validate dataset out/demo/labels-lds \
        && hf upload ORG/airrep-labels-demo out/demo/labels-lds --repo-type dataset
    python -m airrep.serving.validate space space && hf upload ORG/airrep-explorer space --repo-type space

Every problem found is listed (not just the first), and the exit status is 1 when there is any.
The loading checks run in a fresh Python process, in an empty working directory, with the Hub
switched off, so the repository's own modules cannot stand in for the folder's.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import tempfile
from argparse import RawDescriptionHelpFormatter
from pathlib import Path
from typing import Any

import yaml

from airrep import cli
from airrep.cli import UsageError
from airrep.labels.dataset import CONFIGS, LABEL_COLUMNS, SUMMARY_FILE
from airrep.serving.selection import ADDED_COLUMNS, SELECTION_FILE

KINDS = ("model", "dataset", "space")
MODEL_FILES = ("config.json", "model.safetensors", "configuration_airrep.py", "modeling_airrep.py",
               "tokenizer_config.json", "modules.json", "sentence_bert_config.json", "README.md")  # fmt: skip
AUTO_MAP = {"AutoConfig": "configuration_airrep.AirRepConfig", "AutoModel": "modeling_airrep.AirRepModel"}
# Import names that differ from their pip names, for the Space's requirements check.
PIP_NAMES = {"sklearn": "scikit-learn", "yaml": "pyyaml", "PIL": "pillow", "huggingface_hub": "huggingface-hub"}
SPACE_SDK_PACKAGES = {"gradio", "gradio_client", "huggingface_hub", "pandas", "numpy"}  # installed with the sdk


def read_card(folder: Path, problems: list[str]) -> dict[str, Any]:
    """The YAML metadata of ``README.md`` (empty, with a problem recorded, when absent or malformed)."""
    readme = folder / "README.md"
    if not readme.exists():
        problems.append("README.md is missing: the card and its metadata live there")
        return {}
    text = readme.read_text()
    if not text.startswith("---\n") or "\n---" not in text[4:]:
        problems.append("README.md has no YAML metadata block (it must start with a '---' line and close with one)")
        return {}
    try:
        data = yaml.safe_load(text[4 : text.index("\n---", 4)])
    except yaml.YAMLError as error:
        problems.append(f"README.md metadata is not valid YAML: {error}")
        return {}
    if not isinstance(data, dict):
        problems.append("README.md metadata must be a mapping of keys to values")
        return {}
    return data


def _missing(folder: Path, names: tuple[str, ...]) -> list[str]:
    return [f"{name} is missing" for name in names if not (folder / name).exists()]


def _run_isolated(code: str, folder: Path) -> str | None:
    """Run ``code`` in a fresh interpreter, offline, from an empty directory; the error text, or None."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH"}}
    env |= {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "FOLDER": str(folder)}
    with tempfile.TemporaryDirectory() as empty:
        done = subprocess.run([sys.executable, "-c", code], cwd=empty, env=env, capture_output=True, text=True,
                              check=False, timeout=600)  # fmt: skip
    if done.returncode == 0:
        return None
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    return lines[-1] if lines else f"exit status {done.returncode}"


def validate_model(folder: Path, load: bool = True) -> list[str]:
    problems = _missing(folder, MODEL_FILES)
    if not ((folder / "tokenizer.json").exists() or (folder / "vocab.txt").exists()):
        problems.append("the tokenizer is missing: neither tokenizer.json nor vocab.txt is there")
    config: dict[str, Any] = {}
    if (folder / "config.json").exists():
        try:
            config = json.loads((folder / "config.json").read_text())
        except json.JSONDecodeError as error:
            problems.append(f"config.json is not valid JSON: {error}")
    if config:
        if config.get("model_type") != "airrep":
            problems.append(f"config.json: model_type is {config.get('model_type')!r}, not 'airrep'")
        auto_map = config.get("auto_map")
        if not isinstance(auto_map, dict):
            problems.append("config.json has no auto_map: AutoModel cannot find the model's code "
                            "(save with AirRepModel.save_pretrained)")  # fmt: skip
        else:
            for key, target in AUTO_MAP.items():
                if auto_map.get(key) != target:
                    problems.append(f"config.json: auto_map[{key!r}] is {auto_map.get(key)!r}, not {target!r}")
    card = read_card(folder, problems)
    if card:
        if card.get("library_name") != "transformers":
            problems.append(f"card metadata: library_name is {card.get('library_name')!r}, not 'transformers'")
        if card.get("pipeline_tag") != "feature-extraction":
            problems.append(f"card metadata: pipeline_tag is {card.get('pipeline_tag')!r}, not 'feature-extraction'")
        tags = card.get("tags") or []
        for tag in ("custom_code", "airrep"):
            if tag not in tags:
                problems.append(f"card metadata: tags lack {tag!r}")
        for dataset in card.get("datasets") or []:
            if Path(dataset).exists() or str(dataset).startswith((".", "/")):
                problems.append(f"card metadata: datasets entry {dataset!r} is a local path, not a Hub id")
    if load and not problems:
        error = _run_isolated(
            "import os, numpy as np\n"
            "from transformers import AutoModel\n"
            "from sentence_transformers import SentenceTransformer\n"
            "folder = os.environ['FOLDER']\n"
            "a = AutoModel.from_pretrained(folder, trust_remote_code=True).encode(['Question: x\\nAnswer: y'])\n"
            "b = SentenceTransformer(folder, trust_remote_code=True).encode(['Question: x\\nAnswer: y'])\n"
            "assert np.allclose(a, b, atol=1e-4), 'AutoModel and SentenceTransformer disagree'\n",
            folder,
        )
        if error:
            problems.append(f"the folder does not load offline with trust_remote_code: {error}")
    return problems


def _check_data_files(folder: Path, configs: dict[str, dict], problems: list[str]) -> None:
    for name, config in configs.items():
        for entry in config.get("data_files") or []:
            paths = entry.get("path") if isinstance(entry, dict) else entry
            for path in [paths] if isinstance(paths, str) else paths or []:
                if not any(folder.glob(path)):
                    problems.append(f"card metadata: config {name!r} names data file {path!r}, which is missing")


def validate_dataset(folder: Path, load: bool = True) -> list[str]:
    """A labels dataset (``generate_labels.py``) or a selection (``select_data.py``), told apart by the
    record each keeps beside its data (``summary.json``, ``selection.json``)."""
    problems: list[str] = []
    card = read_card(folder, problems)
    configs = {c.get("config_name"): c for c in card.get("configs") or [] if isinstance(c, dict)}
    if (folder / SELECTION_FILE).exists():
        if card and "default" not in configs:
            problems.append("card metadata: configs lack 'default' (a selection is one table)")
        _check_data_files(folder, configs, problems)
        if load and not problems:
            error = _run_isolated(
                "import os\nfrom datasets import load_dataset\n"
                "table = load_dataset(os.environ['FOLDER'], split='train')\n"
                f"missing = set({ADDED_COLUMNS!r}) - set(table.column_names)\n"
                "assert not missing, f'the selection lacks the columns {sorted(missing)}'\n",
                folder,
            )
            if error:
                problems.append(f"the selection does not load offline: {error}")
        return problems
    if card:
        for name in CONFIGS:
            if name not in configs:
                problems.append(f"card metadata: configs lack {name!r} (a labels dataset has pool, queries, labels)")
        _check_data_files(folder, configs, problems)
    if not (folder / SUMMARY_FILE).exists():
        problems.append(
            f"{SUMMARY_FILE} is missing: eval_lds.py reads the mode, target LM and SFT settings there "
            f"(a selection keeps {SELECTION_FILE} instead)"
        )
    if load and not problems:
        error = _run_isolated(
            "import os\nfrom datasets import load_dataset\nfolder = os.environ['FOLDER']\n"
            "labels = load_dataset(folder, 'labels', split='train')\n"
            f"missing = set({LABEL_COLUMNS!r}) - set(labels.column_names)\n"
            "assert not missing, f'labels lacks the columns {sorted(missing)}'\n"
            "for name in ('pool', 'queries'):\n"
            "    table = load_dataset(folder, name, split='train')\n"
            "    assert 'text' in table.column_names, f'{name} lacks the column text'\n",
            folder,
        )
        if error:
            problems.append(f"the dataset does not load offline: {error}")
    return problems


def imported_modules(path: Path) -> set[str]:
    """Top-level names of a Python file's absolute imports (``import a.b``, ``from a.b import c``: ``a``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def validate_space(folder: Path, load: bool = True) -> list[str]:
    problems = _missing(folder, ("requirements.txt",))
    card = read_card(folder, problems)
    app_file = None
    if card:
        for key, expected in (("sdk", "gradio"), ("python_version", "3.11")):
            if str(card.get(key)) != expected:
                problems.append(f"card metadata: {key} is {card.get(key)!r}, not {expected!r}")
        if not card.get("sdk_version"):
            problems.append("card metadata: sdk_version is missing (the gradio version the Space runs)")
        app_file = card.get("app_file")
        if not app_file:
            problems.append("card metadata: app_file is missing")
        elif not (folder / app_file).exists():
            problems.append(f"card metadata: app_file {app_file!r} is not in the folder")
            app_file = None
        if not card.get("models"):
            problems.append("card metadata: models is missing (the AirRep checkpoint(s) the Space uses)")
    if app_file and (folder / "requirements.txt").exists():
        required = {
            line.split("==")[0].split(">=")[0].split("[")[0].strip().lower().replace("_", "-")
            for line in (folder / "requirements.txt").read_text().splitlines()
            if line.strip() and not line.startswith(("#", "-"))
        }
        local = {p.stem for p in folder.glob("*.py")}
        for name in sorted(
            imported_modules(folder / app_file) - set(sys.stdlib_module_names) - local - SPACE_SDK_PACKAGES
        ):
            if PIP_NAMES.get(name, name).lower().replace("_", "-") not in required:
                problems.append(f"{app_file} imports {name!r}, which requirements.txt does not install")
    if load and app_file and not problems:
        error = _run_isolated(
            "import os, runpy, shutil, tempfile\n"
            "copy = shutil.copytree(os.environ['FOLDER'], os.path.join(tempfile.mkdtemp(), 'space'))\n"
            f"namespace = runpy.run_path(os.path.join(copy, {app_file!r}), run_name='space_app')\n"
            "assert 'demo' in namespace, 'the app defines no demo'\n",
            folder,
        )
        if error:
            problems.append(f"{app_file} does not build offline from the folder alone: {error}")
    return problems


VALIDATORS = {"model": validate_model, "dataset": validate_dataset, "space": validate_space}


def validate(kind: str, folder: str | os.PathLike, load: bool = True) -> list[str]:
    """Every problem that would stop ``folder`` from working as a Hub repo of ``kind``; empty when fine."""
    if kind not in VALIDATORS:
        raise UsageError(f"kind must be one of {KINDS}, got {kind!r}")
    if not Path(folder).is_dir():
        return [f"{folder} is not a folder"]
    folder = Path(folder).resolve()  # the loading checks run from another directory
    return VALIDATORS[kind](folder, load)


def main(argv: list[str]) -> int:
    parser = cli.ArgumentParser((), description=__doc__, formatter_class=RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=KINDS, help="the repo type the folder will be uploaded as")
    parser.add_argument("folder", help="the folder to check")
    parser.add_argument("--no-load", "--no_load", dest="load", action="store_false",
                        help="skip the offline loading check")  # fmt: skip
    args = parser.parse_args(argv)
    problems = validate(args.kind, args.folder, args.load)
    if problems:
        print(f"{args.folder} is not ready to upload as a {args.kind}:", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    print(f"{args.folder}: ready to upload as a {args.kind} (hf upload ORG/NAME {args.folder}"
          f"{'' if args.kind == 'model' else f' --repo-type {args.kind}'})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, prog="python -m airrep.serving.validate"))
