"""Stage 3, evaluation: LDS of AirRep and the baselines on held-out ``lds``-mode labels, and reports.

- :mod:`~airrep.evaluation.data`: the ``lds`` labels and records an evaluation reads;
- :mod:`~airrep.evaluation.methods`: AirRep, the base encoder, lexical and gradient methods as features;
- :mod:`~airrep.evaluation.gradient_methods`, :mod:`~airrep.evaluation.text_baselines`: the baselines' maths;
- :mod:`~airrep.evaluation.runner`: the whole stage, as ``eval_lds.py`` runs it;
- :mod:`~airrep.evaluation.report`: the report folder (tables, plot, saved score matrices);
- :mod:`~airrep.evaluation.compare_reports`, :mod:`~airrep.evaluation.compare_validation`: paired comparisons;
- :mod:`~airrep.evaluation.label_structure`: how much of the labels a metadata oracle explains;
- :mod:`~airrep.evaluation.ladder`: every rung of the target-LM ladder side by side (``ladder_report.py``).
"""

from airrep import lazy_exports

_EXPORTS = {
    "EvalData": "data",
    "labels_noise_ceiling": "data",
    "load_eval_data": "data",
    "METHODS": "methods",
    "Featurized": "methods",
    "GradientState": "methods",
    "EvalArguments": "runner",
    "evaluate": "runner",
    "format_lds": "report",
    "markdown_table": "report",
    "LadderReportArguments": "ladder",
    "build_ladder_report": "ladder",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
