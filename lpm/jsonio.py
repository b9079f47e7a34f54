"""Strict JSON for every results file lpm writes (evaluation JSON, records, classical codecs, ledgers).

:func:`strict_json` makes a copy that the JSON standard can hold — non-finite floats become ``null``,
numpy scalars/arrays and pandas frames become Python values, paths and other objects become strings — and
:func:`write_json` writes it atomically (:func:`lpm.fsutil.atomic_write`) with ``allow_nan=False``, so a
results file never contains ``NaN`` (which many JSON readers refuse).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lpm.fsutil import atomic_write_text

__all__ = ["strict_json", "write_json"]


def strict_json(obj: Any) -> Any:
    """JSON-safe copy of ``obj`` (see the module docstring)."""
    if obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, Mapping):
        return {str(k): strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [strict_json(v) for v in obj]
    if isinstance(obj, bool):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    mod = type(obj).__module__.split(".")[0]
    if mod == "numpy":
        return strict_json(obj.tolist() if hasattr(obj, "tolist") else obj.item())
    if mod == "pandas" and hasattr(obj, "to_dict"):
        return strict_json(obj.to_dict(orient="records"))
    if mod == "torch" and hasattr(obj, "tolist"):
        return strict_json(obj.tolist())
    return str(obj)


def write_json(path: str | os.PathLike[str], obj: Any, *, indent: int = 2) -> Path:
    """Write ``strict_json(obj)`` to ``path`` atomically (creating its folder); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(strict_json(obj), indent=indent, allow_nan=False) + "\n")
    return path
