"""Run configs: the YAML files ``lpm train`` reads (see ``configs/``), as dataclasses."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from lpm.train.stages import STAGE_KINDS

__all__ = ["DataConfig", "RunConfig", "load_config", "KINDS"]

KINDS = tuple(STAGE_KINDS)


@dataclass
class DataConfig:
    set: str = "bsds500"
    dir: Optional[str] = None  # directory holding the set's folder; default: --data-dir / $LPM_DATA_DIR / data/
    splits: list[str] = field(default_factory=lambda: ["train", "val"])
    fraction: Optional[float] = None  # None: the kind's default (1.0; 0.1 for prompts)
    crop: int = 256
    batch: int = 16
    on_device: bool = True
    preload: bool = True


@dataclass
class RunConfig:
    name: str
    kind: str  # one of KINDS (see lpm.train.stages)
    model: str = "tic"  # zoo config name (base runs)
    init: Optional[str] = None  # checkpoint to start from (prompts, separate; optional for base)
    lmbda: float = 0.0483  # base runs
    rates: Optional[list[float]] = None  # prompts/separate: the λ ladder (default: the zoo config's)
    base_rate: float = 0.0483
    prompt: dict[str, Any] = field(default_factory=dict)  # PromptConfig overrides
    lora: Optional[dict[str, Any]] = None  # LoRAConfig fields of a lora run (rank, targets, transforms)
    prompt_stride: Optional[int] = None  # prompts runs: lay the frozen base's prompt maps out at 1 or 2 (same weights)
    steps: int = 1000  # per stage
    lr: float = 1e-4
    aux_lr: float = 1e-3
    lr_drops: list[float] = field(default_factory=lambda: [0.8, 0.95])  # fractions of steps where lr /= 10
    clip: float = 1.0
    metric: str = "mse"
    bf16: bool = True  # on CUDA only
    compile: bool = False
    channels_last: bool = False  # model and crops in channels-last memory (a speed setting; same numbers up to rounding)
    checkpoint_every: int = 500
    log_every: int = 50
    max_minutes: Optional[float] = None  # training minutes of this invocation (each --resume gets its own)
    continue_from: Optional[str] = None  # partial checkpoint of this run to continue from (lpm.train.partial)
    restart_warmup: int = 100  # steps of linear lr ramp after continuing with a fresh optimizer
    partial_half: bool = True  # partial checkpoints in float16 (entropy models float32)
    seed: int = 0
    out_dir: Optional[str] = None  # default: results/runs/<name>
    data: DataConfig = field(default_factory=DataConfig)

    def __post_init__(self) -> None:
        if isinstance(self.data, dict):
            self.data = DataConfig(**self.data)
        if self.kind not in KINDS:
            raise ValueError(f"unknown run kind {self.kind!r} ({', '.join(KINDS)})")
        if STAGE_KINDS[self.kind].needs_init and not self.init:
            raise ValueError(f"a {self.kind} run needs `init:` (the base checkpoint)")
        if self.lora is not None:
            if self.kind != "lora":
                raise ValueError(f"`lora:` settings belong to a lora run, not a {self.kind} run")
            from lpm.models import LoRAConfig

            LoRAConfig.from_dict(self.lora)  # ValueError for unknown keys or bad values, before anything runs
        if self.prompt_stride is not None:
            if self.kind != "prompts":
                raise ValueError(f"`prompt_stride:` belongs to a prompts run, not a {self.kind} run")
            if self.prompt_stride not in (1, 2) or isinstance(self.prompt_stride, bool):
                raise ValueError(f"prompt_stride must be 1 or 2, got {self.prompt_stride!r:.40}")
        if self.steps < 1 or self.checkpoint_every < 1 or self.log_every < 1:
            raise ValueError("steps, checkpoint_every and log_every must be positive")
        if self.restart_warmup < 0:
            raise ValueError("restart_warmup must be 0 or more steps")

    @property
    def data_fraction(self) -> float:
        """The share of the images this run trains on (``data.fraction`` or the kind's default)."""
        return self.data.fraction or STAGE_KINDS[self.kind].data_fraction

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
