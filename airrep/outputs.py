"""Output folders that long jobs write into: atomic writes, and a settings record that a rerun must match.

Every long job here (label generation, evaluation, corpus embedding) resumes in its output folder.
It records its settings there on the first run and refuses to mix results made with other
settings; every file is written whole or not at all, so a killed job never leaves half a file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np


def _temporary(path: Path, suffix: str = ".tmp") -> Path:
    return path.with_name(f".{path.stem}.{os.getpid()}{suffix}")


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (a temporary file, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path, path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: str | os.PathLike, payload: Any) -> None:
    write_text(path, json.dumps(payload, indent=2, allow_nan=True))


def save_array(path: str | os.PathLike, array: np.ndarray) -> None:
    """``np.save`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path, ".tmp.npy")
    np.save(tmp, array)
    os.replace(tmp, path)


def save_figure(figure: Any, path: str | os.PathLike, dpi: int = 120) -> None:
    """Save a matplotlib figure atomically and close it (matplotlib is imported only here)."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path, ".tmp" + path.suffix)
    figure.savefig(tmp, dpi=dpi)
    plt.close(figure)
    os.replace(tmp, path)


def differing_keys(previous: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The keys whose values differ between two settings records, compared as their JSON forms."""
    previous, current = json.loads(json.dumps(previous)), json.loads(json.dumps(current))
    return sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))


def claim(folder: str | os.PathLike, file_name: str, settings: dict[str, Any], hint: str) -> None:
    """Record ``settings`` in ``folder/file_name``, or refuse if the folder was started with others.

    Args:
        hint: How to go on instead, for the message.

    Raises:
        ValueError: the recorded settings differ; the message names the keys that differ.
    """
    folder = Path(folder)
    file = folder / file_name
    if file.exists():
        differences = differing_keys(json.loads(file.read_text()), settings)
        if differences:
            raise ValueError(f"{folder} was made with other settings (they differ in {differences}); {hint}")
        return
    write_json(file, settings)
