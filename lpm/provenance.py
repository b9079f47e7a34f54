"""Where a result came from: package version, git commit, torch version, device."""

from __future__ import annotations

import functools
import os
import platform
import subprocess

import torch

from lpm import __version__
from lpm.paths import PROJECT_ROOT

__all__ = ["git_commit", "environment"]

_ROOT = PROJECT_ROOT


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """The project's git commit (with ``-dirty`` if the work tree has changes); where there is no git
    repository (a copy of the work tree on a lent GPU machine) ``$LPM_GIT_COMMIT`` if set, else ``"unknown"``."""
    try:
        rev = subprocess.run(
            ["git", "-C", str(_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("LPM_GIT_COMMIT", "").strip()[:64] or "unknown"


def device_name(device: torch.device | str = "cpu") -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def environment(device: torch.device | str = "cpu") -> dict[str, str]:
    """Versions and device, for the ``meta`` block of results and checkpoints."""
    import compressai

    return {
        "lpm_version": __version__,
        "git_commit": git_commit(),
        "torch": torch.__version__,
        "compressai": compressai.__version__,
        "python": platform.python_version(),
        "device": device_name(device),
    }
