"""Helpers for Hub repos kept on disk."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path


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
    digest = hashlib.sha1()
    for path in files:
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(path.read_bytes())
    commit = digest.hexdigest()
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
