"""Run configs: the YAML files ``lpm train`` reads (see ``configs/``), as dataclasses.

Every field is checked on construction (``RunConfig(...)`` as well as :func:`load_config`), before a
:class:`~lpm.train.runner.Runner` creates or writes anything in the out_dir: a wrong type or a value out of
range is a ``ValueError`` naming the key and the offending value (``lpm train`` prints it as one line
``lpm: error: <config file>: ...`` and exits with status 2). The rules:

* integers (``steps``, ``checkpoint_every``, ``log_every``, ``restart_warmup``, ``seed``, ``prompt_stride``,
  ``data.crop``, ``data.batch``) must be integers: not booleans, not strings, and not floats, also not ones
  with an integral value (``1000.0``, ``1.0e+3``): YAML reads ``1e3`` as a string and ``1.0e+3`` as a float, so
  a count is written in digits; step counts (``steps``, ``checkpoint_every``, ``log_every``,
  ``restart_warmup``) are at most :data:`MAX_STEPS`;
* numbers (``lmbda``, ``base_rate``, every entry of ``rates``, ``lr``, ``aux_lr``, ``clip``, ``max_minutes``,
  ``lr_drops``, ``data.fraction``) must be finite real numbers (integers accepted), not strings (YAML reads
  ``1e-3`` as a string: ``1.0e-3`` is a number); λ values are positive as a checkpoint's loader requires
  (:mod:`lpm.checkpoints`), a ladder holds 1..:data:`~lpm.checkpoints.MAX_RATES` distinct ones;
* flags (``bf16``, ``compile``, ``channels_last``, ``partial_half``, ``data.on_device``, ``data.preload``) must
  be ``true`` or ``false``, not strings such as ``"yes"``;
* ``name`` is a plain name (it names the default out_dir ``results/runs/<name>``): no path separators, no
  leading dot (``.``, ``..``, hidden folders), no control characters, no surrounding blanks;
* paths (``init``, ``continue_from``, ``out_dir``, ``data.dir``) are strings (or ``os.PathLike``) or null.
"""

from __future__ import annotations

import math
import numbers
import os
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from lpm import zoo
from lpm.checkpoints import MAX_RATES
from lpm.data import KNOWN_SETS
from lpm.models import RATE_REL_TOL, LoRAConfig, PromptConfig, RateConditionedCodec
from lpm.models.base import TILE, TILE_HALO
from lpm.train.stages import STAGE_KINDS

__all__ = ["DataConfig", "RunConfig", "load_config", "KINDS", "METRICS", "MAX_CROP", "MAX_BATCH", "MAX_SEED", "MAX_STEPS"]

KINDS = tuple(STAGE_KINDS)
#: The distortion terms of :class:`lpm.train.losses.RateDistortionLoss`.
METRICS = ("mse", "ms-ssim")
#: Largest crop side. The codec pads any input to a multiple of 64 itself, so a crop need not be a multiple
#: of anything (the tests train on 32-pixel crops); but it never transforms more than ``TILE + 2·TILE_HALO``
#: (1408) pixels a side at once when coding (a tile with its halo, :mod:`lpm.models.base`), so larger training
#: crops teach it nothing it uses, while every image is held padded to ``crop``² (uint8, plus a float copy
#: while padding): 6 MB a picture at 1408, where the unbounded value 60000 asked for 43 GB per image.
MAX_CROP = TILE + 2 * TILE_HALO
#: Smallest crop side with ``metric: ms-ssim``: pytorch_msssim's five scales need a side above (11 - 1)·2⁴.
MIN_MSSSIM_CROP = 161
#: Most crops per step and process (the paper's runs use 8–16; a batch is drawn as one tensor).
MAX_BATCH = 4096
#: Seeds are 0..MAX_SEED (torch generators take 64 bits; the runner adds offsets per rank and restart).
MAX_SEED = 2**32 - 1
#: Most steps per stage, and the bound of ``checkpoint_every``/``log_every``/``restart_warmup``: a count beyond
#: it is a typo, not a plan (10⁹ steps of batch 8 at the H100 target of 480 img/s are six months of one GPU); an
#: unbounded count ran, with a progress bar estimating 2·10¹⁵ hours.
MAX_STEPS = 10**9
#: Most bytes of a run name in UTF-8 (a folder name; file systems allow 255).
MAX_NAME_BYTES = 255


def _show(value: Any) -> str:
    """``repr(value)``, cut to 40 characters (one line: repr escapes control characters)."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _yaml_float(x: float) -> str:
    return yaml.safe_dump(x).split("\n", 1)[0]


def _int(key: str, value: Any, lo: int, hi: Optional[int] = None) -> int:
    """``value`` as an int in ``lo..hi``; floats (``2.5``, also ``1000.0``), strings and booleans are refused."""
    want = f"an integer {'>= ' + str(lo) if hi is None else f'in {lo}..{hi}'}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        hint = ""
        if isinstance(value, float) and math.isfinite(value) and value == int(value):
            hint = f" (a float: write it in digits, {int(value)})"
        elif isinstance(value, str):
            try:
                float(value.replace("_", ""))
                hint = " (a string: write the number in digits, unquoted; YAML reads 1e6 as text)"
            except ValueError:
                pass
        raise ValueError(f"{key} must be {want}, got {_show(value)}{hint}")
    value = int(value)
    if value < lo or (hi is not None and value > hi):
        raise ValueError(f"{key} must be {want}, got {_show(value)}")
    return value


def _real(key: str, value: Any, *, lo: float = 0.0, lo_open: bool = True, hi: Optional[float] = None,
          hi_open: bool = False, what: str = "") -> float:
    """``value`` as a finite float above ``lo`` (or at least, ``lo_open=False``) and at most ``hi``."""
    rng = f"{'>' if lo_open else '>='} {lo:g}" if hi is None else \
        f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    want = what or f"a finite number {rng}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        hint = ""
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
            else:
                if math.isfinite(number):
                    hint = (f" (a string: write a YAML number, unquoted, e.g. {_yaml_float(number)}; YAML reads "
                            "1e-3 as text)")
        raise ValueError(f"{key} must be {want}, got {_show(value)}{hint}")
    x = float(value)
    ok = math.isfinite(x) and (x > lo if lo_open else x >= lo)
    if ok and hi is not None:
        ok = x < hi if hi_open else x <= hi
    if not ok:
        raise ValueError(f"{key} must be {want}, got {_show(value)}")
    return x


def _rate(key: str, value: Any) -> float:
    return _real(key, value, what="a finite positive λ (a number > 0)")


def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false, got {_show(value)}")
    return value


def _path(key: str, value: Any) -> Optional[str]:
    """``None``, or a non-empty path as a string (``os.PathLike`` accepted) without NUL characters."""
    if value is None:
        return None
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value or "\0" in value:
        raise ValueError(f"{key} must be a path (a non-empty string) or null, got {_show(value)}")
    return value


def _plain_name(key: str, value: Any, what: str) -> str:
    """A name that is one folder: no separators, not ``.``/``..`` nor hidden, no control characters."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key} must be a non-empty string, got {_show(value)}")
    seps = {"/", "\\", os.sep, *([os.altsep] if os.altsep else [])}
    why = None
    if any(s in value for s in seps):
        why = "holds a path separator"
    elif value.startswith("."):
        why = "starts with a dot"
    elif any(unicodedata.category(c) == "Cc" for c in value):
        why = "holds a control character"
    elif value != value.strip():
        why = "starts or ends with a blank"
    elif len(value.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        why = f"is longer than {MAX_NAME_BYTES} bytes"
    if why:
        raise ValueError(f"{key} must be a plain name ({what}), got {_show(value)}, which {why}")
    return value


@dataclass
class DataConfig:
    set: str = "bsds500"
    dir: Optional[str] = None  # directory holding the set's folder; --data-dir wins; else $LPM_DATA_DIR / data/
    splits: list[str] = field(default_factory=lambda: ["train", "val"])
    fraction: Optional[float] = None  # None: the kind's default (1.0; 0.1 for prompts)
    crop: int = 256
    batch: int = 16
    on_device: bool = True
    preload: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.set, str) or self.set not in KNOWN_SETS:
            raise ValueError(f"data.set must be one of {', '.join(KNOWN_SETS)}, got {_show(self.set)}")
        self.dir = _path("data.dir", self.dir)
        if isinstance(self.splits, tuple):
            self.splits = list(self.splits)
        if not isinstance(self.splits, list) or not self.splits:
            raise ValueError(f"data.splits must be a non-empty list of folder names, got {_show(self.splits)}")
        for s in self.splits:
            _plain_name("data.splits entry", s, "a folder of the data set")
        if len(set(self.splits)) != len(self.splits):
            raise ValueError(f"data.splits must not repeat a folder, got {_show(self.splits)}")
        if self.fraction is not None:
            self.fraction = _real("data.fraction", self.fraction, hi=1.0)
        self.crop = _int("data.crop", self.crop, 1, MAX_CROP)
        self.batch = _int("data.batch", self.batch, 1, MAX_BATCH)
        self.on_device = _bool("data.on_device", self.on_device)
        self.preload = _bool("data.preload", self.preload)


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
        self.name = _plain_name("name", self.name, "it names the default out_dir results/runs/<name>")
        if not isinstance(self.kind, str) or self.kind not in KINDS:
            raise ValueError(f"unknown run kind {_show(self.kind)} ({', '.join(KINDS)})")
        if isinstance(self.data, dict):
            unknown = sorted(str(k)[:40] for k in self.data if k not in DataConfig.__dataclass_fields__)
            if unknown:
                raise ValueError(f"data: unknown keys {unknown[:10]}")
            self.data = DataConfig(**self.data)
        elif not isinstance(self.data, DataConfig):
            raise ValueError(f"data must be a mapping of data settings, got {_show(self.data)}")
        if not isinstance(self.model, str) or self.model not in zoo.CONFIGS:
            raise ValueError(f"model must be one of the zoo configs {', '.join(zoo.CONFIGS)}, got {_show(self.model)}")
        self.init = _path("init", self.init)
        self.continue_from = _path("continue_from", self.continue_from)
        self.out_dir = _path("out_dir", self.out_dir)
        if STAGE_KINDS[self.kind].needs_init and not self.init:
            raise ValueError(f"a {self.kind} run needs `init:` (the base checkpoint)")
        self.lmbda = _rate("lmbda", self.lmbda)
        self.base_rate = _rate("base_rate", self.base_rate)
        if self.rates is not None:
            if isinstance(self.rates, tuple):
                self.rates = list(self.rates)
            if not isinstance(self.rates, list) or not 1 <= len(self.rates) <= MAX_RATES:
                raise ValueError(f"rates must be a list of 1..{MAX_RATES} λ values or null (the model's ladder), "
                                 f"got {_show(self.rates)}")
            self.rates = [_rate("every entry of rates", r) for r in self.rates]
            ordered = sorted(self.rates)
            if any(math.isclose(a, b, rel_tol=RATE_REL_TOL) for a, b in zip(ordered, ordered[1:])):
                raise ValueError(f"rates must be distinct λ values, got {_show(self.rates)}")
        if self.kind in ("prompts", "lora"):  # their codecs are built around the base's rate on the ladder
            ladder = self.rates or zoo.CONFIGS[self.model]["rates"]
            if not any(math.isclose(self.base_rate, r, rel_tol=RATE_REL_TOL) for r in ladder):
                raise ValueError(f"base_rate {self.base_rate:g} is not one of the rates {_show(sorted(ladder))} "
                                 f"(a {self.kind} run trains the other rates around the base's)")
        if not isinstance(self.prompt, dict):
            raise ValueError(f"prompt must be a mapping of prompt-module settings, got {_show(self.prompt)}")
        try:  # ValueError for unknown keys or bad values, before anything runs
            prompt = PromptConfig.from_dict({**zoo.CONFIGS[self.model]["prompt"], **self.prompt})
        except (TypeError, ValueError) as e:
            raise ValueError(f"prompt: {e}") from None
        if self.kind in ("rate_conditioned", "gain_units"):  # one model for the ladder's whole λ span
            ladder = self.rates or zoo.CONFIGS[self.model]["rates"]
            if len(ladder) < 2:
                raise ValueError(f"a {self.kind} run needs at least 2 rates (its λ range is their span), got "
                                 f"{_show(ladder)}")
        if self.kind == "rate_conditioned":
            try:
                RateConditionedCodec.check_prompt_config(prompt)
            except ValueError as e:
                raise ValueError(f"prompt: {e}") from None
        if self.lora is not None:
            if self.kind != "lora":
                raise ValueError(f"`lora:` settings belong to a lora run, not a {self.kind} run")
            try:
                LoRAConfig.from_dict(self.lora)
            except (TypeError, ValueError) as e:
                raise ValueError(f"lora: {e}") from None
        if self.prompt_stride is not None:
            if self.kind != "prompts":
                raise ValueError(f"`prompt_stride:` belongs to a prompts run, not a {self.kind} run")
            if isinstance(self.prompt_stride, bool) or not isinstance(self.prompt_stride, numbers.Integral) \
                    or self.prompt_stride not in (1, 2):
                raise ValueError(f"prompt_stride must be 1 or 2, got {_show(self.prompt_stride)}")
            self.prompt_stride = int(self.prompt_stride)
        self.steps = _int("steps", self.steps, 1, MAX_STEPS)
        self.checkpoint_every = _int("checkpoint_every", self.checkpoint_every, 1, MAX_STEPS)
        self.log_every = _int("log_every", self.log_every, 1, MAX_STEPS)
        self.restart_warmup = _int("restart_warmup", self.restart_warmup, 0, MAX_STEPS)
        self.seed = _int("seed", self.seed, 0, MAX_SEED)
        self.lr = _real("lr", self.lr, lo_open=False)  # 0: weights stay as they are (a check that a run moves nothing)
        self.aux_lr = _real("aux_lr", self.aux_lr, lo_open=False)
        self.clip = _real("clip", self.clip, lo_open=False,  # 0: no clipping (TrainStep skips it)
                          what="a finite number >= 0 (the gradient norm's bound; 0 turns clipping off)")
        if isinstance(self.lr_drops, tuple):
            self.lr_drops = list(self.lr_drops)
        if not isinstance(self.lr_drops, list):
            raise ValueError(f"lr_drops must be a list of fractions of the steps, got {_show(self.lr_drops)}")
        self.lr_drops = [_real("every entry of lr_drops", f, hi=1.0, hi_open=True) for f in self.lr_drops]
        if self.lr_drops != sorted(self.lr_drops):
            raise ValueError(f"lr_drops must be sorted (non-decreasing), got {_show(self.lr_drops)}")
        if not isinstance(self.metric, str) or self.metric not in METRICS:
            raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {_show(self.metric)}")
        if self.metric == "ms-ssim" and self.data.crop < MIN_MSSSIM_CROP:
            raise ValueError(f"data.crop must be at least {MIN_MSSSIM_CROP} with metric ms-ssim (its five scales), "
                             f"got {self.data.crop}")
        for key in ("bf16", "compile", "channels_last", "partial_half"):
            _bool(key, getattr(self, key))
        if self.max_minutes is not None:  # 0: stop (and save) at the first step
            self.max_minutes = _real("max_minutes", self.max_minutes, lo_open=False)

    @property
    def data_fraction(self) -> float:
        """The share of the images this run trains on (``data.fraction`` or the kind's default)."""
        return self.data.fraction or STAGE_KINDS[self.kind].data_fraction

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_config(path: str | os.PathLike, **overrides: Any) -> RunConfig:
    """Read a YAML run config; ``overrides`` (non-None) replace top-level keys. Every problem with its content is
    a ``ValueError`` whose message starts with ``path`` (see the module docstring); reading it may raise
    ``OSError``."""
    text = Path(path).read_bytes()
    try:
        raw = yaml.safe_load(text.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start})") from None
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {' '.join(str(e).split())[:300]}") from None
    except RecursionError:
        raise ValueError(f"{path}: not valid YAML: nested too deeply") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a run config must be a YAML mapping")
    raw.update({k: v for k, v in overrides.items() if v is not None})
    known = set(RunConfig.__dataclass_fields__)
    unknown = set(raw) - known
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(str(k)[:40] for k in unknown)[:10]}")
    missing = [k for k in ("name", "kind") if k not in raw]
    if missing:
        raise ValueError(f"{path}: missing keys {missing}")
    try:
        return RunConfig(**raw)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
