"""Where the project's own folders are (no torch import): the one home of ``PROJECT_ROOT``.

Paths given by users are resolved by the code that takes them (:mod:`lpm.data` for data directories,
:mod:`lpm.figures` for results directories: relative to the project root, say their docstrings); nothing in
lpm depends on the current directory.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["PROJECT_ROOT", "RESULTS", "CHECKPOINT_DIR", "NOTEBOOK_DIR", "DATA"]

#: The checkout (or installed tree) that holds ``lpm/``, ``notebooks/``, ``results/``, ``data/``.
PROJECT_ROOT: Path = Path(__file__).resolve().parent.parent
RESULTS: Path = PROJECT_ROOT / "results"
CHECKPOINT_DIR: Path = RESULTS / "checkpoints"
NOTEBOOK_DIR: Path = PROJECT_ROOT / "notebooks"
DATA: Path = PROJECT_ROOT / "data"
