"""Budget records: one per finished stage, in a run's ``ledger.jsonl`` and in its checkpoints' ``meta``.

:func:`stage_record` makes a record (fields :data:`LEDGER_FIELDS`), :func:`write_ledger` writes the records to
the file, :func:`totals` adds records up and :func:`budget_string` states a run's budget in one line (what
``lpm train`` prints and checkpoints carry). :mod:`lpm.eval.savings` reads the records back.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, Optional

import torch

from lpm.provenance import environment

__all__ = ["LEDGER_FIELDS", "stage_record", "write_ledger", "totals", "budget_string", "valid_records"]

#: One budget record per finished stage (``ledger.jsonl``), read by :mod:`lpm.eval.savings`.
LEDGER_FIELDS = (
    "run", "kind", "model", "rate", "steps", "batch", "crop", "images_in_set", "images_seen",
    "crops_seen", "gpu_minutes", "cpu_minutes", "device", "world_size",
)


def stage_record(
    *, run: str, kind: str, model: str, rate: Optional[float], steps: int, batch: int, crop: int,
    images_in_set: int, images_seen: int, minutes: float, device: torch.device, world_size: int,
    restarts: Optional[list[dict[str, Any]]] = None, gpu_minutes: Optional[float] = None,
) -> dict[str, Any]:
    """The record of a finished stage; ``minutes`` is wall time × processes, of which ``gpu_minutes`` ran on
    GPUs (default: all of it if ``device`` is one, none otherwise; a stage continued on another kind of
    device has both) and the rest on CPUs; ``restarts``: the times the stage was continued from a partial
    checkpoint with a fresh optimizer (:mod:`lpm.train.partial`), empty for one uninterrupted optimisation."""
    if gpu_minutes is None:
        gpu_minutes = minutes if device.type == "cuda" else 0.0
    gpu_minutes = min(max(gpu_minutes, 0.0), minutes)
    return {
        "run": run, "kind": kind, "model": model, "rate": rate, "steps": steps, "batch": batch, "crop": crop,
        "images_in_set": images_in_set, "images_seen": images_seen, "crops_seen": steps * batch * world_size,
        "gpu_minutes": gpu_minutes, "cpu_minutes": minutes - gpu_minutes,
        "device": environment(device)["device"], "world_size": world_size, "restarts": list(restarts or []),
    }


def _count(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


def valid_records(ledger: Any) -> bool:
    """Whether ``ledger`` (read back from a training state or a partial checkpoint) is a list of records that
    :func:`totals` and :func:`budget_string` can add up: finite non-negative ``gpu_minutes``, ``cpu_minutes``
    and ``crops_seen``, ``steps`` (if present) a non-negative integer, ``restarts`` (if present) a list of
    mappings. Checked before a run continues from them, so that a crafted record fails at once and not
    when the first stage finishes, with its out_dir half written."""
    if not isinstance(ledger, list):
        return False
    for r in ledger:
        if not isinstance(r, dict) or not all(_count(r.get(k)) for k in ("gpu_minutes", "cpu_minutes", "crops_seen")):
            return False
        steps = r.get("steps")
        if steps is not None and not (isinstance(steps, int) and not isinstance(steps, bool) and steps >= 0):
            return False
        restarts = r.get("restarts")
        if restarts is not None and not (isinstance(restarts, list) and all(isinstance(x, dict) for x in restarts)):
            return False
    return True


def write_ledger(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Write ``ledger.jsonl`` as exactly ``records``, atomically. The runner keeps the file a copy of the
    ledger in its training state (the authority): a run killed after booking a stage but before saving its
    state books that stage again on resume, and the copy is then rewritten from the state instead of
    gaining a second record (which would count the stage's budget twice)."""
    from lpm.fsutil import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def totals(records: Iterable[dict[str, Any]]) -> dict[str, float]:
    """``minutes`` (GPU + CPU), ``gpu_minutes``, ``cpu_minutes``, ``steps`` and ``crops`` of the records."""
    out = {"minutes": 0.0, "gpu_minutes": 0.0, "cpu_minutes": 0.0, "steps": 0, "crops": 0}
    for r in records:
        out["gpu_minutes"] += r["gpu_minutes"]
        out["cpu_minutes"] += r["cpu_minutes"]
        out["steps"] += int(r.get("steps") or 0)
        out["crops"] += r["crops_seen"]
    out["minutes"] = out["gpu_minutes"] + out["cpu_minutes"]
    return out


def budget_string(
    records: Iterable[dict[str, Any]], *, run: str, kind: str, on_gpu: bool, world_size: int, crop: int,
    data_set: str, live: Optional[tuple[str, int, int, float, int]] = None, live_restarts: int = 0,
    live_gpu_minutes: Optional[float] = None,
) -> str:
    """One line: the run's minutes and crops so far. ``live``: ``(stage, step, steps, minutes, crops)`` of a
    stage stopped before its end, added and named; ``live_gpu_minutes`` of its minutes ran on GPUs (default:
    all if ``on_gpu``). Minutes are named by the device they ran on (``on_gpu``: this process's device), both
    kinds when a run used both. Restarts from partial checkpoints (fresh optimizer) of the finished stages and
    ``live_restarts`` of the live one are counted."""
    records = list(records)
    t = totals(records)
    gpu, cpu, crops, partial = t["gpu_minutes"], t["cpu_minutes"], t["crops"], ""
    if live is not None:
        name, step, steps, live_minutes, live_crops = live
        live_gpu = live_minutes if live_gpu_minutes is None and on_gpu else min(live_gpu_minutes or 0.0, live_minutes)
        gpu, cpu = gpu + live_gpu, cpu + live_minutes - live_gpu
        crops += live_crops
        partial = f" (stopped at step {step} of {steps} in stage {name})"
    n = sum(len(r.get("restarts") or []) for r in records) + live_restarts
    again = f", continued {n}x from half-precision weights with a fresh optimizer" if n else ""
    if gpu > 0 and cpu > 0:
        clock = f"{gpu:.2f} GPU-minutes + {cpu:.2f} CPU-minutes"
    else:
        clock = f"{gpu + cpu:.2f} {'GPU' if gpu > 0 or (on_gpu and cpu == 0) else 'CPU'}-minutes"
    procs = "" if world_size == 1 else f" (summed over {world_size} processes)"  # minutes are already ×N
    return (f"{kind} run '{run}': {clock}{procs}, "
            f"{crops} crops of {crop}px from {data_set}{partial}{again}")
