"""Training progress: ``log.csv`` rows and the progress bar, with one host sync per logging interval.

:class:`StageLog` adds each step's detached losses on the device and, every ``log_every`` steps and at the
stage's last step, copies their mean to the host once, writes a row (:data:`LOG_COLUMNS`) and updates the
bar. Only rank 0 writes (``path=None`` elsewhere).
"""

from __future__ import annotations

import csv
import io
import math
import time
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import Tensor

from lpm.fsutil import atomic_write_text, open_append

__all__ = ["LOG_COLUMNS", "StageLog", "trim_log"]

LOG_COLUMNS = ("stage", "rate", "step", "loss", "bpp", "psnr", "lr", "img_per_s", "elapsed_min")


def trim_log(path: Path, keep: Callable[[str, int], bool]) -> int:
    """Rewrite ``log.csv`` (atomically) with the header and the well-formed rows for which ``keep(stage, step)``
    holds, in their order; the number of rows dropped. A run resumed from its training state drops the rows
    written after that state (they are written again, from the same steps), and a torn last line of a killed
    run; a fresh run drops them all. No file: nothing to do."""
    if not path.is_file():
        return 0
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        text = f.read()
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines = lines[:-1]  # torn: the process died while writing it
    kept, dropped = [], 0
    for row in csv.reader(lines):
        if tuple(row) == LOG_COLUMNS:
            continue
        try:
            ok = len(row) == len(LOG_COLUMNS) and keep(row[0], int(row[2]))
        except ValueError:
            ok = False
        if ok:
            kept.append(row)
        else:
            dropped += 1
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(LOG_COLUMNS)
    writer.writerows(kept)
    atomic_write_text(path, out.getvalue())
    return dropped


class StageLog:
    """Log of one stage (a context manager). ``images_per_step``: batch × processes, for img/s."""

    def __init__(
        self, path: Optional[Path], stage: str, rate: Optional[float], *, steps: int, start: int, log_every: int,
        images_per_step: int, device: torch.device, bar: bool = False,
    ) -> None:
        self.stage, self.rate, self.steps, self.every = stage, rate, steps, log_every
        self.images_per_step = images_per_step
        self.file = self.writer = self.bar = None
        if path is not None:
            new = not path.exists()
            self.file = open_append(path)
            self.writer = csv.writer(self.file)
            if new:
                self.writer.writerow(LOG_COLUMNS)
        if bar:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=steps, initial=start, desc=stage, dynamic_ncols=True)
        self.acc = torch.zeros(3, device=device)
        self.n = 0
        self.timed = 0  # steps since t_last (img/s counts this invocation's steps only, not restored ones)
        self.t_last = time.perf_counter()
        self.last_loss: Optional[float] = None  # the mean loss of the last row written

    def pending(self) -> Tensor:
        """The steps summed since the last row (``[loss, bpp, mse sums, count]``, float64 on the CPU): saved in
        the training state, so that a resumed run writes the same next row as one never stopped."""
        return torch.cat([self.acc.detach().double().cpu(), torch.tensor([float(self.n)], dtype=torch.float64)])

    def restore(self, pending: Tensor) -> None:
        """Continue the sums of :meth:`pending` (checked by :func:`lpm.train.state.read_state`)."""
        self.acc.copy_(pending[:3].to(self.acc))
        self.n = int(pending[3])

    def update(self, step: int, losses: dict[str, Tensor], lr: float, elapsed_s: float) -> None:
        """After ``step`` (1-based): add its losses; at a logging step write the interval's mean."""
        self.acc += torch.stack([losses["loss"], losses["bpp_loss"], losses["mse_loss"]])
        self.n += 1
        self.timed += 1
        if step % self.every == 0 or step == self.steps:
            loss, bpp, mse = (self.acc / self.n).tolist()  # the one host sync per log interval
            now = time.perf_counter()
            ips = self.timed * self.images_per_step / max(now - self.t_last, 1e-9)
            psnr = 10 * math.log10(1 / max(mse, 1e-12)) if math.isfinite(mse) else float("nan")
            self.last_loss = loss
            if self.writer:
                self.writer.writerow([self.stage, self.rate, step, f"{loss:.5f}", f"{bpp:.5f}", f"{psnr:.3f}",
                                      f"{lr:.3g}", f"{ips:.1f}", f"{elapsed_s / 60:.3f}"])
                self.file.flush()
            if self.bar:
                self.bar.set_postfix(loss=f"{loss:.4f}", bpp=f"{bpp:.4f}", psnr=f"{psnr:.2f}", ips=f"{ips:.0f}")
            self.acc.zero_()
            self.n, self.timed, self.t_last = 0, 0, now
        if self.bar:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar:
            self.bar.close()
        if self.file:
            self.file.close()

    def __enter__(self) -> "StageLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
