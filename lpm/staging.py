"""All-or-nothing outputs of a notebook batch (``lpm reproduce``): figures, tables and records are staged.

While :func:`lpm.notebooks.run_all` runs, ``$LPM_STAGE`` names the batch's folder (in the temp dir) and
``$LPM_STAGE_NOTEBOOK`` the running notebook; the kernels inherit both. :func:`output_folder` (used by
:func:`lpm.figures.save_figure`, :func:`~lpm.figures.save_table` and :func:`~lpm.figures.record`) then sends
``<results>/<kind>/<file>`` to ``<results>/.staging/<batch>/<notebook>/<kind>/<file>`` and notes ``<results>``
in the batch's folder; :func:`staged_record` lets a later notebook of the batch (claims) read what an earlier
one recorded. Only when every notebook of the batch succeeded does :func:`publish` move the staged files into
place; a failed or interrupted batch (:func:`discard`, or a killed one: :func:`recover` at the next batch)
leaves the results folders' figures, tables and records exactly as the last complete batch left them. The
evaluation cache (``eval/``) and the executed notebooks are written as before (content-keyed, not staged).

Publishing: first each results folder's plan (every notebook of the batch with the files it wrote) is written
to ``publish.json`` in its stage, then the files are moved in (``os.replace``, one rename each); a batch killed
in between is finished by the next batch's :func:`recover`. ``<results>/outputs.json`` lists, per notebook,
the files it wrote and when they were published. A notebook of the batch owns what it wrote this time: a file
it wrote in its last published batch and did not write now (a figure no longer made) is removed; files of
notebooks that were not in the batch (``--only``) are left alone. Without ``$LPM_STAGE`` (a notebook run
by hand, papermill without ``lpm reproduce``) everything is written in place, as before.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

from lpm.jsonio import write_json

__all__ = ["KINDS", "MANIFEST", "discard", "output_folder", "publish", "published_path", "recover", "staged_record"]

#: The folders of a results folder that a batch publishes all at once.
KINDS = ("figures", "tables", "records")
#: Per results folder: which notebook wrote which of its files, and when they were published.
MANIFEST = "outputs.json"
_PLAN = "publish.json"


def _stage(out: Path, batch: str) -> Path:
    return Path(out) / ".staging" / Path(batch).name


def output_folder(out: Path, kind: str) -> Path:
    """Where a notebook writes ``out/<kind>/`` now: that folder, or its stage inside a batch (created)."""
    batch, notebook = os.environ.get("LPM_STAGE"), os.environ.get("LPM_STAGE_NOTEBOOK")
    if not batch or not notebook:
        folder = Path(out) / kind
    else:
        resolved = Path(out).resolve()
        note = Path(batch) / hashlib.sha1(str(resolved).encode()).hexdigest()[:16]
        if not note.exists():
            note.write_text(str(resolved), encoding="utf-8")
        folder = _stage(resolved, batch) / notebook / kind
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def published_path(path: Path) -> Path:
    """Where a file written through :func:`output_folder` lives once its batch is published:
    ``<results>/.staging/<batch>/<notebook>/<kind>/<file>`` → ``<results>/<kind>/<file>``; any other path as it is.
    For what a notebook prints or records (a staged path is gone after the batch)."""
    parts = Path(path).parts
    for i in range(len(parts) - 4, -1, -1):
        if parts[i] == ".staging" and parts[i + 1].startswith("lpm-batch-") and parts[i + 3] in KINDS:
            return Path(*parts[:i], *parts[i + 3:])
    return Path(path)


def staged_record(out: Path, filename: str) -> Optional[Path]:
    """The record ``filename`` an earlier notebook of this batch staged in ``out`` (the latest), if any."""
    batch = os.environ.get("LPM_STAGE")
    if not batch:
        return None
    found = sorted(_stage(Path(out).resolve(), batch).glob(f"*/records/{filename}"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def _staged_folders(batch: Path) -> list[Path]:
    if not batch.is_dir():
        return []
    return [_stage(Path(p.read_text(encoding="utf-8")), str(batch)) for p in sorted(batch.iterdir()) if p.is_file()]


def _owned(rel: str) -> bool:
    """A manifest entry that names a file of ``figures/``, ``tables/`` or ``records/`` (nothing else is removed)."""
    parts = Path(rel).parts
    return len(parts) == 2 and parts[0] in KINDS and parts[1] not in ("", ".", "..")


def _finish(stage: Path) -> list[str]:
    """Move a planned stage's files into its results folder, remove its notebooks' files they no longer write,
    update ``outputs.json`` and remove the stage; returns the files removed. Repeatable after a kill."""
    out = stage.parent.parent
    plan = json.loads((stage / _PLAN).read_text(encoding="utf-8"))
    for nb, files in plan["notebooks"].items():
        for rel in files:
            src = stage / nb / rel
            if src.exists():  # absent: moved in already, by a publish that was killed
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                os.replace(src, out / rel)
    path = out / MANIFEST
    manifest = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    notebooks = manifest.setdefault("notebooks", {})
    written = {rel for files in plan["notebooks"].values() for rel in files}
    removed = []
    for nb in plan["notebooks"]:
        for rel in (notebooks.get(nb) or {}).get("files", []):
            if rel not in written and _owned(rel) and (out / rel).is_file():
                (out / rel).unlink()
                removed.append(rel)
    for nb, entry in notebooks.items():  # a file another notebook writes now is no longer theirs
        if nb not in plan["notebooks"] and isinstance(entry, dict):
            entry["files"] = [f for f in entry.get("files", []) if f not in written]
    for nb, files in plan["notebooks"].items():
        notebooks[nb] = {"published": plan["published"], "files": files}
    manifest["notebooks"] = dict(sorted(notebooks.items()))
    write_json(path, manifest)
    shutil.rmtree(stage, ignore_errors=True)
    try:
        stage.parent.rmdir()
    except OSError:
        pass
    return removed


def publish(batch: Path, notebooks: Sequence[str], log: Callable[[str], None] = print) -> list[Path]:
    """Move everything the batch staged into place (every notebook in ``notebooks`` succeeded); the
    results folders it wrote to."""
    stages = [s for s in _staged_folders(Path(batch)) if s.is_dir()]
    published = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    for stage in stages:  # first every plan: from here on the batch is published, also if it is killed
        plan = {nb: sorted(str(p.relative_to(stage / nb)) for kind in KINDS for p in (stage / nb / kind).glob("*")
                           if p.is_file() and not p.name.startswith(".")) for nb in notebooks}
        write_json(stage / _PLAN, {"published": published, "notebooks": plan})
    for stage in stages:
        count = sum(len(v) for v in json.loads((stage / _PLAN).read_text(encoding="utf-8"))["notebooks"].values())
        removed = _finish(stage)
        log(f"published {count} figure, table and record files to {stage.parent.parent}"
            + (f"; removed {len(removed)} that the batch's notebooks no longer write: {', '.join(removed)}" if removed else ""))
    return [s.parent.parent for s in stages]


def discard(batch: Path) -> list[Path]:
    """Drop what a failed or interrupted batch staged; the results folders it had written to. A stage that was
    being published (its plan written) is left for the next batch's :func:`recover` to finish."""
    stages = _staged_folders(Path(batch))
    for stage in stages:
        if (stage / _PLAN).is_file():
            continue
        shutil.rmtree(stage, ignore_errors=True)
        try:
            stage.parent.rmdir()
        except OSError:
            pass
    return [s.parent.parent for s in stages]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def recover(folders: Iterable[Path], log: Callable[[str], None] = print) -> None:
    """Stages a killed batch left in ``folders``: finish one that was being published, drop the others
    (not those of a batch whose process still runs)."""
    for out in folders:
        for stage in sorted((Path(out) / ".staging").glob("lpm-batch-*")):
            try:
                pid = int(stage.name.split("-")[2])
            except (IndexError, ValueError):
                pid = -1
            if pid > 0 and pid != os.getpid() and _alive(pid):
                continue
            if (stage / _PLAN).is_file():
                _finish(stage)
                log(f"finished publishing a killed batch's outputs to {out}")
            else:
                shutil.rmtree(stage, ignore_errors=True)
                log(f"dropped the unpublished outputs of an interrupted batch in {out}")
        try:
            (Path(out) / ".staging").rmdir()
        except OSError:
            pass
