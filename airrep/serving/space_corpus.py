"""The Space's built-in corpus: the demo preset's pool, bundled in ``space/`` as one parquet file so
that the Space runs with nothing but its own folder.

    python -m airrep.serving.space_corpus          # rewrites space/builtin_pool.parquet
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from airrep.labels.corpus import generate_split_records
from airrep.presets import LABEL_PRESETS

BUILTIN_POOL = Path(__file__).parents[2] / "space" / "builtin_pool.parquet"


def builtin_pool_records(preset: str = "demo") -> list[dict[str, Any]]:
    """The pool (``train`` split) of the built-in corpus at ``preset``'s sizes and seed."""
    settings = LABEL_PRESETS[preset]
    sizes = {"pretrain": settings.pretrain_size, "train": settings.pool_size, "test": settings.test_size}
    return generate_split_records(sizes, settings.corpus_seed)["train"]


def write_builtin_pool(path: str | Path = BUILTIN_POOL, preset: str = "demo") -> Path:
    from datasets import Dataset

    Dataset.from_list(builtin_pool_records(preset)).to_parquet(str(path))
    return Path(path)


if __name__ == "__main__":
    print(write_builtin_pool())
