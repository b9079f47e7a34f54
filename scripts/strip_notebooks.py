"""Strip what running a notebook leaves in it, so that tracked notebooks carry none (the house rule: notebooks are committed without outputs).

JupyterLab saves (and autosaves) outputs, execution counts, widget state and run metadata into the
notebook file itself; papermill's executed copies go to ``results/notebooks/`` instead. This removes:
cell ``outputs`` and ``execution_count``; cell metadata ``execution`` (timings), ``collapsed``, ``scrolled``,
``papermill`` and ``jupyter.outputs_hidden``; notebook metadata ``widgets`` (ipywidgets state) and
``papermill``, and everything of ``language_info`` but its name. Sources, ids and tags are kept. The file is
written as nbformat writes it (sorted keys, one-space indent), so a clean notebook is left byte-identical.

    python3 scripts/strip_notebooks.py                 # strip notebooks/*.ipynb in place
    python3 scripts/strip_notebooks.py --check [FILE]  # list the ones with outputs, exit 1 if any
    git show :notebooks/x.ipynb | python3 scripts/strip_notebooks.py --check -   # a staged copy

Standard library only, so that the pre-commit hook (``.githooks/pre-commit``) runs without the package.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_CELL_KEYS = ("execution", "collapsed", "scrolled", "papermill")


def strip(nb: dict) -> list[str]:
    """Strip ``nb`` (a notebook as parsed JSON) in place; returns what was found, e.g. ``["outputs"]``."""
    found: list[str] = []
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            if cell.get("outputs"):
                found.append("outputs")
            if cell.get("execution_count") is not None:
                found.append("execution counts")
            cell["outputs"], cell["execution_count"] = [], None
        meta = cell.get("metadata", {})
        for key in _CELL_KEYS:
            if key in meta:
                found.append(f"cell metadata {key!r}")
                del meta[key]
        if "outputs_hidden" in meta.get("jupyter", {}):
            found.append("cell metadata 'jupyter.outputs_hidden'")
            del meta["jupyter"]["outputs_hidden"]
            if not meta["jupyter"]:
                del meta["jupyter"]
    meta = nb.get("metadata", {})
    for key in ("widgets", "papermill"):
        if key in meta:
            found.append(f"notebook metadata {key!r}")
            del meta[key]
    info = meta.get("language_info")
    if isinstance(info, dict) and set(info) - {"name"}:
        found.append("language_info details")
        meta["language_info"] = {"name": info.get("name", "python")}
    return list(dict.fromkeys(found))


def dumps(nb: dict) -> str:
    """The notebook as nbformat (and JupyterLab) writes it."""
    return json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="*", help="notebooks (default: notebooks/*.ipynb); '-' reads one from stdin")
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if any notebook needs stripping")
    args = ap.parse_args(argv)
    paths = args.paths or sorted(str(p) for p in (ROOT / "notebooks").glob("*.ipynb"))
    dirty = 0
    for name in paths:
        text = sys.stdin.read() if name == "-" else Path(name).read_text(encoding="utf-8")
        nb = json.loads(text)
        found = strip(nb)
        if not found:
            continue
        dirty += 1
        if args.check:
            print(f"{name}: carries {', '.join(found)}; run `python3 scripts/strip_notebooks.py {name}`")
        elif name != "-":
            Path(name).write_text(dumps(nb), encoding="utf-8")
            print(f"{name}: stripped {', '.join(found)}")
        else:
            sys.stdout.write(dumps(nb))
    return 1 if args.check and dirty else 0


if __name__ == "__main__":
    raise SystemExit(main())
