"""Stage 4, serving: AirRep put to use on corpora of any size, acting on attributions, and folders
checked before upload.

- :mod:`~airrep.serving.embeddings`: a corpus encoded into a resumable embeddings dataset;
- :mod:`~airrep.serving.index`: top-k and group-influence queries over it (exact or FAISS);
- :mod:`~airrep.serving.selection`: data selection from attributions (``select_data.py``);
- :mod:`~airrep.serving.validate`: a model, dataset or Space folder checked before ``hf upload``;
- :mod:`~airrep.serving.space_corpus`: the Space's bundled pool.
"""

from airrep import lazy_exports

_EXPORTS = {
    "encode_corpus": "embeddings",
    "EmbeddingIndex": "index",
    "recall_at_k": "index",
    "validate": "validate",
    "SelectArguments": "selection",
    "select": "selection",
    "select_data": "selection",
    "pair_scores": "selection",
    "builtin_pool_records": "space_corpus",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
