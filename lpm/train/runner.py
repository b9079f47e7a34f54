"""Resumable training runs driven by a config file: ``lpm train CONFIG.yaml [--resume] [--max-minutes M]``.

A run is a list of *stages*; each stage trains one set of parameters at one rate:

* ``kind: base`` — one stage, all base parameters at ``lmbda`` (plus the entropy bottleneck's aux loss).
* ``kind: prompts`` — progressive prompt learning on the frozen base loaded from ``init``: one stage per
  prompted rate, nearest the base rate first, each initialised from its trained neighbour
  (:func:`lpm.train.loops.progressive_order`); only that module's parameters are optimised. Images: a
  seeded subset of ``data.fraction`` of the set (default 0.1: the paper's "90 % less data"), recorded.
* ``kind: rate_conditioned`` / ``gain_units`` — the same-budget variable-rate baselines (Kao et al. 2023
  λ-conditioned prompts; Cui et al. 2021 gain units), whole codec trained end to end from ``init`` (or from
  scratch) with λ drawn per image: log-uniform over the ladder's range, or uniformly among trained rates.
* ``kind: separate`` — the separate-models baseline: per rate, a copy of the base (``init``) fine-tuned with
  all parameters on all images for ``steps`` steps, or without ``init`` a model trained from scratch (one
  checkpoint per rate).

Runs survive: a training-state file (model, optimizers, RNG and sampler states, stage, step, config,
elapsed time, ledger) is written atomically every ``checkpoint_every`` steps, at the end of each stage, when
``max_minutes`` is reached and on SIGTERM/Ctrl-C; ``--resume`` continues exactly (the next batch and loss
are those the uninterrupted run would have had). The state file is loaded with ``weights_only=True``.

Outputs in ``out_dir``: ``model.safetensors`` (or ``model-<rate>.safetensors``), ``log.csv`` (step, stage,
rate, loss, bpp, psnr, lr, img/s), ``ledger.jsonl`` (one budget record per stage end: see
:data:`LEDGER_FIELDS`), ``subset.txt`` (the images of a data-fraction run), ``state.pt``.

Speed: bf16 autocast on CUDA, optional ``torch.compile``, training set held on the device, no host sync
inside the step except every ``log_every`` steps. Scale-out: the same command under ``torchrun`` uses
DistributedDataParallel (NCCL on GPUs, gloo on CPUs); every rank draws its own crops.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist
import yaml
from torch import Tensor, nn

from lpm import zoo
from lpm.data import find_images, locate_dataset, manifest_checksum, manifest_path
from lpm.models import CodecConfig, GainUnitCodec, PromptConfig, PromptedCodec, RateConditionedCodec, TICCodec
from lpm.provenance import environment
from lpm.train.checkpoint import load_codec, save_codec
from lpm.train.loops import progressive_order
from lpm.train.losses import RateDistortionLoss
from lpm.train.sampler import CropSampler, subset

__all__ = ["RunConfig", "DataConfig", "Runner", "load_config", "LEDGER_FIELDS", "STATE_FORMAT"]

STATE_FORMAT = 1
KINDS = ("base", "prompts", "separate", "rate_conditioned", "gain_units")
#: One budget record per finished stage (``ledger.jsonl``), read by :mod:`lpm.eval.savings`.
LEDGER_FIELDS = (
    "run", "kind", "model", "rate", "steps", "batch", "crop", "images_in_set", "images_seen",
    "crops_seen", "gpu_minutes", "cpu_minutes", "device", "world_size",
)


@dataclass
class DataConfig:
    set: str = "bsds500"
    dir: Optional[str] = None  # directory holding the set's folder; default: --data-dir / $LPM_DATA_DIR / data/
    splits: list[str] = field(default_factory=lambda: ["train", "val"])
    fraction: Optional[float] = None  # None: 1.0 for base/separate, 0.1 for prompts
    crop: int = 256
    batch: int = 16
    on_device: bool = True
    preload: bool = True


@dataclass
class RunConfig:
    name: str
    kind: str  # base | prompts | separate
    model: str = "tic"  # zoo config name (base runs)
    init: Optional[str] = None  # checkpoint to start from (prompts, separate; optional for base)
    lmbda: float = 0.0483  # base runs
    rates: Optional[list[float]] = None  # prompts/separate: the λ ladder (default: the zoo config's)
    base_rate: float = 0.0483
    prompt: dict[str, Any] = field(default_factory=dict)  # PromptConfig overrides
    steps: int = 1000  # per stage
    lr: float = 1e-4
    aux_lr: float = 1e-3
    lr_drops: list[float] = field(default_factory=lambda: [0.8, 0.95])  # fractions of steps where lr /= 10
    clip: float = 1.0
    metric: str = "mse"
    bf16: bool = True  # on CUDA only
    compile: bool = False
    checkpoint_every: int = 500
    log_every: int = 50
    max_minutes: Optional[float] = None
    seed: int = 0
    out_dir: Optional[str] = None  # default: results/runs/<name>
    data: DataConfig = field(default_factory=DataConfig)

    def __post_init__(self) -> None:
        if isinstance(self.data, dict):
            self.data = DataConfig(**self.data)
        if self.kind not in KINDS:
            raise ValueError(f"unknown run kind {self.kind!r} ({', '.join(KINDS)})")
        if self.kind == "prompts" and not self.init:
            raise ValueError("a prompts run needs `init:` (the base checkpoint)")
        if self.steps < 1 or self.checkpoint_every < 1 or self.log_every < 1:
            raise ValueError("steps, checkpoint_every and log_every must be positive")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_config(path: str | os.PathLike, **overrides: Any) -> RunConfig:
    """Read a YAML run config; ``overrides`` (non-None) replace top-level keys."""
    raw = yaml.safe_load(Path(path).read_text())
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a run config must be a YAML mapping")
    raw.update({k: v for k, v in overrides.items() if v is not None})
    known = set(RunConfig.__dataclass_fields__)
    unknown = set(raw) - known
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}")
    return RunConfig(**raw)


@dataclass
class _Stage:
    name: str
    rate: Optional[float]  # None: λ sampled per image
    model: nn.Module  # what is saved at the end
    forward: nn.Module  # x -> compressai output dict
    params: list[nn.Parameter]
    aux: Optional[TICCodec]
    paths: list[Path]


class _SampledRateForward(nn.Module):
    """Forward with a λ per image drawn from a saved generator; the λ travel with the output for the loss."""

    def __init__(self, model: nn.Module, draw: Callable[[int, torch.Generator], Tensor], seed: int) -> None:
        super().__init__()
        self.model, self.draw = model, draw
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, x: Tensor) -> dict:
        lam = self.draw(x.shape[0], self.generator).to(x.device)
        out = self.model(x, lam)
        out["lmbda"] = lam
        return out


class _RateForward(nn.Module):
    def __init__(self, model: PromptedCodec, rate: float) -> None:
        super().__init__()
        self.model, self.rate = model, rate

    def forward(self, x: Tensor) -> dict:
        return self.model(x, self.rate)


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


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
        self.out = Path(cfg.out_dir) if cfg.out_dir else zoo.PROJECT_ROOT / "results" / "runs" / cfg.name
        self.out.mkdir(parents=True, exist_ok=True)
        root = locate_dataset(cfg.data.set, cfg.data.dir or data_dir)
        self.data_root = root
        self.all_images = sorted(p for s in cfg.data.splits for p in find_images(root / s))
        try:
            self.manifest_sha = manifest_checksum(manifest_path(cfg.data.set))
        except (KeyError, ValueError, FileNotFoundError):
            self.manifest_sha = None
        self._stop = False

    # ------------------------------------------------------------------ building the stages
    def _base_model(self) -> TICCodec:
        cfg = self.cfg
        if cfg.init:
            model, info = load_codec(cfg.init)
            base = model.base if isinstance(model, PromptedCodec) else model
            self.init_sha = info["sha256"]
        else:
            base = TICCodec(CodecConfig.from_dict(zoo.CONFIGS[cfg.model]["codec"]))
            self.init_sha = None
        return base.to(self.device)

    def _stages(self) -> list[_Stage]:
        cfg, d = self.cfg, self.cfg.data
        base = self._base_model()
        rates = sorted(cfg.rates or zoo.CONFIGS.get(cfg.model, zoo.CONFIGS["tic"])["rates"])
        if cfg.kind == "base":
            base.requires_grad_(True)
            main = [p for n, p in base.named_parameters() if not n.endswith("quantiles")]
            paths = subset(self.all_images, d.fraction or 1.0, cfg.seed)
            return [_Stage("base", cfg.lmbda, base, base, main, base, paths)]
        if cfg.kind == "prompts":
            pcfg = PromptConfig.from_dict({**zoo.CONFIGS.get(cfg.model, zoo.CONFIGS["tic"])["prompt"], **cfg.prompt})
            codec = PromptedCodec(base, rates, cfg.base_rate, pcfg).to(self.device)
            self.codec = codec
            paths = subset(self.all_images, d.fraction or 0.1, cfg.seed)
            return [
                _Stage(f"prompt-{r:g}", r, codec, _RateForward(codec, r), list(codec.module(r).parameters()), None, paths)
                for r, _ in progressive_order(codec)
            ]
        paths = subset(self.all_images, d.fraction or 1.0, cfg.seed)
        if cfg.kind in ("rate_conditioned", "gain_units"):
            if cfg.kind == "rate_conditioned":
                pcfg = PromptConfig.from_dict({**zoo.CONFIGS.get(cfg.model, zoo.CONFIGS["tic"])["prompt"], **cfg.prompt})
                model = RateConditionedCodec(copy.deepcopy(base), rates, pcfg).to(self.device)
                draw = lambda n, g: model.sample_rates(n, generator=g)  # noqa: E731
            else:
                model = GainUnitCodec(copy.deepcopy(base), rates).to(self.device)
                ladder = torch.tensor(rates)
                draw = lambda n, g: ladder[torch.randint(0, len(rates), (n,), generator=g)]  # noqa: E731
            main = [p for n, p in model.named_parameters() if not n.endswith("quantiles")]
            fwd = _SampledRateForward(model, draw, cfg.seed + 7919 * self.rank)
            return [_Stage(cfg.kind, None, model, fwd, main, model.base, paths)]
        stages = []
        for r in rates:
            if math.isclose(r, cfg.base_rate, rel_tol=1e-9):
                continue
            m = copy.deepcopy(base).requires_grad_(True)
            main = [p for n, p in m.named_parameters() if not n.endswith("quantiles")]
            stages.append(_Stage(f"separate-{r:g}", r, m, m, main, m, paths))
        return stages

    # ------------------------------------------------------------------ helpers
    def _lr(self, step: int) -> float:
        drops = sum(step > f * self.cfg.steps for f in self.cfg.lr_drops)
        return self.cfg.lr * (0.1**drops)

    def _prepare_stage(self, i: int, stage: _Stage) -> None:
        if self.cfg.kind == "prompts":
            init_from = dict(progressive_order(self.codec))[stage.rate]
            if init_from != self.codec.base_rate:
                stage.model.module(stage.rate).load_state_dict(stage.model.module(init_from).state_dict())
            for k, m in self.codec.prompts.items():
                m.requires_grad_(m is self.codec.module(stage.rate))
            if any(p.requires_grad for p in self.codec.base.parameters()):
                raise RuntimeError("the base must stay frozen during prompt learning")

    def _wrap(self, stage: _Stage) -> nn.Module:
        fwd = stage.forward
        if self.world > 1:
            ignore = [n for n, p in fwd.named_parameters() if n.endswith("quantiles") or not p.requires_grad]
            nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(fwd, ignore)
            ids = [self.device.index] if self.device.type == "cuda" else None
            fwd = nn.parallel.DistributedDataParallel(fwd, device_ids=ids, broadcast_buffers=False)
        if self.cfg.compile:
            fwd = torch.compile(fwd)
        return fwd

    def _save_model(self, stage: _Stage) -> Path:
        meta = {
            "budget": self.budget_string(),
            "run": self.cfg.name,
            "kind": self.cfg.kind,
            "init_sha256": self.init_sha,
            "dataset": self.cfg.data.set,
            "dataset_manifest_sha256": self.manifest_sha,
            "ledger": self.ledger,
        }
        if self.cfg.kind in ("rate_conditioned", "gain_units"):
            path = self.out / "model.safetensors"
        elif self.cfg.kind == "separate":
            path = self.out / f"model-{stage.rate:g}.safetensors"
            meta["base_rate"] = stage.rate
        else:
            path = self.out / "model.safetensors"
            meta["base_rate"] = self.cfg.lmbda if self.cfg.kind == "base" else self.cfg.base_rate
        if self.rank == 0:
            save_codec(path, stage.model, meta=meta)
        return path

    def budget_string(self) -> str:
        minutes = sum(r["gpu_minutes"] + r["cpu_minutes"] for r in self.ledger)
        crops = sum(r["crops_seen"] for r in self.ledger)
        dev = "GPU" if self.device.type == "cuda" else "CPU"
        return (f"{self.cfg.kind} run '{self.cfg.name}': {minutes:.2f} {dev}-minutes x {self.world} process(es), "
                f"{crops} crops of {self.cfg.data.crop}px from {self.cfg.data.set}")

    # ------------------------------------------------------------------ state
    def _state(self, stage_idx: int, step: int, stage: _Stage, opt, aux_opt, sampler: Optional[CropSampler],
               keep_model: bool = True) -> dict:
        return {
            "format": STATE_FORMAT,
            "config": json.dumps(self.cfg.to_dict()),
            "stage": stage_idx,
            "step": step,
            "elapsed": self.elapsed,
            "stage_start": self.stage_start,
            "ledger": json.dumps(self.ledger),
            "model": {k: v.detach().cpu() for k, v in stage.model.state_dict().items()} if keep_model else {},
            "optimizer": opt.state_dict() if opt is not None else {},
            "aux_optimizer": aux_opt.state_dict() if aux_opt is not None else {},
            "sampler": sampler.state_dict() if sampler is not None else {},
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else torch.empty(0),
            "finished_models": json.dumps(self.finished),
            "rate_generator": stage.forward.generator.get_state()
            if isinstance(stage.forward, _SampledRateForward) else torch.empty(0, dtype=torch.uint8),
        }

    def _save_state(self, *args, **kw) -> None:
        if self.rank == 0:
            _atomic_torch_save(self._state(*args, **kw), self.out / "state.pt")
        if self.world > 1:
            dist.barrier()

    def _load_state(self) -> Optional[dict]:
        path = self.out / "state.pt"
        if not path.exists():
            return None
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"{path}: training-state format {state.get('format')} is not {STATE_FORMAT}")
        saved = json.loads(state["config"])
        now = self.cfg.to_dict()
        volatile = {"max_minutes", "checkpoint_every", "log_every", "out_dir"}
        diff = sorted(k for k in now if k not in volatile and saved.get(k) != now[k])
        if diff:
            raise ValueError(f"{path}: cannot resume, the config changed in {diff}")
        return state

    # ------------------------------------------------------------------ the loop
    def run(self, resume: bool = False) -> list[Path]:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        stages = self._stages()
        self.stages = stages
        state = self._load_state() if resume else None
        if not resume and (self.out / "state.pt").exists():
            raise ValueError(f"{self.out} already holds a run (state.pt); pass --resume or choose another out_dir")
        self.ledger: list[dict] = json.loads(state["ledger"]) if state else []
        self.finished: list[str] = json.loads(state["finished_models"]) if state else []
        self.elapsed = float(state["elapsed"]) if state else 0.0
        self.stage_start = float(state["stage_start"]) if state else 0.0
        first_stage = int(state["stage"]) if state else 0
        if state and first_stage < len(stages) and state["model"]:
            # models of finished stages of a multi-model run are already on disk; the current stage's
            # model (for prompts: the whole codec, holding every finished module) comes from the state
            stages[first_stage].model.load_state_dict(state["model"])
        if self.rank == 0:
            with open(self.out / "config.yaml", "w") as f:
                yaml.safe_dump(cfg.to_dict(), f, sort_keys=False)
            if cfg.kind == "prompts" or (cfg.data.fraction or 1.0) < 1.0:
                (self.out / "subset.txt").write_text(
                    "\n".join(str(p.relative_to(self.data_root)) for p in stages[0].paths) + "\n")
        old_handler = signal.signal(signal.SIGTERM, self._on_signal)
        written = [Path(p) for p in self.finished]
        try:
            for i in range(first_stage, len(stages)):
                resume_here = state if (state and i == first_stage) else None
                done = self._run_stage(i, stages[i], resume_here)
                if not done:
                    return written
                written.append(self._save_model(stages[i]))
                self.finished = [str(p) for p in written]
                # a finished stage is a resume point: the next stage starts fresh (prompt runs keep the codec)
                self._save_state(i + 1, 0, stages[i], None, None, None, keep_model=cfg.kind == "prompts")
        finally:
            signal.signal(signal.SIGTERM, old_handler)
        return written

    def _on_signal(self, signum, frame) -> None:  # noqa: ARG002
        self._stop = True

    def _run_stage(self, i: int, stage: _Stage, state: Optional[dict]) -> bool:
        cfg, d = self.cfg, self.cfg.data
        if state is None or int(state["step"]) == 0:
            self._prepare_stage(i, stage)
        else:
            self._prepare_stage_resume(stage)
        stage.model.train()
        opt = torch.optim.Adam(stage.params, lr=cfg.lr)
        aux_opt = None
        if stage.aux is not None:
            aux_opt = torch.optim.Adam([p for n, p in stage.aux.named_parameters() if n.endswith("quantiles")],
                                       lr=cfg.aux_lr)
        sampler = CropSampler(stage.paths, d.crop, d.batch, seed=cfg.seed + 1000 * self.rank + 17 * i,
                              device=self.device if d.on_device else "cpu", preload=d.preload)
        step = 0
        if state is not None:
            torch.set_rng_state(state["torch_rng"])
            if self.device.type == "cuda" and state["cuda_rng"].numel():
                torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        if state is not None and int(state["step"]) > 0:
            opt.load_state_dict(state["optimizer"])
            if aux_opt is not None and state["aux_optimizer"]:
                aux_opt.load_state_dict(state["aux_optimizer"])
            sampler.load_state_dict(state["sampler"])
            if isinstance(stage.forward, _SampledRateForward) and state["rate_generator"].numel():
                stage.forward.generator.set_state(state["rate_generator"])
            step = int(state["step"])
        fwd = self._wrap(stage)
        criterion = RateDistortionLoss(stage.rate or cfg.base_rate, cfg.metric)
        use_bf16 = cfg.bf16 and self.device.type == "cuda"
        log_path = self.out / "log.csv"
        new_log = not log_path.exists()
        logf = open(log_path, "a", newline="") if self.rank == 0 else None
        writer = csv.writer(logf) if logf else None
        if writer and new_log:
            writer.writerow(["stage", "rate", "step", "loss", "bpp", "psnr", "lr", "img_per_s", "elapsed_min"])
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.steps, initial=step, desc=stage.name, dynamic_ncols=True)
        acc = torch.zeros(3, device=self.device)
        n_acc, t_last, t_stage0, steps_at_start = 0, time.perf_counter(), time.perf_counter(), step
        elapsed0 = self.elapsed
        try:
            while step < cfg.steps:
                if self._stop or (cfg.max_minutes is not None and self.elapsed >= cfg.max_minutes * 60):
                    self._save_state(i, step, stage, opt, aux_opt, sampler)
                    if self.rank == 0:
                        print(f"stopped at step {step} of stage {stage.name} after {self.elapsed / 60:.1f} min; "
                              f"continue with --resume", flush=True)
                    return False
                lr = self._lr(step + 1)
                for g in opt.param_groups:
                    g["lr"] = lr
                x = sampler.next()
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_bf16):
                    out = fwd(x)
                losses = criterion(out, x, lmbda=out.get("lmbda"))
                opt.zero_grad(set_to_none=True)
                losses["loss"].backward()
                if cfg.clip:
                    torch.nn.utils.clip_grad_norm_(stage.params, cfg.clip)
                opt.step()
                if aux_opt is not None:
                    aux_opt.zero_grad(set_to_none=True)
                    stage.aux.aux_loss().backward()
                    aux_opt.step()
                step += 1
                acc += torch.stack([losses["loss"].detach(), losses["bpp_loss"].detach(), losses["mse_loss"].detach()])
                n_acc += 1
                self.elapsed = elapsed0 + time.perf_counter() - t_stage0
                if step % cfg.log_every == 0 or step == cfg.steps:
                    loss, bpp, mse = (acc / n_acc).tolist()  # the one host sync per log interval
                    now = time.perf_counter()
                    ips = n_acc * d.batch * self.world / max(now - t_last, 1e-9)
                    psnr = 10 * math.log10(1 / max(mse, 1e-12))
                    if writer:
                        writer.writerow([stage.name, stage.rate, step, f"{loss:.5f}", f"{bpp:.5f}", f"{psnr:.3f}",
                                         f"{lr:.3g}", f"{ips:.1f}", f"{self.elapsed / 60:.3f}"])
                        logf.flush()
                    if bar:
                        bar.set_postfix(loss=f"{loss:.4f}", bpp=f"{bpp:.4f}", psnr=f"{psnr:.2f}", ips=f"{ips:.0f}")
                    acc.zero_()
                    n_acc, t_last = 0, now
                if bar:
                    bar.update(1)
                if step % cfg.checkpoint_every == 0 and step < cfg.steps:
                    self._save_state(i, step, stage, opt, aux_opt, sampler)
        except KeyboardInterrupt:
            self._save_state(i, step, stage, opt, aux_opt, sampler)
            raise
        finally:
            if bar:
                bar.close()
            if logf:
                logf.close()
        stage.model.eval()
        (stage.aux or getattr(stage.model, "base", stage.model)).update(force=True)
        minutes = (self.elapsed - self.stage_start) / 60 * self.world
        on_gpu = self.device.type == "cuda"
        self.ledger.append({
            "run": cfg.name, "kind": cfg.kind, "model": stage.name, "rate": stage.rate, "steps": cfg.steps,
            "batch": d.batch, "crop": d.crop, "images_in_set": len(self.all_images),
            "images_seen": len(stage.paths), "crops_seen": cfg.steps * d.batch * self.world,
            "gpu_minutes": minutes if on_gpu else 0.0, "cpu_minutes": 0.0 if on_gpu else minutes,
            "device": environment(self.device)["device"], "world_size": self.world,
        })
        if self.rank == 0:
            with open(self.out / "ledger.jsonl", "a") as f:
                f.write(json.dumps(self.ledger[-1]) + "\n")
        self.stage_start = self.elapsed
        return True

    def _prepare_stage_resume(self, stage: _Stage) -> None:
        if self.cfg.kind == "prompts":
            for m in self.codec.prompts.values():
                m.requires_grad_(m is self.codec.module(stage.rate))
