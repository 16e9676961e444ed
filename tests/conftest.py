"""Shared fixtures: one untrained AirRep built from the bundled encoder and saved as a Hub folder, smoke
labels of both modes, and an eval_lds.py report over the lds ones."""

import pytest

from airrep.evaluation import EvalArguments, evaluate
from airrep.labels import LabelArguments
from airrep.labels import generate_labels as generate
from modeling_airrep import AirRepModel


@pytest.fixture(scope="session", autouse=True)
def private_inductor_cache(tmp_path_factory):
    """torch.compile's kernels are built for this run: inductor's graph cache does not key on ATen's CPU
    capability, so kernels cached by an earlier run under another one would be loaded as they are."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path_factory.mktemp("inductor-cache")))
        yield


@pytest.fixture
def no_compiler(monkeypatch):
    """This machine as one without a C++ compiler: inductor's own compiler search, pointed at none (so the
    branch without one is tested everywhere; `helpers.needs_compiler` marks the branch with one)."""
    from torch._inductor import config
    from torch._inductor.cpp_builder import cpp_compiler_search

    monkeypatch.delenv("TORCH_INDUCTOR_INSTALL_GXX", raising=False)
    cpp_compiler_search.cache_clear()
    with config.patch({"cpp.cxx": (None, "/nonexistent/g++")}):
        yield
    cpp_compiler_search.cache_clear()


@pytest.fixture(scope="session")
def model() -> AirRepModel:
    return AirRepModel.from_encoder()


@pytest.fixture(scope="session")
def saved_folder(model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkpoint") / "airrep-small-demo"
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def labels(tmp_path_factory):
    """A folder holding ``labels-lds`` and ``labels-train`` of the smoke preset (and their corpus)."""
    work = tmp_path_factory.mktemp("eval")
    for mode in ("lds", "train"):
        generate(LabelArguments(output_dir=str(work / f"labels-{mode}"), preset="smoke", mode=mode))
    return work


@pytest.fixture(scope="session")
def report(labels, saved_folder):
    """``(folder, results)`` of every eval_lds.py method on the smoke lds labels."""
    folder = labels / "report"
    results = evaluate(
        EvalArguments(labels=str(labels / "labels-lds"), output_dir=str(folder), model=[str(saved_folder)])
    )
    return folder, results
