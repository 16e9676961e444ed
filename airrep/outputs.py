"""Output folders: atomic writes, a settings record that a rerun must match, and Hub repos on disk.

Every long job here (label generation, evaluation, corpus embedding) resumes in its output folder.
It records its settings there on the first run and refuses to mix results made with other
settings; every file is written whole or not at all, so a killed job never leaves half a file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from airrep.cli import UsageError

if TYPE_CHECKING:
    from datasets import Dataset


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
        UsageError: the recorded settings differ; the message names the keys that differ.
    """
    folder = Path(folder)
    file = folder / file_name
    if file.exists():
        differences = differing_keys(json.loads(file.read_text()), settings)
        if differences:
            raise UsageError(f"{folder} was made with other settings (they differ in {differences}); {hint}")
        return
    write_json(file, settings)


def digest_files(folder: Path, files: list[Path], algorithm: str = "sha256") -> str:
    """Hex digest of ``files`` (paths inside ``folder``): each one's relative path, then its bytes."""
    digest = hashlib.new(algorithm)
    for path in files:
        digest.update(str(path.relative_to(folder)).encode())
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()


def install_in_offline_cache(
    folder: str | os.PathLike, repo_id: str, cache_dir: str | os.PathLike, repo_type: str = "model"
) -> Path:
    """Copy a repo folder into a Hugging Face Hub cache so that it loads by ``repo_id`` offline.

    The layout is the one ``huggingface_hub`` writes after a download:
    ``<cache_dir>/<type>s--<org>--<name>/refs/main`` holds a 40-hex commit id (no newline) and
    ``snapshots/<commit>/`` holds the files. With ``HF_HUB_CACHE=<cache_dir>`` and
    ``HF_HUB_OFFLINE=1``, ``AutoModel.from_pretrained(repo_id, ...)`` then reads this snapshot.
    The commit id is derived from the folder's contents, so re-installing the same files is a no-op.

    Returns:
        The snapshot folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a folder")
    if repo_id.count("/") != 1:
        raise ValueError(f"repo_id must look like 'org/name', got {repo_id!r}")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and ".cache" not in p.relative_to(folder).parts)
    commit = digest_files(folder, files, "sha1")  # a 40-hex commit id, as the Hub's
    repo_root = Path(cache_dir) / f"{repo_type}s--{repo_id.replace('/', '--')}"
    snapshot = repo_root / "snapshots" / commit
    if not snapshot.exists():
        staging = snapshot.with_name(commit + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        for path in files:
            target = staging / path.relative_to(folder)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
        staging.rename(snapshot)
    (repo_root / "refs").mkdir(parents=True, exist_ok=True)
    (repo_root / "refs" / "main").write_text(commit)
    return snapshot


def write_parquet(table: Dataset, folder: str | os.PathLike, stem: str) -> str:
    """Write ``table`` to ``<folder>/data/<stem>-<content hash>.parquet`` atomically; return the path
    relative to ``folder`` for the card's ``configs`` list. Older files of the same stem are removed.

    The content hash in the name matters: datasets 5.2 keys its cache for a local folder by the
    card's ``configs`` (names and relative paths) and not by the files' contents. Two folders with
    equal cards would otherwise share one cache entry, and ``load_dataset`` would silently return
    the first folder's rows for the second.
    """
    data_dir = Path(folder) / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    staging = data_dir / f".{stem}.{os.getpid()}.tmp"
    table.to_parquet(str(staging))
    digest = hashlib.sha256(staging.read_bytes()).hexdigest()[:12]
    target = data_dir / f"{stem}-{digest}.parquet"
    os.replace(staging, target)
    for old in data_dir.glob(f"{stem}-*.parquet"):
        if old != target:
            old.unlink()
    return str(target.relative_to(folder))


def configs_yaml(configs: dict[str, dict[str, str]]) -> str:
    """The ``configs:`` block of a dataset card: ``{config_name: {split: relative_path}}``."""
    lines = ["configs:"]
    for name, splits in configs.items():
        lines += [f"- config_name: {name}", "  data_files:"]
        for split, path in splits.items():
            lines += [f"  - split: {split}", f"    path: {path}"]
    return "\n".join(lines)
