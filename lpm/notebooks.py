"""The batch main job: execute every notebook with papermill into ``results/notebooks/``.

``lpm reproduce`` calls :func:`run_all`: a line when each notebook starts and ends, and in between every
line the notebook's cells print (prefixed with the notebook's name), so long stages show progress as they
happen; the executed copies go next to the figures, tables and records they write, and on failure a
:class:`NotebookFailed` names the notebook and the cell (the CLI turns it into a non-zero exit with that
message). Kernels talk to papermill over local IPC sockets in a private temporary folder, not over TCP (no
ports opened, and no "Kernel is running over TCP without encryption" warning).
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from lpm import staging
from lpm.paths import NOTEBOOK_DIR, PROJECT_ROOT

__all__ = ["NOTEBOOK_DIR", "NOTEBOOK_ORDER", "NotebookFailed", "find_notebooks", "run_all"]

#: Run order: the claims table reads what the others recorded, so it goes last.
NOTEBOOK_ORDER = ("rd_curves", "attention_maps", "savings", "rate_slider", "comparison", "claims")


class NotebookFailed(RuntimeError):
    """A notebook raised; ``notebook``, ``cell`` (0-based index) and ``error`` say where and what."""

    def __init__(self, notebook: str, cell: Optional[int], error: str, output: Path) -> None:
        where = f"cell {cell}" if cell is not None else "an unknown cell"
        super().__init__(f"notebook {notebook} failed in {where}: {error} (executed copy: {output})")
        self.notebook, self.cell, self.error, self.output = notebook, cell, error, output


def find_notebooks(directory: Path = NOTEBOOK_DIR, only: Optional[Sequence[str]] = None) -> list[Path]:
    """Notebooks of ``directory`` in :data:`NOTEBOOK_ORDER` (others after, alphabetically)."""
    found = {p.stem: p for p in sorted(Path(directory).glob("*.ipynb"))}
    if not found:
        raise FileNotFoundError(f"no notebooks in {directory}")
    if only:
        missing = [n for n in only if Path(n).stem not in found]
        if missing:
            raise FileNotFoundError(f"no such notebook(s) in {directory}: {', '.join(missing)}")
        found = {k: v for k, v in found.items() if k in {Path(n).stem for n in only}}
    order = [n for n in NOTEBOOK_ORDER if n in found] + sorted(n for n in found if n not in NOTEBOOK_ORDER)
    return [found[n] for n in order]


def _source_cell(executed: Path, index: int) -> tuple[int, str]:
    """Map the failing cell's index (papermill counts the cells it executed, before it adds its
    ``papermill-error-cell-tag`` markers to the saved copy) back to the source notebook (papermill also inserts
    an ``injected-parameters`` cell) and return it with the cell's first line."""
    try:
        import nbformat

        cells = [c for c in nbformat.read(str(executed), as_version=4).cells
                 if "papermill-error-cell-tag" not in c.metadata.get("tags", [])]
        injected = sum(1 for c in cells[:index] if "injected-parameters" in c.metadata.get("tags", []))
        first = cells[index].source.strip().splitlines()[0][:80] if cells[index].source.strip() else ""
        return index - injected, first
    except Exception:  # the executed copy may be incomplete; the raw index is still useful
        return index, ""


class _Prefixed(io.TextIOBase):
    """A text stream that writes each complete line to ``log`` with a prefix (cell output of one notebook)."""

    def __init__(self, prefix: str, log: Callable[[str], None]) -> None:
        self.prefix, self.log, self.buf = prefix, log, ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.buf += text
        *lines, self.buf = self.buf.split("\n")
        for line in lines:
            line = line.rsplit("\r", 1)[-1]  # a progress bar redrawn with \r: its latest state
            if line.strip():
                self.log(f"{self.prefix}{line}")
        return len(text)

    def flush(self) -> None:
        if self.buf.strip():
            self.log(f"{self.prefix}{self.buf.rsplit(chr(13), 1)[-1]}")
        self.buf = ""


def _ipc_kernel_manager(folder: str) -> type:
    """A kernel manager whose kernels use IPC sockets under ``folder`` instead of TCP ports."""
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import CaselessStrEnum

    class IPCKernelManager(AsyncKernelManager):
        transport = CaselessStrEnum(["tcp", "ipc"], default_value="ipc", config=True)

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.ip = os.path.join(folder, "kernel")

    return IPCKernelManager


def _keep_failed(running: Path, failed: Path) -> Path:
    """Move a failed run's executed copy to ``failed`` (what it shows is the failure); the good copy stays."""
    if running.exists():
        os.replace(running, failed)
    return failed


def _results_folders(results: Path) -> list[Path]:
    """Where the batch's notebooks may write (:func:`lpm.figures.results_dir`): ``results/``, the folders under
    ``results/cache/``, and ``RESULTS_DIR``."""
    root = PROJECT_ROOT / "results"
    return list(dict.fromkeys([root, *sorted(p for p in (root / "cache").glob("*") if p.is_dir()), results]))


def run_all(
    parameters: dict[str, Any],
    *,
    notebooks: Optional[Sequence[Path]] = None,
    out_dir: Optional[Path] = None,
    kernel_name: str = "python3",
    timeout: Optional[int] = None,
    log: Callable[[str], None] = print,
) -> list[Path]:
    """Execute ``notebooks`` (default: all, in order) with ``parameters``; returns the executed copies.

    They go to ``out_dir`` (default: ``RESULTS_DIR/notebooks``, for a smoke run ``results/cache/smoke/notebooks``,
    else ``results/notebooks``). Each is written under a temporary name while it runs: a good run replaces the
    previous copy, a failed one is kept as ``<name>.failed.ipynb`` beside it and the previous good copy stays (until a
    good run, which removes the failed copy).

    Figures, tables and records are all or nothing (:mod:`lpm.staging`): the notebooks write them to a stage,
    moved into place only when every notebook succeeded; after a failed or interrupted batch they are those of
    the last complete batch (cached evaluations under ``eval/`` are kept: they are keyed by content).
    """
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    notebooks = list(notebooks) if notebooks is not None else find_notebooks()
    if parameters.get("RESULTS_DIR"):
        results = Path(parameters["RESULTS_DIR"])
    else:
        results = PROJECT_ROOT / "results" / ("cache/smoke" if parameters.get("SMOKE") else "")
    out_dir = Path(out_dir) if out_dir else results / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    done = []
    staging.recover(_results_folders(results), log)
    sockets = tempfile.mkdtemp(prefix="lpm-kernels-")
    manager = _ipc_kernel_manager(sockets)
    batch = tempfile.mkdtemp(prefix=f"lpm-batch-{os.getpid()}-", dir=sockets)
    saved_env = {k: os.environ.get(k) for k in ("LPM_STAGE", "LPM_STAGE_NOTEBOOK")}
    os.environ["LPM_STAGE"] = batch
    published = False
    try:
        for i, nb in enumerate(notebooks, 1):
            os.environ["LPM_STAGE_NOTEBOOK"] = nb.stem
            out = out_dir / nb.name
            running, failed = out_dir / f".{nb.stem}.running.ipynb", out_dir / f"{nb.stem}.failed.ipynb"
            t0 = time.perf_counter()
            log(f"[{i}/{len(notebooks)}] {nb.name} ...")
            stream = _Prefixed(f"  {nb.stem}: ", log)
            try:
                pm.execute_notebook(
                    str(nb), str(running), parameters=parameters, kernel_name=kernel_name, progress_bar=False,
                    cwd=str(nb.parent), execution_timeout=timeout, stdout_file=stream,
                    kernel_manager_class=manager,
                )
            except PapermillExecutionError as e:
                cell, first_line = _source_cell(running, e.cell_index)
                msg = f"{e.ename}: {' '.join(str(e.evalue).split())[:600]}" + (f" [cell starts: {first_line}]" if first_line else "")
                raise NotebookFailed(nb.name, cell, msg, _keep_failed(running, failed)) from None
            except BaseException as e:  # kernel died, bad notebook file, Ctrl-C, ...
                kept = _keep_failed(running, failed)
                if not isinstance(e, Exception):
                    raise
                why = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
                raise NotebookFailed(nb.name, None, why, kept) from None
            finally:
                stream.flush()
            os.replace(running, out)
            failed.unlink(missing_ok=True)  # an earlier run's failure is no longer what this notebook does
            log(f"[{i}/{len(notebooks)}] {nb.name} done in {time.perf_counter() - t0:.1f} s -> {out}")
            done.append(out)
        staging.publish(Path(batch), [nb.stem for nb in notebooks], log)
        published = True
    finally:  # also on a failure or Ctrl-C: nothing staged is published, the kernels' socket folder goes
        if not published:
            kept = staging.discard(Path(batch))
            log("nothing of this batch was published: figures, tables and records"
                + (f" in {', '.join(map(str, kept))}" if kept else "") + " are those of the last complete batch")
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(sockets, ignore_errors=True)
    return done
