"""Shared code of the AirRep-Hub scripts (not shipped to the Hub).

The model, its text format and its scoring live in the two shipped modules,
``configuration_airrep.py`` and ``modeling_airrep.py``; this package re-exports them so that scripts
call one implementation.
"""

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
