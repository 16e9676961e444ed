"""Stage 1, labels: the corpus, the target LM, subset models and the labels dataset they produce.

- :mod:`~airrep.labels.corpus`: the built-in synthetic instruction corpus;
- :mod:`~airrep.labels.realtext`: the real-text instruction corpus, from Debian packages;
- :mod:`~airrep.labels.target_lm`: the causal LM whose training data is attributed (built in, packaged
  pretrained ones such as SmolLM2, or any), and SFT tensors;
- :mod:`~airrep.labels.subset_training`: fine-tuning copies of it on subsets, several at once;
- :mod:`~airrep.labels.ladder`: target LMs grown by fixed factors (the ladder's rungs);
- :mod:`~airrep.labels.dataset`: the labels dataset's contract, writer and reader;
- :mod:`~airrep.labels.generation`: the whole stage, as ``generate_labels.py`` runs it.
"""

from airrep import lazy_exports

_EXPORTS = {
    "LABEL_COLUMNS": "dataset",
    "LabelsData": "dataset",
    "LabelsFormatError": "dataset",
    "Split": "dataset",
    "lds_split": "dataset",
    "load_labels": "dataset",
    "normalise_losses": "dataset",
    "write_labels_dataset": "dataset",
    "LabelArguments": "generation",
    "generate_labels": "generation",
    "SFTSettings": "subset_training",
    "TargetLMSpec": "target_lm",
    "convert_packaged_lm": "target_lm",
    "write_realtext_corpus": "realtext",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
