"""What several test modules share: running the repository's command lines in a fresh process, and
killing one mid-run to check that it resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _env(extra: dict[str, str]) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), **extra}


def spawn(args: list[str], **env: str) -> subprocess.Popen:
    """``python ARGS`` started from the repository root, stderr kept for the failure message."""
    return subprocess.Popen([sys.executable, *args], cwd=REPO, env=_env(env), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def run(args: list[str], timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    """``python ARGS`` from the repository root, to the end; stdout and stderr captured as text."""
    return subprocess.run([sys.executable, *args], cwd=REPO, env=_env(env), capture_output=True, text=True,
                          check=False, timeout=timeout)  # fmt: skip


def kill_when(process: subprocess.Popen, ready: Callable[[], bool], timeout: float = 300) -> None:
    """SIGKILL ``process`` (no chance to clean up) as soon as ``ready()`` holds; fail if it ends first."""
    deadline = time.time() + timeout
    while time.time() < deadline and not ready():
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.05)
    assert ready(), f"not ready after {timeout} s"
    process.send_signal(signal.SIGKILL)
    process.wait()
