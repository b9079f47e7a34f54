"""Resumable training runs driven by a config file: ``lpm train CONFIG.yaml [--resume] [--max-minutes M]``.

A run is a list of *stages* built from the config by the stage table (:mod:`lpm.train.stages`: base, prompts
— progressive, on a recorded data subset —, separate, rate_conditioned, gain_units); each stage trains one set
of parameters with the one training step (:class:`lpm.train.step.TrainStep`) on crops from
:class:`lpm.train.sampler.CropSampler`, logs (:mod:`lpm.train.progress`), and ends in a checkpoint and a
budget record (:mod:`lpm.train.ledger`). The runner strings them together and owns what a run needs to
survive: processes, signals, the training state (:mod:`lpm.train.state`) and the out_dir.

Runs survive: a training-state file (model, optimizers, RNG and sampler states, stage, step, config,
elapsed time, ledger) is written atomically every ``checkpoint_every`` steps, at the end of each stage, when
``max_minutes`` is reached and on SIGTERM/Ctrl-C; ``--resume`` continues exactly (the next batch and loss
are those the uninterrupted run would have had).

Interruptions: SIGTERM, SIGHUP (the terminal or ssh session closed) or a first Ctrl-C (SIGINT) stops the run
at the next step boundary (with several
processes: at the next logging step, all ranks together), saves the state, prints where it is and how to
resume plus the budget line (crops actually seen), and then hands the signal on to the handler that was
there before: under ``lpm train`` the command exits with 143 (SIGTERM, 128+15), 129 (SIGHUP) or 130 (Ctrl-C); a plain
Python process dies of the SIGTERM as usual or gets its ``KeyboardInterrupt``. A second Ctrl-C quits at once
without saving (the last periodic state stays). A signal that was ignored (``SIG_IGN``) stays ignored.

Resuming trusts nothing in ``state.pt``: its zip CRCs are checked, it is read with
``torch.load(weights_only=True)`` (never unpickling code) and its every field is checked (types, sizes, the model and optimizer states against this run's
model) before anything is written; a foreign, truncated, empty or garbage file is a
:class:`TrainingStateError` (a ``ValueError``: ``lpm: error: ...``, exit 2) and the out_dir is left as it
was. A fresh run (no ``--resume``) refuses an out_dir that already holds a run's state, ledger or model
checkpoints, and ``--resume`` without a ``state.pt`` refuses one that holds a ledger or model checkpoints.
Before training, the out_dir's records are made to agree with the state it starts from
(:meth:`Runner._tidy_out_dir`): ``ledger.jsonl`` is the state's ledger, ``log.csv`` keeps its rows up to the
state's step, temporaries of saves a killed process left are removed. A NaN or infinite loss (at a logging
step) or trained weight (before any state is saved) ends the run with :class:`TrainingDiverged`, keeping the
last good state.

Outputs in ``out_dir``: ``model.safetensors`` (or ``model-<rate>.safetensors``), ``log.csv`` (step, stage,
rate, loss, bpp, psnr, lr, img/s), ``ledger.jsonl`` (one budget record per stage end: see
:data:`LEDGER_FIELDS`), ``subset.txt`` (the images of a data-fraction run), ``state.pt``, and after a clean
stop ``partial.safetensors``: the cut stage's weights in half precision with where it stopped, small enough
to leave a machine that keeps nothing; ``--continue-from`` starts a run there on another machine with a fresh
optimizer and a learning-rate warm-up, and the ledger says so (:mod:`lpm.train.partial`).

Speed: bf16 autocast on CUDA, optional ``torch.compile`` and channels-last memory, training set held on the device, no host sync
inside the step except every ``log_every`` steps. Scale-out: the same command under ``torchrun`` uses
DistributedDataParallel (NCCL on GPUs, gloo on CPUs); every rank draws its own crops.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Optional

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; out_dir is then not locked
    fcntl = None  # type: ignore[assignment]

import torch
import torch.distributed as dist
import yaml
from torch import nn

from lpm.paths import PROJECT_ROOT
from lpm.checkpoints import save_codec
from lpm.fsutil import atomic_write, atomic_write_text, remove_stale_temporaries
from lpm.data import find_images, locate_dataset, manifest_checksum, manifest_path, read_manifest
from lpm.train.config import DataConfig, RunConfig, load_config
from lpm.train.ledger import LEDGER_FIELDS, budget_string, stage_record, write_ledger
from lpm.train.partial import (PARTIAL_FILE, Restart, load_partial_weights, partial_record, read_partial,
                               restart_seed, warmup_factor)
from lpm.train.progress import LOG_COLUMNS, StageLog, trim_log
from lpm.train.sampler import CropSampler, read_declared_subset, subset
from lpm.train.stages import STAGE_KINDS, Stage, StageContext, initial_base, ladder
from lpm.train.state import (
    STATE_FORMAT,
    VOLATILE,
    TrainingStateError,
    check_state_fits,
    rank_random_state,
    read_state,
    restore_state,
    save_state,
    training_state,
)
from lpm.train.step import TrainStep, lr_at

__all__ = ["RunConfig", "DataConfig", "Runner", "load_config", "LEDGER_FIELDS", "STATE_FORMAT", "TrainingStateError"]


class TrainingDiverged(ValueError):
    """The loss or the trained weights became NaN or infinite; the last state saved before is kept."""


#: Signals that stop a run cleanly (state saved), then go on to the handler that was installed before.
#: SIGHUP too (a closed terminal or ssh session), where the platform has it.
STOP_SIGNALS = tuple(s for s in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGHUP", None)) if s is not None)


def restart_to_json(restart: Restart) -> str:
    return json.dumps({**dataclasses.asdict(restart), "path": str(restart.path)})


def restart_from_json(path: Path, text: Any, stages: int) -> Restart:
    """The :class:`Restart` a state saved (:func:`restart_to_json`), checked field by field."""
    try:
        d = json.loads(text)
        names = {f.name for f in dataclasses.fields(Restart)}
        if not isinstance(d, dict) or set(d) != names:
            raise ValueError("not a restart record")
        r = Restart(**{**d, "path": Path(d["path"])})
        ok = (isinstance(r.sha256, str) and isinstance(r.stage_name, str) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in (r.stage, r.step, r.warmup))
            and 0 <= r.stage < stages and r.step >= 0 and r.warmup >= 0
            and all(isinstance(v, (int, float)) and math.isfinite(v) for v in (r.elapsed, r.stage_start))
            and all(isinstance(x, list) for x in (r.ledger, r.finished, r.restarts)))
        if not ok:
            raise ValueError("a field is out of range")
        return r
    except (ValueError, TypeError, KeyError, RecursionError) as e:
        raise TrainingStateError(f"{path}: its record of the run it continued is unreadable ({e}); nothing was "
                                 "changed") from None


def images_fingerprint(paths: list[Path], root: Path) -> str:
    """sha256 over the training images' paths relative to the set's folder and their sizes, in order: the same
    images, wherever the set was copied to (contents are not read: a large set would take minutes)."""
    h = hashlib.sha256()
    for p in paths:
        h.update(os.fsencode(p.relative_to(root)) + b"\0" + str(p.stat().st_size).encode() + b"\n")
    return h.hexdigest()


class Runner:
    """Runs a :class:`RunConfig`; ``run()`` returns the paths of the written model checkpoints."""

    def __init__(self, cfg: RunConfig, *, data_dir: Optional[str] = None, device: Optional[str] = None,
                 progress: bool = True) -> None:
        self.cfg = cfg
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        if self.world > 1 and not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() and device != "cpu" else "gloo"
            dist.init_process_group(backend)
        if device is None:
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.progress = progress and self.rank == 0
        # absolute, so that the config written to it and the resume commands printed work from anywhere
        self.out = (Path(cfg.out_dir) if cfg.out_dir else PROJECT_ROOT / "results" / "runs" / cfg.name).absolute()
        if self.out.exists() and not self.out.is_dir():
            raise TrainingStateError(f"{self.out}: out_dir is not a directory")
        self.data_dir = data_dir
        root = locate_dataset(cfg.data.set, data_dir or cfg.data.dir)  # the command line wins
        self.data_root = root
        # a copy holding only this run's seeded subset (scripts/gpu_stretch.py subset) serves this run alone
        self.declared = read_declared_subset(root)
        if self.declared is None:
            self.all_images = sorted(p for s in cfg.data.splits for p in find_images(root / s))
            self.images_in_set = len(self.all_images)
            self._warn_if_incomplete(root)
            self.train_paths = subset(self.all_images, cfg.data_fraction, cfg.seed)  # own generator: no global RNG
        else:
            self.all_images = self.train_paths = self.declared.select(cfg.data.splits, cfg.data_fraction, cfg.seed)
            self.images_in_set = self.declared.images_in_set
        self.train_images = images_fingerprint(self.train_paths, root)
        try:
            self.manifest_sha = manifest_checksum(manifest_path(cfg.data.set))
        except (KeyError, ValueError, FileNotFoundError):
            self.manifest_sha = None
        self._stop_signal: Optional[int] = None  # the signal that asked the run to stop
        self._live: Optional[tuple[str, int]] = None  # (stage name, step) of the stage in progress
        self._live_index: Optional[int] = None  # its index
        self.ledger: list[dict] = []
        self.elapsed = self.stage_start = self._elapsed_at_start = 0.0
        # the share of those clocks spent on a GPU (a stage continued on another kind of device has both)
        self.gpu_elapsed = self.stage_gpu_start = 0.0
        self.restart: Optional[Restart] = None  # where a --continue-from run picks up (lpm.train.partial)

    def _warn_if_incomplete(self, root: Path) -> None:
        """Say so when a copy of a known set holds only part of the images its manifest lists under the run's
        splits (a subset copy whose marker was lost, an interrupted download): a data subset is then drawn from
        what is there and differs from the published one; the ledger records the count. A directory that holds
        none of the listed names is another set under that name (the tests' fake sets) and gets no warning."""
        try:
            listed = read_manifest(manifest_path(self.cfg.data.set))
        except (KeyError, ValueError, OSError):
            return
        want = {rel for rel in listed if rel.split("/", 1)[0] in self.cfg.data.splits}
        have = {p.relative_to(root).as_posix() for p in self.all_images}
        missing = len(want - have)
        if want & have and missing and self.rank == 0:
            print(f"lpm: warning: {root} lacks {missing} of the {len(want)} images its manifest lists under "
                  f"{list(self.cfg.data.splits)}: training on the {len(self.all_images)} there (a data subset is "
                  f"then drawn from those, not the published set's)", file=sys.stderr, flush=True)

    @property
    def state_path(self) -> Path:
        return self.out / "state.pt"

    # ------------------------------------------------------------------ building the stages
    def _stages(self) -> list[Stage]:
        """The run's stages, from the stage table (the base is loaded or built first: it draws from the RNG)."""
        cfg = self.cfg
        base, self.init_sha = initial_base(cfg, self.device)
        ctx = StageContext(cfg, base, ladder(cfg), list(self.train_paths), self.device, self.rank)
        return STAGE_KINDS[cfg.kind].build(ctx)

    def _wrap(self, stage: Stage) -> nn.Module:
        fwd = stage.forward
        if self.world > 1:
            ignore = [n for n, p in fwd.named_parameters() if n.endswith("quantiles") or not p.requires_grad]
            nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(fwd, ignore)
            ids = [self.device.index] if self.device.type == "cuda" else None
            fwd = nn.parallel.DistributedDataParallel(fwd, device_ids=ids, broadcast_buffers=False)
        if self.cfg.compile:
            fwd = torch.compile(fwd)
        return fwd

    # ------------------------------------------------------------------ outputs
    def _meta(self, stage: Stage) -> dict[str, Any]:
        return {
            "budget": self.budget_string(),
            "run": self.cfg.name,
            "kind": self.cfg.kind,
            "init_sha256": self.init_sha,
            "dataset": self.cfg.data.set,
            "dataset_manifest_sha256": self.manifest_sha,
            "ledger": self.ledger,
            **stage.meta,
        }

    def _save_model(self, stage: Stage) -> Path:
        path = self.out / stage.file
        if self.rank == 0:
            save_codec(path, stage.model, meta=self._meta(stage))
        return path

    def _restart_of(self, stage_index: int) -> Optional[Restart]:
        return self.restart if self.restart is not None and self.restart.stage == stage_index else None

    def _save_partial(self, i: int, step: int, stage: Stage) -> None:
        """The stopped stage's weights in half precision with where it stopped (see :mod:`lpm.train.partial`)."""
        if self.rank != 0:
            return
        restart = self._restart_of(i)
        record = partial_record(self.cfg, stage=i, stage_name=stage.name, step=step, elapsed=self.elapsed,
                                stage_start=self.stage_start, finished=self.finished,
                                restarts=restart.restarts if restart else [], gpu_elapsed=self.gpu_elapsed,
                                stage_gpu_start=self.stage_gpu_start)
        save_codec(self.out / PARTIAL_FILE, stage.model, meta={**self._meta(stage), "partial": record},
                   half=self.cfg.partial_half)

    def _record_stage(self, i: int, stage: Stage) -> None:
        """Book the finished stage in the ledger (and ``ledger.jsonl``)."""
        cfg, d = self.cfg, self.cfg.data
        self.ledger.append(stage_record(
            run=cfg.name, kind=cfg.kind, model=stage.name, rate=stage.rate, steps=cfg.steps, batch=d.batch,
            crop=d.crop, images_in_set=self.images_in_set, images_seen=len(stage.paths),
            minutes=(self.elapsed - self.stage_start) / 60 * self.world, device=self.device, world_size=self.world,
            restarts=(restart.restarts if (restart := self._restart_of(i)) else []),
            gpu_minutes=(self.gpu_elapsed - self.stage_gpu_start) / 60 * self.world,
        ))
        if self.rank == 0:
            write_ledger(self.out / "ledger.jsonl", self.ledger)
        self.stage_start, self.stage_gpu_start = self.elapsed, self.gpu_elapsed

    def budget_string(self) -> str:
        """The run's budget so far: finished stages (the ledger) plus the steps of a stage in progress."""
        cfg = self.cfg
        live = None
        if self._live is not None:
            name, step = self._live
            live = (name, step, cfg.steps, (self.elapsed - self.stage_start) / 60 * self.world,
                    step * cfg.data.batch * self.world)
        restart = self._restart_of(self._live_index) if live is not None and self._live_index is not None else None
        return budget_string(self.ledger, run=cfg.name, kind=cfg.kind, on_gpu=self.device.type == "cuda",
                             world_size=self.world, crop=cfg.data.crop, data_set=cfg.data.set, live=live,
                             live_restarts=len(restart.restarts) if restart else 0,
                             live_gpu_minutes=(self.gpu_elapsed - self.stage_gpu_start) / 60 * self.world)

    def resume_command(self, elsewhere: bool = False) -> str:
        """The command that continues this run (its config as written to out_dir); ``elsewhere``: on another
        machine, from the partial checkpoint alone (fresh optimizer)."""
        if elsewhere:
            cmd = f"lpm train {self.out / 'config.yaml'} --continue-from {self.out / PARTIAL_FILE} --out-dir NEW_DIR"
        else:
            cmd = f"lpm train {self.out / 'config.yaml'} --resume"
        # absolute like out_dir: a relative --data-dir printed as given named another folder from elsewhere
        return cmd + (f" --data-dir {Path(self.data_dir).absolute()}" if self.data_dir else "")

    # ------------------------------------------------------------------ state
    def _save_state(self, stage_idx: int, step: int, stage: Stage, train_step: Optional[TrainStep],
                    sampler: Optional[CropSampler], keep_model: bool = True, log: Optional[StageLog] = None) -> None:
        if keep_model and step > 0:
            self._check_finite(stage, step)  # never replace the last good state with a diverged one
        rank_states = None
        if self.world > 1:  # every rank's own crops, noise and rates, so that each resumes its own stream
            mine = rank_random_state(self.device, sampler, stage.rate_generator)
            gathered: Optional[list] = [None] * self.world if self.rank == 0 else None
            dist.gather_object(mine, gathered, dst=0)
            if gathered is not None:
                rank_states = {str(r): gathered[r] for r in range(1, self.world)}
        if self.rank == 0:
            state = training_state(
                self.cfg, stage=stage_idx, step=step, elapsed=self.elapsed, stage_start=self.stage_start,
                gpu_elapsed=self.gpu_elapsed, stage_gpu_start=self.stage_gpu_start,
                ledger=self.ledger, finished=self.finished, device=self.device,
                model=stage.model if keep_model else None, train_step=train_step, sampler=sampler,
                rate_generator=stage.rate_generator, log_pending=log.pending() if log is not None else None,
                world_size=self.world, rank_states=rank_states, train_images=self.train_images,
                restart=restart_to_json(self.restart) if self.restart is not None else "",
            )
            save_state(state, self.state_path)
        if self.world > 1:
            dist.barrier()

    def _diverged(self, stage: Stage, step: int, what: str) -> TrainingDiverged:
        kept = (f"the last good training state is kept in {self.state_path} ({self.resume_command()} continues "
                "from it; a lower lr, or a smaller one for this stage, may avoid it)") if self.state_path.exists() else \
            "no training state was saved"
        return TrainingDiverged(f"training diverged in stage {stage.name} at step {step}: {what}; {kept}")

    def _partial_from_state(self, i: int, stage: Stage) -> bool:
        """After a divergence in stage ``i``: the last good weights of that stage (from ``state.pt``, saved
        mid-stage) as ``partial.safetensors``, so that a stretch on a machine that keeps nothing brings them
        back; False if the state holds none of this stage."""
        if self.rank != 0 or not self.state_path.is_file():
            return False
        try:
            state = torch.load(self.state_path, map_location="cpu", weights_only=True)
            if int(state["stage"]) != i or int(state["step"]) == 0 or not state["model"]:
                return False
            stage.model.load_state_dict(state["model"])
        except Exception:  # noqa: BLE001 -- the state was written by this run; nothing more to save if not
            return False
        self._save_partial(i, int(state["step"]), stage)
        return True

    def _check_finite(self, stage: Stage, step: int) -> None:
        """Raise :class:`TrainingDiverged` if a trained parameter holds NaN or infinity (one host sync)."""
        if stage.params and not bool(torch.stack([p.detach().isfinite().all() for p in stage.params]).all()):
            raise self._diverged(stage, step, "its trained parameters hold NaN or infinity")

    def _tidy_out_dir(self, stages: list[Stage], state: Optional[dict], restart: Optional[Restart],
                      first_stage: int) -> None:
        """Rank 0, with the out_dir locked, before training: make the out_dir's records agree with where the run
        starts. Temporaries of writes that a killed process left are removed; ``ledger.jsonl`` is rewritten as
        the ledger of the state (or of the partial checkpoint) it continues from, so a stage booked again after
        a kill is not counted twice; ``log.csv`` keeps the rows up to that point (later ones are written again
        from the same steps; a fresh run starts it anew)."""
        for name in ("state.pt", "ledger.jsonl", "log.csv", PARTIAL_FILE, "subset.txt", *(s.file for s in stages)):
            remove_stale_temporaries(self.out / name)
        if self.ledger or (self.out / "ledger.jsonl").exists():
            write_ledger(self.out / "ledger.jsonl", self.ledger)
        if state is not None:
            at = int(state["step"])
        elif restart is not None:
            at = restart.step
        else:
            trim_log(self.out / "log.csv", lambda stage, step: False)
            return
        before = {s.name for s in stages[:first_stage]}
        current = stages[first_stage].name if first_stage < len(stages) else None
        trim_log(self.out / "log.csv", lambda stage, step: stage in before or (stage == current and step <= at))

    def _refuse_overwrite(self, why: str) -> None:
        """Refuse to start afresh in an out_dir holding outputs a fresh run would overwrite or mix with."""
        held = [p.name for p in (self.state_path, self.out / "ledger.jsonl", self.out / PARTIAL_FILE) if p.exists()]
        held += sorted(p.name for p in self.out.glob("model*.safetensors"))
        held += [name for name in ("log.csv", "config.yaml") if self._foreign(self.out / name)]
        if held:
            raise TrainingStateError(f"{self.out} already holds a run ({', '.join(held[:4])}); {why}")

    def _foreign(self, path: Path) -> bool:
        """A ``log.csv`` or ``config.yaml`` that a fresh start would replace but that is not this run's (the
        user's own table, another run's config): refused rather than overwritten."""
        if not path.is_file():
            return False
        try:
            if path.name == "log.csv":
                with open(path, newline="", encoding="utf-8") as f:
                    return f.readline().rstrip("\r\n") != ",".join(LOG_COLUMNS)
            def run_of(d: dict) -> dict:  # what makes it the same run (what a resume may change left out)
                return {k: ({**v, "dir": None} if k == "data" else v) for k, v in d.items() if k not in VOLATILE}

            return run_of(load_config(path).to_dict()) != run_of(self.cfg.to_dict())
        except (OSError, ValueError):
            return True

    # ------------------------------------------------------------------ the loop
    def run(self, resume: bool = False) -> list[Path]:
        """Train (or resume) the run; the written model checkpoints. The out_dir is locked for the run's
        lifetime, so a second run started on it meanwhile is refused instead of mixing their files."""
        made = [d for d in (self.out, *self.out.parents) if not d.exists()]  # this folder and missing parents
        self.out.mkdir(parents=True, exist_ok=True)
        try:
            with self._out_dir_lock():
                return self._run(resume)
        except BaseException:
            # a run refused or failed before it wrote anything (a missing init checkpoint, a stage that cannot
            # be built, Ctrl-C while building) leaves no new folder behind; rmdir removes only an empty one
            if made and self.rank == 0:
                with contextlib.suppress(OSError):
                    for d in made:  # innermost first; stops at the first that is not empty
                        d.rmdir()
            raise

    @contextlib.contextmanager
    def _out_dir_lock(self) -> Iterator[None]:
        """An exclusive ``flock`` on the out_dir itself (rank 0; nothing is written, and the OS releases it if
        the process dies, so a killed run never leaves a stale lock). Without ``fcntl`` (Windows), or where the
        file system refuses directory locks, nothing is locked."""
        if self.rank != 0 or fcntl is None:
            yield
            return
        try:
            fd = os.open(self.out, os.O_RDONLY)
        except OSError:
            yield
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise TrainingStateError(f"{self.out} is in use by another training process; wait for it to end "
                                         "or choose another out_dir (nothing was changed)") from None
            except OSError:
                pass  # no locks on this file system: run unlocked, as before
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _run(self, resume: bool) -> list[Path]:
        cfg = self.cfg
        # everything that can refuse comes before anything is written
        if not resume:
            self._refuse_overwrite("pass --resume or choose another out_dir")
        state = read_state(self.state_path, cfg, self.world) if resume else None
        if resume and state is None:
            self._refuse_overwrite("there is no state.pt to resume from, and a fresh run would overwrite it")
            if self.rank == 0:
                print(f"lpm: notice: no training state in {self.out}: nothing to resume, starting the run afresh",
                      file=sys.stderr, flush=True)
        if state is not None and state.get("train_images") and state["train_images"] != self.train_images:
            raise TrainingStateError(
                f"{self.state_path}: cannot resume, the training images differ from the run's (another copy of "
                f"the set, or a changed one: {len(self.train_paths)} images now, with other names or sizes); "
                "point --data-dir at the run's copy, or start a new out_dir with --continue-from its "
                "partial.safetensors; nothing was changed")
        torch.manual_seed(cfg.seed)
        stages = self._stages()
        self.stages = stages
        if cfg.continue_from and state is not None and state.get("restart"):
            # a continued run resumed: its state holds where it continued from, so the partial file it started
            # from (often on a machine that keeps nothing) is not needed again
            self.restart = restart_from_json(self.state_path, state["restart"], len(stages))
        elif cfg.continue_from:
            partial_model, self.restart = read_partial(cfg.continue_from, cfg, stages, self.init_sha)
            if state is None:
                load_partial_weights(self.restart.path, partial_model, stages[self.restart.stage].model,
                                     frozen_base=STAGE_KINDS[cfg.kind].frozen_base)
            del partial_model
        if state is not None:
            check_state_fits(self.state_path, state, stages)
            inherited_n = len(self.restart.finished) if self.restart is not None else 0
            gone = [f for f in json.loads(state["finished_models"])[inherited_n:] if not Path(f).is_file()]
            if gone:
                raise TrainingStateError(
                    f"{self.state_path}: the model file of a finished stage is missing ({gone[0]}); the run cannot "
                    "be completed from this state (restore the file, or train again in a new out_dir); nothing "
                    "was changed")
        restart = self.restart if state is None else None
        self.ledger = json.loads(state["ledger"]) if state else list(restart.ledger) if restart else []
        self.finished: list[str] = (json.loads(state["finished_models"]) if state
                                    else list(restart.finished) if restart else [])
        self.elapsed = float(state["elapsed"]) if state else restart.elapsed if restart else 0.0
        self.stage_start = float(state["stage_start"]) if state else restart.stage_start if restart else 0.0
        first_stage = int(state["stage"]) if state else restart.stage if restart else 0
        gpu, gpu_start = ((state.get("gpu_elapsed"), state.get("stage_gpu_start")) if state
                          else (restart.gpu_elapsed, restart.stage_gpu_start) if restart else (0.0, 0.0))
        # states and partial files written before the GPU clock existed: all on the device that resumes them
        on_gpu = self.device.type == "cuda"
        self.gpu_elapsed = float(gpu) if gpu is not None else (self.elapsed if on_gpu else 0.0)
        self.stage_gpu_start = float(gpu_start) if gpu_start is not None else (self.stage_start if on_gpu else 0.0)
        self._elapsed_at_start = self.elapsed  # max_minutes counts this invocation's training time only
        if restart is not None and self.rank == 0:
            print(f"continuing stage {restart.stage_name} at step {restart.step} of {cfg.steps} from "
                  f"{restart.path} (sha256 {restart.sha256[:16]}…) with a fresh optimizer and a "
                  f"{restart.warmup}-step learning-rate warm-up", flush=True)
        if self.rank == 0:
            written = dataclasses.replace(cfg, out_dir=str(self.out)) if cfg.out_dir else cfg
            atomic_write_text(self.out / "config.yaml", yaml.safe_dump(written.to_dict(), sort_keys=False))
            self._tidy_out_dir(stages, state, restart, first_stage)
            if cfg.data_fraction < 1.0:
                # file names as the file system holds them (a name that is not UTF-8 is written as its bytes)
                atomic_write(self.out / "subset.txt", b"".join(
                    os.fsencode(p.relative_to(self.data_root)) + b"\n" for p in stages[0].paths))
        handlers = self._install_signal_handlers()
        # a continued run lists the stages finished elsewhere (their files stayed there) but writes only its own
        inherited = list(self.restart.finished) if self.restart is not None else []
        written = [Path(p) for p in self.finished[len(inherited):]]
        complete = False
        try:
            for i in range(first_stage, len(stages)):
                resume_here = state if (state and i == first_stage) else None
                try:
                    finished_stage = self._run_stage(i, stages[i], resume_here)
                except TrainingDiverged as e:
                    if self._partial_from_state(i, stages[i]):  # a machine that keeps nothing still gets them
                        raise TrainingDiverged(f"{e}; its weights are also in {self.out / PARTIAL_FILE} (for "
                                               "--continue-from elsewhere)") from None
                    raise
                if not finished_stage:
                    break
                written.append(self._save_model(stages[i]))
                self.finished = inherited + [str(p) for p in written]
                # a finished stage is a resume point: the next stage starts fresh, from the same model if it
                # trains that one further (prompt modules), else from what its builder made
                shared = i + 1 < len(stages) and stages[i + 1].model is stages[i].model
                self._save_state(i + 1, 0, stages[i], None, None, keep_model=shared)
            else:
                complete = True
                if self.rank == 0:
                    (self.out / PARTIAL_FILE).unlink(missing_ok=True)  # the run went past it
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        if not complete and self._stop_signal is not None:
            self._pass_on_signal(self._stop_signal, handlers.get(self._stop_signal))
        return written

    # ------------------------------------------------------------------ signals
    def _install_signal_handlers(self) -> dict[int, Any]:
        """Our handler for :data:`STOP_SIGNALS` (main thread only; ignored signals stay ignored)."""
        old: dict[int, Any] = {}
        if threading.current_thread() is not threading.main_thread():
            return old
        for sig in STOP_SIGNALS:
            prev = signal.getsignal(sig)
            if prev == signal.SIG_IGN:
                continue
            old[sig] = prev
            signal.signal(sig, self._on_signal)
        return old

    def _on_signal(self, signum, frame) -> None:  # noqa: ARG002
        if self._stop_signal is not None:
            if signum == signal.SIGINT:  # a second Ctrl-C: quit now; the last saved state stays as it is
                raise KeyboardInterrupt
            return
        self._stop_signal = signum
        if self.rank == 0:  # os.write, not print: the handler may run while the main thread is printing
            note = (f"\nlpm: {signal.Signals(signum).name} received: stopping after this step and saving the "
                    f"training state (Ctrl-C again quits at once, without saving)\n")
            try:
                os.write(sys.stderr.fileno(), note.encode())
            except (OSError, ValueError, AttributeError):  # no real stderr (captured): the final line says it all
                pass

    def _pass_on_signal(self, signum: int, previous: Any) -> None:
        """After the state is saved: say so, then hand the signal to the handler that was there before."""
        if self.rank == 0:
            name = signal.Signals(signum).name
            where = f" at step {self._live[1]} of {self.cfg.steps} in stage {self._live[0]}" if self._live else ""
            print(f"lpm: training interrupted by {name}{where}; state saved in {self.state_path}; "
                  f"resume with: {self.resume_command()}", file=sys.stderr, flush=True)
            print(self.budget_string(), flush=True)
        if callable(previous):  # e.g. Python's Ctrl-C handler (KeyboardInterrupt) or the CLI's SIGTERM handler
            previous(signum, None)
            return
        # the default action (or a handler set outside Python): end the process by the signal, as it would have
        sys.stdout.flush()
        sys.stderr.flush()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        raise SystemExit(128 + signum)  # only reached if the signal is blocked

    def _should_stop(self, step: int) -> bool:
        """A signal or ``max_minutes`` (training time of this invocation, not of the whole run: a resumed or
        continued run gets its own allowance) asks to stop. With several processes all ranks decide together, at
        logging steps only (one small all-reduce), so that they stop at the same step."""
        cfg = self.cfg
        ran = self.elapsed - self._elapsed_at_start
        stop = self._stop_signal is not None or (cfg.max_minutes is not None and ran >= cfg.max_minutes * 60)
        if self.world == 1:
            return stop
        if step % cfg.log_every:
            return False
        flag = torch.tensor([float(stop), float(self._stop_signal or 0)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag[1] > 0 and self._stop_signal is None:
            self._stop_signal = int(flag[1])
        return bool(flag[0] > 0)

    def _run_stage(self, i: int, stage: Stage, state: Optional[dict]) -> bool:
        """Train stage ``i`` (from ``state`` if it resumes there); False if it was stopped before its end."""
        cfg, d = self.cfg, self.cfg.data
        restart = self._restart_of(i)
        # a continued stage already holds its (partly trained) weights: no neighbour initialisation
        stage.prepare((state is None or int(state["step"]) == 0) and restart is None)
        stage.model.train()
        fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
        if cfg.channels_last:  # the parameters stay the same objects (the optimizer's); only their strides change
            stage.model.to(memory_format=fmt)
        train_step = TrainStep(
            self._wrap(stage), stage.params, lmbda=stage.rate or cfg.base_rate, lr=cfg.lr, aux=stage.aux,
            aux_lr=cfg.aux_lr, clip=cfg.clip, metric=cfg.metric, bf16=cfg.bf16 and self.device.type == "cuda",
            device_type=self.device.type,
        )
        sampler = CropSampler(stage.paths, d.crop, d.batch,
                              seed=restart_seed(cfg.seed + 1000 * self.rank + 17 * i, restart),
                              device=self.device if d.on_device else "cpu", preload=d.preload)
        step = 0
        if restart is not None and state is None:
            step = restart.step
            # the quantisation noise too comes from a new stream (it replayed the run's first steps' noise)
            torch.manual_seed(restart_seed(cfg.seed + 31 * self.rank + 7 * i + 3, restart))
            if stage.rate_generator is not None:
                stage.rate_generator.manual_seed(restart_seed(cfg.seed + 7919 * self.rank, restart))
        if state is not None:
            step = restore_state(self.state_path, state, train_step=train_step, sampler=sampler,
                                 rate_generator=stage.rate_generator, device=self.device, rank=self.rank)
        t0, elapsed0, gpu0 = time.perf_counter(), self.elapsed, self.gpu_elapsed
        on_gpu = self.device.type == "cuda"
        self._live, self._live_index = (stage.name, step), i
        log = StageLog(self.out / "log.csv" if self.rank == 0 else None, stage.name, stage.rate, steps=cfg.steps,
                       start=step, log_every=cfg.log_every, images_per_step=d.batch * self.world,
                       device=self.device, bar=self.progress)
        if state is not None and step > 0 and state.get("log_pending") is not None:
            log.restore(state["log_pending"])  # the next row averages the same steps as without the stop
        with log:
            while step < cfg.steps:
                if self._should_stop(step):
                    self._save_state(i, step, stage, train_step, sampler, log=log)
                    self._save_partial(i, step, stage)
                    if self.rank == 0 and self._stop_signal is None:
                        print(f"stopped at step {step} of {cfg.steps} in stage {stage.name} after "
                              f"{(self.elapsed - self._elapsed_at_start) / 60:.1f} min of this invocation (max_minutes; "
                              f"{self.elapsed / 60:.1f} min in all); state saved in {self.state_path}; "
                              f"continue with: {self.resume_command()}; or elsewhere (weights only, "
                              f"{PARTIAL_FILE}): {self.resume_command(elsewhere=True)}", flush=True)
                    return False
                lr = lr_at(step + 1, lr=cfg.lr, steps=cfg.steps, drops=cfg.lr_drops) * warmup_factor(step + 1, restart)
                train_step.set_lr(lr)
                losses = train_step(sampler.next().contiguous(memory_format=fmt))
                step += 1
                self._live = (stage.name, step)
                self.elapsed = elapsed0 + time.perf_counter() - t0
                if on_gpu:
                    self.gpu_elapsed = gpu0 + self.elapsed - elapsed0
                log.update(step, losses, lr, self.elapsed)
                if log.last_loss is not None and not math.isfinite(log.last_loss):
                    raise self._diverged(stage, step, f"the mean loss of the steps up to {step} is {log.last_loss}")
                if step % cfg.checkpoint_every == 0 and step < cfg.steps:
                    self._save_state(i, step, stage, train_step, sampler, log=log)
        self._check_finite(stage, step)
        stage.model.eval()
        (stage.aux or getattr(stage.model, "base", stage.model)).update(force=True)
        self._record_stage(i, stage)
        self._live = None
        return True
