"""Partial checkpoints: carry a run across machines that keep nothing, with weights small enough to travel.

A GPU lent for minutes at a time cannot bring back a training state (``state.pt`` holds the optimizer: about
12 bytes per parameter, ~90 MB at paper size), so every clean stop of a run (``max_minutes``, SIGTERM,
Ctrl-C) also writes ``partial.safetensors`` beside the state: the stage's model in half precision (the
entropy models in float32), a valid codec checkpoint that ``lpm eval`` can measure, whose ``meta`` carries
the ledger so far, the budget line (it says "stopped at step k of N") and a ``partial`` record: run name and
kind, stage index and name, step, the run's clocks, the stages already finished and the earlier restarts.

``lpm train CONFIG --continue-from partial.safetensors`` (config key ``continue_from``) starts a run in a
fresh out_dir from there: the stages are built as usual (from ``init``), the partial weights are loaded into
the stage that was cut, the finished stages are skipped, the step counter, learning-rate schedule, ledger
and clocks continue; the optimizer is **fresh** (its moments did not travel), so the learning rate ramps up
linearly over ``restart_warmup`` steps, and crops are drawn from a new stream (seeded by the restart count,
so a continuation does not replay the crops it already saw). The stage's ledger record lists every such
restart (``restarts``: step, the partial file's sha256, ``optimizer: fresh``, warm-up steps), so the budget
says honestly that the run was not one uninterrupted optimisation.

Only the partial file's metadata decides where to continue, and it is checked against the run (same run
name and kind, a stage of that name at that index, a step inside the stage, finite clocks) before anything
is written; a mismatch is a :class:`~lpm.train.state.TrainingStateError` naming the file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from lpm.checkpoints import CheckpointError, load_codec
from lpm.train.ledger import valid_records
from lpm.train.state import TrainingStateError, gpu_clocks_valid

if TYPE_CHECKING:
    from torch import nn

    from lpm.train.config import RunConfig
    from lpm.train.stages import Stage

__all__ = ["PARTIAL_FILE", "Restart", "partial_record", "read_partial", "load_partial_weights", "warmup_factor",
           "restart_seed"]

#: The partial checkpoint's name in a run's out_dir.
PARTIAL_FILE = "partial.safetensors"


@dataclass(frozen=True)
class Restart:
    """Where a continued run starts: stage ``stage`` (``stage_name``) after ``step`` steps, from the weights of
    ``path`` (``sha256``); ``ledger``/``finished``/clocks as they were; ``restarts`` the records of this stage's
    earlier restarts plus this one."""

    path: Path
    sha256: str
    stage: int
    stage_name: str
    step: int
    elapsed: float
    stage_start: float
    ledger: list[dict] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    restarts: list[dict] = field(default_factory=list)
    warmup: int = 0
    gpu_elapsed: Optional[float] = None  # the GPU share of the clocks (None: a file from before they existed)
    stage_gpu_start: Optional[float] = None


def warmup_factor(step: int, restart: Optional[Restart]) -> float:
    """The learning-rate factor of (1-based) ``step`` of the restarted stage: a linear ramp over
    ``restart.warmup`` steps after the restart step, 1 elsewhere."""
    if restart is None or restart.warmup <= 0 or step <= restart.step:
        return 1.0
    return min(1.0, (step - restart.step) / restart.warmup)


def restart_seed(seed: int, restart: Optional[Restart]) -> int:
    """A crop/rate stream seed for the restarted stage that differs from the original and earlier restarts'."""
    return seed if restart is None else seed + 104_729 * len(restart.restarts)


def partial_record(cfg: "RunConfig", *, stage: int, stage_name: str, step: int, elapsed: float,
                   stage_start: float, finished: list[str], restarts: list[dict], gpu_elapsed: float = 0.0,
                   stage_gpu_start: float = 0.0) -> dict[str, Any]:
    """The ``partial`` entry of a partial checkpoint's ``meta``."""
    return {"run": cfg.name, "kind": cfg.kind, "stage": stage, "stage_name": stage_name, "step": step,
            "steps": cfg.steps, "elapsed": elapsed, "stage_start": stage_start, "finished": finished,
            "restarts": restarts, "gpu_elapsed": gpu_elapsed, "stage_gpu_start": stage_gpu_start}


def _fail(path: Path, why: str) -> TrainingStateError:
    return TrainingStateError(f"{path}: cannot continue from this file: {why}")


def read_partial(path: str | Path, cfg: "RunConfig", stages: list["Stage"],
                 init_sha256: Optional[str]) -> tuple["nn.Module", Restart]:
    """The weights and the :class:`Restart` of partial checkpoint ``path`` for run ``cfg`` with ``stages``
    started from the checkpoint ``init_sha256``; :class:`TrainingStateError` if it is no partial checkpoint
    of this run."""
    path = Path(path)
    try:
        loaded = load_codec(path)
    except CheckpointError as e:
        raise _fail(path, str(e).removeprefix(f"{path}: ")) from None
    p = loaded.meta.get("partial")
    if not isinstance(p, dict):
        raise _fail(path, "it is not a partial checkpoint (no 'partial' record; a finished model goes in `init:`)")
    if p.get("run") != cfg.name or p.get("kind") != cfg.kind:
        raise _fail(path, f"it belongs to the {p.get('kind')!r} run {p.get('run')!r}, not to the {cfg.kind!r} run "
                          f"{cfg.name!r}")
    if loaded.meta.get("init_sha256") != init_sha256:
        raise _fail(path, f"it was trained from init {str(loaded.meta.get('init_sha256'))[:16]}…, this run starts "
                          f"from {str(init_sha256)[:16]}…")
    i, name, step = p.get("stage"), p.get("stage_name"), p.get("step")
    if not (isinstance(i, int) and 0 <= i < len(stages)) or stages[i].name != name:
        raise _fail(path, f"this run has no stage {name!r} at position {i!r}")
    if not (isinstance(step, int) and 0 <= step < cfg.steps):
        raise _fail(path, f"step {step!r} is not inside a stage of {cfg.steps} steps")
    clocks = [p.get("elapsed"), p.get("stage_start")]
    if not all(isinstance(c, (int, float)) and math.isfinite(c) and c >= 0 for c in clocks) or clocks[1] > clocks[0]:
        raise _fail(path, "its clocks are not valid")
    gpu_clocks = (p.get("gpu_elapsed"), p.get("stage_gpu_start"))
    if gpu_clocks != (None, None) and not gpu_clocks_valid(*gpu_clocks, *clocks):
        raise _fail(path, "its GPU clocks are not valid")
    ledger, finished, restarts = loaded.meta.get("ledger", []), p.get("finished", []), p.get("restarts", [])
    if not (valid_records(ledger)
            and isinstance(finished, list) and all(isinstance(f, str) for f in finished)
            and isinstance(restarts, list) and all(isinstance(r, dict) for r in restarts)):
        raise _fail(path, "its ledger, finished list or restarts are not valid")
    if len(ledger) != i:
        raise _fail(path, f"its ledger has {len(ledger)} finished stages, the stage index says {i}")
    model = stages[i].model
    if type(loaded.model) is not type(model):
        raise _fail(path, f"it holds a {type(loaded.model).__name__}, stage {name!r} trains a {type(model).__name__}")
    this = {"at_step": step, "from_sha256": loaded.sha256, "optimizer": "fresh", "warmup_steps": cfg.restart_warmup}
    restart = Restart(path, loaded.sha256, i, name, step, float(clocks[0]), float(clocks[1]), ledger, finished,
                      [*restarts, this], cfg.restart_warmup, *(None if c is None else float(c) for c in gpu_clocks))
    return loaded.model, restart


def load_partial_weights(path: Path, source: "nn.Module", target: "nn.Module", *, frozen_base: bool) -> None:
    """Copy the partial checkpoint's weights into the stage's model (same kind, same shapes) in place.
    ``frozen_base``: the target's ``base.*`` weights stay as they are (those of ``init``, in full precision;
    the partial file holds them in half precision only so that it is a complete codec checkpoint)."""
    state = source.state_dict()
    own = target.state_dict()
    if frozen_base:
        state = {k: (own[k] if k.startswith("base.") and k in own else v) for k, v in state.items()}
    try:
        target.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError, KeyError) as e:
        raise _fail(path, f"its weights do not fit this run's model ({' '.join(str(e).split())[:200]})") from None
