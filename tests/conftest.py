"""Shared fixtures: one untrained AirRep built from the bundled encoder and saved as a Hub folder."""

import pytest

from modeling_airrep import AirRepModel


@pytest.fixture(scope="session")
def model() -> AirRepModel:
    return AirRepModel.from_encoder()


@pytest.fixture(scope="session")
def saved_folder(model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkpoint") / "airrep-small-demo"
    model.save_pretrained(folder)
    return folder
