"""The training state (``state.pt``): what a run saves to resume exactly, and the checks before resuming.

A state is a flat dict of tensors, numbers, strings and plain state dicts (:data:`STATE_FIELDS` plus
``format``), saved atomically with ``torch.save`` and read with ``torch.load(weights_only=True)`` (never
unpickling code). Resuming trusts nothing in it: :func:`read_state` checks every field and the config
against the run's, :func:`check_state_fits` the model and optimizer states against the run's stages; any
failure is a :class:`TrainingStateError` (a ``ValueError``) naming the file, raised before anything is
written.
"""

from __future__ import annotations

import dataclasses
import json
import math
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import torch
from torch import Tensor, nn

from lpm.fsutil import atomic_save, one_line
from lpm.train.ledger import valid_records
from lpm.train.stages import Stage
from lpm.train.step import TrainStep, quantile_parameters

if TYPE_CHECKING:
    from lpm.train.config import RunConfig
    from lpm.train.sampler import CropSampler

__all__ = ["STATE_FORMAT", "STATE_FIELDS", "TrainingStateError", "training_state", "save_state", "read_state",
           "check_state_fits", "restore_state"]

#: Version of the state layout; a state of another version is refused (no conversion).
STATE_FORMAT = 1
#: The fields of a state (besides ``format``) and their types.
STATE_FIELDS: dict[str, Any] = {
    "config": str, "stage": int, "step": int, "elapsed": (int, float), "stage_start": (int, float),
    "ledger": str, "model": dict, "optimizer": dict, "aux_optimizer": dict, "sampler": dict,
    "torch_rng": Tensor, "cuda_rng": Tensor, "finished_models": str, "rate_generator": Tensor,
}
#: Fields older states lack (checked where they are used); any other key is refused.
OPTIONAL_FIELDS = frozenset({"gpu_elapsed", "stage_gpu_start", "log_pending", "world_size", "rank_states",
                             "train_images", "restart"})
#: The per-process random state: each rank draws its own crops, noise and rates (rank 0's are the top-level
#: fields; a state saved by N processes holds ranks 1..N-1's under ``rank_states``, keyed by the rank).
RANK_FIELDS = ("sampler", "torch_rng", "cuda_rng", "rate_generator")
#: Config keys that may change between a run and its resumption (and ``data.dir``: the set moved; which
#: images it trains on is checked by their list, ``train_images_sha256``).
VOLATILE = frozenset({"max_minutes", "checkpoint_every", "log_every", "out_dir", "channels_last"})


def gpu_clocks_valid(gpu_elapsed: Any, stage_gpu_start: Any, elapsed: float, stage_start: float) -> bool:
    """The GPU share of a run's clocks fits them: finite, ``0 <= stage_gpu_start <= gpu_elapsed``, at most the
    elapsed time, and the stage's GPU time at most the stage's time (1 ms of float slack)."""
    ok = all(isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c) and c >= 0
             for c in (gpu_elapsed, stage_gpu_start))
    return ok and stage_gpu_start <= gpu_elapsed <= elapsed + 1e-3 and (
        gpu_elapsed - stage_gpu_start <= elapsed - stage_start + 1e-3)


class TrainingStateError(ValueError):
    """A ``state.pt`` that cannot be resumed (foreign, truncated, empty, garbage or of another run), or an
    out_dir whose outputs a run would overwrite. Nothing is written when it is raised."""


def training_state(
    cfg: "RunConfig", *, stage: int, step: int, elapsed: float, stage_start: float, ledger: list[dict],
    finished: list[str], device: torch.device, model: Optional[nn.Module], train_step: Optional[TrainStep],
    sampler: Optional["CropSampler"], rate_generator: Optional[torch.Generator],
    gpu_elapsed: float = 0.0, stage_gpu_start: float = 0.0, log_pending: Optional[Tensor] = None,
    world_size: int = 1, rank_states: Optional[dict[str, dict[str, Any]]] = None, train_images: str = "",
    restart: str = "",
) -> dict[str, Any]:
    """The state after ``step`` steps of stage ``stage``. ``model=None`` leaves the model out (the next stage
    starts from what is on disk); ``train_step``/``sampler`` are ``None`` at a stage boundary; ``log_pending``:
    the log's sums since its last row (:meth:`lpm.train.progress.StageLog.pending`)."""
    opts = train_step.state_dict() if train_step is not None else {"optimizer": {}, "aux_optimizer": {}}
    return {
        "format": STATE_FORMAT,
        "config": json.dumps(cfg.to_dict()),
        "stage": stage,
        "step": step,
        "elapsed": elapsed,
        "stage_start": stage_start,
        "gpu_elapsed": gpu_elapsed,  # the GPU share of elapsed and stage_start (optional: older states lack it)
        "stage_gpu_start": stage_gpu_start,
        "ledger": json.dumps(ledger),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()} if model is not None else {},
        **opts,
        **rank_random_state(device, sampler, rate_generator),
        "finished_models": json.dumps(finished),
        # optional (older states lack it): the log's sums since its last row, [loss, bpp, mse, steps]
        "log_pending": log_pending if log_pending is not None else torch.zeros(4, dtype=torch.float64),
        # optional (older states: 1 process): how many processes trained, and ranks 1..N-1's random state
        "world_size": world_size,
        "rank_states": rank_states or {},
        # optional (older states lack it): sha256 of the training images' relative paths and sizes
        "train_images": train_images,
        # optional: where a --continue-from run continued (JSON of lpm.train.partial.Restart; "" otherwise)
        "restart": restart,
    }


def rank_random_state(device: torch.device, sampler: Optional["CropSampler"],
                      rate_generator: Optional[torch.Generator]) -> dict[str, Any]:
    """This process's random state (:data:`RANK_FIELDS`): crop sampler, torch and CUDA generators, rates."""
    return {
        "sampler": sampler.state_dict() if sampler is not None else {},
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.empty(0),
        "rate_generator": rate_generator.get_state() if rate_generator is not None else torch.empty(0, dtype=torch.uint8),
    }


def save_state(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` to ``path`` atomically (readers see the old state or the new one, never a part)."""
    def write(tmp: str) -> None:
        try:
            torch.save(state, tmp)
        except RuntimeError as e:  # torch's writer reports a full disk as "unexpected pos ..."
            import errno
            import shutil

            free = shutil.disk_usage(Path(tmp).parent).free
            raise OSError(errno.ENOSPC, f"cannot write the training state {path} ({free} bytes free on its disk; "
                          f"the previous state is kept): {one_line(e, 160)}") from None

    atomic_save(path, write)


def _one_line(e: BaseException) -> str:
    return one_line(e, 200, with_type=True)


def _is_rng_state(t: Any, like: Tensor) -> bool:
    return isinstance(t, Tensor) and t.dtype == torch.uint8 and t.dim() == 1 and t.numel() == like.numel()


def _check_optimizer_state(sd: Any, fresh: torch.optim.Optimizer, params: list[nn.Parameter]) -> Optional[str]:
    """Why ``sd`` is not an optimizer state for ``fresh`` (same groups, settings and parameter shapes), or None."""
    if not isinstance(sd, dict) or set(sd) != {"state", "param_groups"}:
        return "not an optimizer state"
    ref = fresh.state_dict()["param_groups"]
    groups = sd["param_groups"]
    if not isinstance(groups, list) or len(groups) != len(ref):
        return "optimizer parameter groups do not match"
    ids: list[Any] = []
    for g, r in zip(groups, ref):
        if not isinstance(g, dict) or not isinstance(g.get("params"), list) or len(g["params"]) != len(r["params"]):
            return "optimizer parameter groups do not match"
        # settings both torch versions know must be this run's (lr is set every step)
        if any(g[k] != r[k] for k in set(g) & set(r) if k not in ("params", "lr", "initial_lr")):
            return "optimizer settings differ from this run's"
        ids += g["params"]
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids) or len(set(ids)) != len(ids):
        return "optimizer parameter ids are not distinct integers"
    shape_of = dict(zip(ids, (tuple(p.shape) for p in params)))
    if not isinstance(sd["state"], dict):
        return "optimizer state is not a mapping"
    for pid, st in sd["state"].items():
        if pid not in shape_of or not isinstance(st, dict):
            return "optimizer state names unknown parameters"
        for k, v in st.items():
            if k == "step":
                ok = isinstance(v, Tensor) and v.numel() == 1 and bool(torch.isfinite(v).all()) and float(v) >= 0
            elif k in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
                ok = isinstance(v, Tensor) and v.is_floating_point() and tuple(v.shape) == shape_of[pid]
            else:
                ok = False
            if not ok:
                return f"optimizer state {k!r} of parameter {pid} does not fit"
    return None


def read_state(path: Path, cfg: "RunConfig", world: int = 1) -> Optional[dict]:
    """The training state at ``path`` read safely and checked field by field against ``cfg`` and the number of
    processes ``world`` that resume it (not yet against the model: :func:`check_state_fits`); ``None`` if
    there is none."""
    if not path.exists() and not path.is_symlink():
        return None

    def bad(why: str) -> TrainingStateError:
        return TrainingStateError(f"{path}: {why}; nothing was changed")

    if not path.is_file():
        raise bad("not a regular file")
    try:
        if path.stat().st_size == 0:
            raise bad("empty file, not an lpm training state")
        _check_zip(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except TrainingStateError:
        raise
    except Exception as e:  # noqa: BLE001 -- unpickling refused, truncated zip, garbage: all one answer
        raise bad(f"not a readable lpm training state ({_one_line(e)})") from None
    if not isinstance(state, dict) or "format" not in state:
        raise bad("not an lpm training state")
    if state["format"] != STATE_FORMAT:
        raise bad(f"training-state format {str(state['format'])[:20]} is not {STATE_FORMAT}")
    for k, kind in STATE_FIELDS.items():
        if k not in state or not isinstance(state[k], kind) or isinstance(state[k], bool):
            raise bad(f"field {k!r} is missing or of the wrong type")
    unknown = sorted(str(k)[:40] for k in state if k not in STATE_FIELDS and k not in OPTIONAL_FIELDS and k != "format")
    if unknown:
        raise bad(f"it holds fields an lpm training state does not have: {unknown[:5]}")
    try:
        saved = json.loads(state["config"])
        ledger = json.loads(state["ledger"])
        finished = json.loads(state["finished_models"])
    except (ValueError, RecursionError):
        raise bad("its config, ledger or model list is not valid JSON") from None
    if not isinstance(saved, dict):
        raise bad("its config is not a mapping")
    if not valid_records(ledger):
        raise bad("its ledger is not a list of budget records")
    if not isinstance(finished, list) or not all(isinstance(f, str) for f in finished):
        raise bad("its list of written models is not a list of paths")
    if not (math.isfinite(state["elapsed"]) and math.isfinite(state["stage_start"])
            and 0 <= state["stage_start"] <= state["elapsed"]):
        raise bad("its elapsed times are not 0 <= stage start <= elapsed")
    if ("gpu_elapsed" in state or "stage_gpu_start" in state) and not gpu_clocks_valid(
            state.get("gpu_elapsed"), state.get("stage_gpu_start"), state["elapsed"], state["stage_start"]):
        raise bad("its GPU clocks are not 0 <= stage start <= elapsed within the elapsed times")
    now = cfg.to_dict()
    # a key the saved config lacks was added to RunConfig later: the state was made with its default
    defaults = {f.name: f.default for f in dataclasses.fields(cfg) if f.default is not dataclasses.MISSING}
    def same(k: str) -> bool:
        was = saved.get(k, defaults.get(k))
        if k == "data" and isinstance(was, dict) and isinstance(now[k], dict):  # where the set lies may change
            return {**was, "dir": None} == {**now[k], "dir": None}
        return was == now[k]

    diff = sorted(k for k in now if k not in VOLATILE and not same(k))
    if diff:
        raise TrainingStateError(f"{path}: cannot resume, the config changed in {diff}")
    if not 0 <= state["step"] <= cfg.steps:
        raise bad(f"step {state['step']} is outside 0..{cfg.steps}")
    if not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state["model"].items()):
        raise bad("its model state is not a mapping of names to tensors")
    if not isinstance(state.get("train_images", ""), str) or not isinstance(state.get("restart", ""), str):
        raise bad("its training-image fingerprint or restart record is not a string")
    saved_world = state.get("world_size", 1)
    if not isinstance(saved_world, int) or isinstance(saved_world, bool) or not 1 <= saved_world <= 65536:
        raise bad("its process count is not a positive integer")
    if saved_world != world:
        # each process draws its own crops and noise, and the ledger books steps x processes: another count
        # would neither continue the run nor book it right
        raise TrainingStateError(
            f"{path}: cannot resume, it was saved by {saved_world} training process(es) and this run has {world}; "
            f"resume with {saved_world} (torchrun --nproc_per_node={saved_world}), or start a new out_dir with "
            "--continue-from its partial.safetensors; nothing was changed")
    ranks = state.get("rank_states", {})
    if not isinstance(ranks, dict) or set(ranks) != {str(r) for r in range(1, saved_world)}:
        raise bad(f"its per-process random states are not those of ranks 1..{saved_world - 1}")
    for who, rs in [("", state), *((f"rank {r}'s ", rs) for r, rs in sorted(ranks.items()))]:
        if not isinstance(rs, dict) or any(k not in rs for k in RANK_FIELDS) or (
                who and set(rs) != set(RANK_FIELDS)):
            raise bad(f"{who}random state is incomplete")
        why = _random_state_problem(rs)
        if why:
            raise bad(f"{who}{why}")
    pending = state.get("log_pending")
    if pending is not None and not (
            isinstance(pending, Tensor) and pending.dtype == torch.float64 and tuple(pending.shape) == (4,)
            and bool(torch.isfinite(pending).all()) and float(pending[3]).is_integer()
            and 0 <= float(pending[3]) <= state["step"]):
        raise bad("its log sums are not four finite numbers ending in a step count within the steps done")
    return state


def _random_state_problem(rs: dict[str, Any]) -> Optional[str]:
    gen = torch.Generator().get_state()
    if not _is_rng_state(rs["torch_rng"], torch.get_rng_state()):
        return "random-number state does not fit this torch"
    if not isinstance(rs["cuda_rng"], Tensor) or (rs["cuda_rng"].numel() and rs["cuda_rng"].dtype != torch.uint8):
        return "CUDA random-number state is not a byte tensor"
    if not isinstance(rs["rate_generator"], Tensor) or (
            rs["rate_generator"].numel() and not _is_rng_state(rs["rate_generator"], gen)):
        return "rate-sampler state does not fit this torch"
    if not isinstance(rs["sampler"], dict) or (rs["sampler"] and (
            set(rs["sampler"]) != {"generator"} or not _is_rng_state(rs["sampler"]["generator"], gen))):
        return "crop-sampler state does not fit this torch"
    return None


def _check_zip(path: Path) -> None:
    """``torch.save`` writes a zip archive with a CRC-32 per member, which ``torch.load`` never checks: a
    changed byte in a tensor would load as a silently different weight. Refuse what is not that archive
    intact (a member whose bytes no longer match their CRC, or no readable archive at all). ``torch.save``
    stores its members uncompressed; a compressed member (``torch.load`` would inflate it: a 2 MB file can
    hold gigabytes of zeros) or members larger together than the file are refused before anything is read."""
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as z:
            members = z.infolist()
            packed = [m.filename[-60:] for m in members if m.compress_type != zipfile.ZIP_STORED]
            if packed:
                raise TrainingStateError(f"{path}: member {packed[0]!r} is compressed, which torch.save never "
                                         "writes; not an lpm training state; nothing was changed")
            if sum(m.file_size for m in members) > size:
                raise TrainingStateError(f"{path}: its members claim more bytes than the {size}-byte file holds; "
                                         "not an lpm training state; nothing was changed")
            broken = z.testzip()
    except TrainingStateError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, NotImplementedError) as e:
        raise TrainingStateError(f"{path}: not a readable lpm training state ({_one_line(e)}); nothing was changed") from None
    if broken is not None:
        raise TrainingStateError(f"{path}: its bytes changed after it was written (member {broken[-60:]!r} fails "
                                 "its CRC-32 check); nothing was changed")


def check_state_fits(path: Path, state: dict, stages: list[Stage]) -> None:
    """Check (and load) the model and optimizer states of the stage to resume, before anything is written."""

    def bad(why: str) -> TrainingStateError:
        return TrainingStateError(f"{path}: {why}; nothing was changed")

    first, step = int(state["stage"]), int(state["step"])
    if not 0 <= first <= len(stages):
        raise bad(f"stage {first} is outside 0..{len(stages)}")
    if first == len(stages):
        return
    stage = stages[first]
    if step > 0 and not (state["optimizer"] and state["sampler"] and state["torch_rng"].numel()):
        raise bad(f"it stops inside stage {stage.name} (step {step}) but holds no optimizer or sampler state")
    if state["model"]:
        try:
            # models of finished stages of a multi-model run are already on disk; the current stage's
            # model (for prompts: the whole codec, holding every finished module) comes from the state
            stage.model.load_state_dict(state["model"])
        except Exception as e:  # noqa: BLE001 -- any mismatch is this file's fault, not a bug
            raise bad(f"its model does not fit this run's ({_one_line(e)})") from None
        floats = [v for v in state["model"].values() if v.is_floating_point()]
        if not all(bool(torch.isfinite(v).all()) for v in floats):
            raise bad("its model holds NaN or infinity")
    if step > 0:
        why = _check_optimizer_state(state["optimizer"], torch.optim.Adam(stage.params, lr=1.0), stage.params)
        if why is None and stage.aux is not None and state["aux_optimizer"]:
            aux = quantile_parameters(stage.aux)
            why = _check_optimizer_state(state["aux_optimizer"], torch.optim.Adam(aux, lr=1.0), aux)
        if why is not None:
            raise bad(why)


def restore_state(
    path: Path, state: dict, *, train_step: TrainStep, sampler: "CropSampler",
    rate_generator: Optional[torch.Generator], device: torch.device, rank: int = 0,
) -> int:
    """Load a (checked) ``state`` into the stage's random generators (rank ``rank``'s own) and, part-way through
    a stage, its optimizers and samplers; returns the step to continue after."""
    try:
        mine = state if rank == 0 else state["rank_states"][str(rank)]
        torch.set_rng_state(mine["torch_rng"])
        if device.type == "cuda" and mine["cuda_rng"].numel():
            torch.cuda.set_rng_state(mine["cuda_rng"], device)
        step = int(state["step"])
        if step > 0:
            train_step.load_state_dict(state)
            sampler.load_state_dict(mine["sampler"])
            if rate_generator is not None and mine["rate_generator"].numel():
                rate_generator.set_state(mine["rate_generator"])
        return step
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:  # checked before; a backstop
        raise TrainingStateError(f"{path}: cannot resume from it ({_one_line(e)})") from None
