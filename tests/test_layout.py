"""The repository's shape: dependencies point one way (command lines -> airrep -> shipped modules),
the library is organised by stage, and the docs that users follow resolve."""

import importlib
import re

import pytest
from helpers import REPO

from airrep.serving.validate import imported_modules

SCRIPTS = sorted(p.stem for p in REPO.glob("*.py") if p.stem not in {"configuration_airrep", "modeling_airrep"})
STAGES = ("labels", "training", "evaluation", "serving")


def test_the_command_lines_are_the_ones_documented():
    assert SCRIPTS == ["eval_lds", "generate_labels", "ladder_report", "select_data", "train_airrep"]


@pytest.mark.parametrize("folder", ["airrep", "tests", "benchmarks", "space", "metrics"])
def test_nothing_imports_a_command_line(folder):
    offenders = {
        str(path.relative_to(REPO)): sorted(imported_modules(path) & set(SCRIPTS))
        for path in (REPO / folder).rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_shipped_modules_import_nothing_of_the_project():
    for name in ("configuration_airrep", "modeling_airrep"):
        imported = imported_modules(REPO / f"{name}.py")
        assert not imported & {"airrep", *SCRIPTS}, (name, imported)


@pytest.mark.parametrize("script", SCRIPTS)
def test_each_command_line_is_thin(script):
    lines = (REPO / f"{script}.py").read_text().count("\n")
    assert lines <= 120, f"{script}.py has {lines} lines: move its logic into airrep/"


def test_the_library_is_organised_by_stage():
    # Beside the stages: what every stage shares, the demo, and `python -m airrep.convert`'s dispatch to the
    # stage that converts (the authors' checkpoints: serving; their labels: labels).
    top = sorted(p.stem for p in (REPO / "airrep").glob("*.py"))
    assert top == ["__init__", "cli", "convert", "demo", "lds", "outputs", "presets"]
    packages = sorted(p.parent.name for p in (REPO / "airrep").glob("*/__init__.py"))
    assert packages == sorted(STAGES)


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_names_its_public_api(stage):
    package = importlib.import_module(f"airrep.{stage}")
    assert package.__all__, stage
    for name in package.__all__:
        assert getattr(package, name) is not None, f"airrep.{stage}.{name}"
    with pytest.raises(AttributeError, match="has no attribute 'nothing_here'"):
        package.nothing_here  # noqa: B018


def test_loggers_are_named_after_their_modules():
    for path in [*(REPO / "airrep").rglob("*.py"), *(REPO / f"{s}.py" for s in SCRIPTS)]:
        for call in re.findall(r"getLogger\(([^)]*)\)", path.read_text()):
            assert call == "__name__", f"{path.relative_to(REPO)}: getLogger({call})"


def test_no_reference_to_a_file_outside_the_repository():
    outside = "DESIGN" + ".md"  # the planning notes beside the repository, which a clone does not have
    for path in REPO.rglob("*"):
        if path.suffix not in {".py", ".md", ".txt", ".sh", ".toml"} or {".venv", "out", "docs"} & set(
            path.relative_to(REPO).parts
        ):
            continue
        assert outside not in path.read_text(), path.relative_to(REPO)


def _slug(heading: str) -> str:
    """GitHub's anchor for a markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("page", ["README.md", *sorted(p.name for p in (REPO / "docs").glob("*.md"))])
def test_every_link_resolves(page):
    path = REPO / page if page == "README.md" else REPO / "docs" / page
    text = path.read_text()
    if page == "README.md":
        assert len(text.encode()) <= 12 * 1024, "the README is a quick start: stage references go under docs/"
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://")):
            continue
        file, _, anchor = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        assert linked.exists(), f"{page}: {target}"
        if anchor:
            headings = re.findall(r"(?m)^#+ (.+)$", linked.read_text())
            assert anchor in {_slug(h) for h in headings}, f"{page}: {target}"
