"""AirRep-Hub's library (not shipped to the Hub), organised by the method's stages.

- :mod:`airrep.labels`: the corpus, the target LM, subset models and the labels dataset;
- :mod:`airrep.training`: training AirRep on ``train``-mode labels;
- :mod:`airrep.evaluation`: LDS of AirRep and the baselines on ``lds``-mode labels, and reports;
- :mod:`airrep.serving`: encoding corpora, searching them, and checking folders before upload;

plus what every stage shares: :mod:`airrep.presets`, :mod:`airrep.lds` (the metric),
:mod:`airrep.outputs` (resumable output folders), :mod:`airrep.cli` and :mod:`airrep.demo`.

The model, its text format and its scoring live in the two shipped modules,
``configuration_airrep.py`` and ``modeling_airrep.py``; this package re-exports them so that every
stage calls one implementation.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from configuration_airrep import AirRepConfig, RecordFormatError, format_text, split_record
from modeling_airrep import AirRepModel, group_influence, mean_pool, similarity, top_k

__all__ = [
    "AirRepConfig",
    "AirRepModel",
    "RecordFormatError",
    "format_text",
    "group_influence",
    "mean_pool",
    "similarity",
    "split_record",
    "top_k",
]


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for a stage package: ``exports`` maps each public name to its submodule.

    The submodule is imported on first use, so importing one stage (or ``airrep.presets``, which the
    stages read) does not import every other module of the package, and no import cycle can form.
    """

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)

    return __getattr__
