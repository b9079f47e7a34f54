"""The stage table: for each run kind, how its stages are built (:data:`STAGE_KINDS`).

A run is a list of *stages*; each stage trains one set of parameters at one rate (or at λ drawn per image)
and ends in a model checkpoint:

* ``base`` — one stage, all base parameters at ``lmbda`` (plus the entropy bottleneck's aux loss).
* ``prompts`` — progressive prompt learning on the frozen base loaded from ``init``: one stage per prompted
  rate, nearest the base rate first, each initialised from its trained neighbour
  (:mod:`lpm.train.progressive`); only that module's parameters are optimised. Images: a seeded subset of
  ``data.fraction`` of the set (default 0.1: the paper's "90 % less data").
* ``lora`` — the successor paper's low-rank rate adapters (:class:`~lpm.models.LoRACodec`) on the frozen base
  from ``init``, trained exactly like ``prompts``: one stage per adapted rate in the same progressive order,
  each adapter initialised from its trained neighbour (the first on each side fresh, ``ΔW = 0``), only that
  rate's adapters optimised, on the same seeded ``data.fraction`` subset (default 0.1). Rank and placement:
  the ``lora:`` block of the config (:class:`~lpm.models.LoRAConfig` fields).
* ``rate_conditioned`` / ``gain_units`` — the same-budget variable-rate baselines (Kao et al. 2023
  λ-conditioned prompts; Cui et al. 2021 gain units), whole codec trained end to end from ``init`` (or from
  scratch) with λ drawn per image: log-uniform over the ladder's range, or uniformly among trained rates.
* ``separate`` — the separate-models baseline: per rate, a copy of the base (``init``) fine-tuned with all
  parameters on all images (or without ``init`` a model trained from scratch); one checkpoint per rate.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import torch
from torch import Tensor, nn

from lpm import zoo
from lpm.checkpoints import load_codec
from lpm.models import (
    CodecConfig,
    GainUnitCodec,
    LoRACodec,
    LoRAConfig,
    PromptConfig,
    PromptedCodec,
    RateConditionedCodec,
    TICCodec,
)
from lpm.train.progressive import prepare_prompt_stage, progressive_order
from lpm.train.step import main_parameters

if TYPE_CHECKING:
    from lpm.train.config import RunConfig

__all__ = ["Stage", "StageContext", "StageKind", "STAGE_KINDS", "initial_base", "RateForward", "SampledRateForward",
           "prepare_lora_stage"]


class RateForward(nn.Module):
    """``x -> codec(x, rate)``: a variable-rate codec's forward at one rate."""

    def __init__(self, model: nn.Module, rate: float) -> None:
        super().__init__()
        self.model, self.rate = model, rate

    def forward(self, x: Tensor) -> dict:
        return self.model(x, self.rate)


class SampledRateForward(nn.Module):
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


def _no_preparation(fresh: bool) -> None:  # noqa: ARG001
    return None


@dataclass
class Stage:
    """One stage of a run. ``prepare(fresh)`` runs before its first step (``fresh=True``) or when it is
    resumed part-way (``False``); ``file`` and ``meta`` name and annotate the checkpoint it ends in."""

    name: str
    rate: Optional[float]  # None: λ drawn per image (the forward returns them)
    model: nn.Module  # what is saved at the end (and what the training state holds)
    forward: nn.Module  # x -> compressai output dict
    params: list[nn.Parameter]  # what the optimizer gets
    aux: Optional[TICCodec]  # whose entropy bottleneck the aux loss trains
    paths: list[Path]
    file: str = "model.safetensors"
    meta: dict[str, Any] = field(default_factory=dict)
    prepare: Callable[[bool], Any] = _no_preparation

    @property
    def rate_generator(self) -> Optional[torch.Generator]:
        return self.forward.generator if isinstance(self.forward, SampledRateForward) else None


@dataclass
class StageContext:
    """What a stage builder gets: the config, the starting base (on ``device``), the λ ladder and the images."""

    cfg: "RunConfig"
    base: TICCodec
    rates: list[float]
    paths: list[Path]
    device: torch.device
    rank: int = 0


@dataclass(frozen=True)
class StageKind:
    """A run kind: its stage builder, the share of the images it uses by default, whether it needs ``init``
    and whether its stages keep the base frozen."""

    build: Callable[[StageContext], list[Stage]]
    data_fraction: float = 1.0
    needs_init: bool = False
    frozen_base: bool = False  # the stages never change the base (``base.*`` weights stay those of ``init``)


def initial_base(cfg: "RunConfig", device: torch.device) -> tuple[TICCodec, Optional[str]]:
    """The base a run starts from: the backbone of ``cfg.init`` (at ``cfg.prompt_stride`` if set) or a fresh
    ``cfg.model``; and the init's sha256."""
    if cfg.init:
        loaded = load_codec(cfg.init)
        base = _bare_backbone(loaded.model, loaded.config)
        if cfg.prompt_stride is not None and cfg.prompt_stride != base.config.prompt_stride:
            base = base.with_prompt_stride(cfg.prompt_stride)  # the same weights, prompt maps laid out anew
        return base.to(device), loaded.sha256
    return TICCodec(CodecConfig.from_dict(zoo.CONFIGS[cfg.model]["codec"])).to(device), None


def _bare_backbone(model: nn.Module, config: CodecConfig) -> TICCodec:
    """The backbone of a loaded checkpoint of any kind as a bare :class:`TICCodec`: the model itself (``tic``), a
    variable-rate codec's ``base``, or for a low-rank-adapter codec (whose base carries the adapters in place) a
    fresh backbone holding the same frozen weights (its state without ``lora_A``/``lora_B``)."""
    if isinstance(model, TICCodec):
        return model
    if isinstance(model, LoRACodec):
        with torch.random.fork_rng(devices=[]):  # every weight is loaded below: leave the run's RNG alone
            base = TICCodec(config)
        base.load_state_dict({k: v for k, v in model.base.state_dict().items()
                              if ".lora_A." not in k and ".lora_B." not in k})
        return base
    return model.base


def _named_config(cfg: "RunConfig") -> dict[str, Any]:
    return zoo.CONFIGS.get(cfg.model, zoo.CONFIGS["tic"])


def ladder(cfg: "RunConfig") -> list[float]:
    """The λ ladder of a run: ``rates``, or the named config's."""
    return sorted(cfg.rates or _named_config(cfg)["rates"])


def _prompt_config(cfg: "RunConfig") -> PromptConfig:
    return PromptConfig.from_dict({**_named_config(cfg)["prompt"], **cfg.prompt})


def _whole_model(name: str, rate: float, model: TICCodec, paths: list[Path], **kw: Any) -> Stage:
    """A stage training every parameter of a bare codec at one rate."""
    model.requires_grad_(True)
    return Stage(name, rate, model, model, main_parameters(model), model, paths, **kw)


def _base_stages(ctx: StageContext) -> list[Stage]:
    return [_whole_model("base", ctx.cfg.lmbda, ctx.base, ctx.paths, meta={"base_rate": ctx.cfg.lmbda})]


def _progressive_stages(ctx: StageContext, codec: Any, prefix: str,
                        prepare_stage: Callable[..., Any], params: Callable[[float], list]) -> list[Stage]:
    """One stage per non-base rate of ``codec``, nearest the base first: ``prepare_stage(codec, rate,
    initialise=fresh)`` before it, ``params(rate)`` optimised."""
    def stage(rate: float) -> Stage:
        def prepare(fresh: bool) -> None:
            prepare_stage(codec, rate, initialise=fresh)

        return Stage(f"{prefix}-{rate:g}", rate, codec, RateForward(codec, rate), params(rate),
                     None, ctx.paths, meta={"base_rate": ctx.cfg.base_rate}, prepare=prepare)

    return [stage(r) for r, _ in progressive_order(codec)]


def _prompt_stages(ctx: StageContext) -> list[Stage]:
    codec = PromptedCodec(ctx.base, ctx.rates, ctx.cfg.base_rate, _prompt_config(ctx.cfg)).to(ctx.device)
    return _progressive_stages(ctx, codec, "prompt", prepare_prompt_stage,
                               lambda rate: list(codec.module(rate).parameters()))


def _lora_config(cfg: "RunConfig") -> LoRAConfig:
    return LoRAConfig.from_dict({**_named_config(cfg).get("lora", {}), **(cfg.lora or {})})


def prepare_lora_stage(codec: LoRACodec, rate: float, *, initialise: bool = True) -> list[nn.Parameter]:
    """Make the adapters of ``rate`` the only trainable part of ``codec`` and return them (the prompt stages'
    :func:`~lpm.train.progressive.prepare_prompt_stage`, for adapters).

    ``initialise``: first copy the adapter of its neighbour one notch closer to the base
    (:func:`~lpm.train.progressive.progressive_order`); the first rate on each side starts fresh (``B = 0``:
    the base exactly). A stage resumed from a training state passes ``False``. ``RuntimeError`` if any base
    parameter is trainable."""
    rate = codec.rates[codec.trained_index(float(rate))]
    if initialise:
        codec.copy_adapter(dict(progressive_order(codec))[rate], rate)
    own = {id(p) for p in codec.adapter_parameters(rate)}
    for p in codec.adapter_parameters():
        p.requires_grad_(id(p) in own)
    if any(p.requires_grad for _, p in codec.base_parameters()):
        raise RuntimeError("the base codec must stay frozen while low-rank adapters are learned")
    return codec.adapter_parameters(rate)


def _lora_stages(ctx: StageContext) -> list[Stage]:
    codec = LoRACodec(ctx.base, ctx.rates, ctx.cfg.base_rate, _lora_config(ctx.cfg)).to(ctx.device)
    return _progressive_stages(ctx, codec, "lora", prepare_lora_stage, codec.adapter_parameters)


def _separate_stages(ctx: StageContext) -> list[Stage]:
    return [
        _whole_model(f"separate-{r:g}", r, copy.deepcopy(ctx.base), ctx.paths, file=f"model-{r:g}.safetensors",
                     meta={"base_rate": r})
        for r in ctx.rates if not math.isclose(r, ctx.cfg.base_rate, rel_tol=1e-9)
    ]


def _sampled_rate_stage(ctx: StageContext, model: nn.Module, draw: Callable[[int, torch.Generator], Tensor]) -> Stage:
    """The whole variable-rate ``model`` trained end to end with λ drawn per image by ``draw``."""
    model = model.to(ctx.device)
    fwd = SampledRateForward(model, draw, ctx.cfg.seed + 7919 * ctx.rank)
    return Stage(ctx.cfg.kind, None, model, fwd, main_parameters(model), model.base, ctx.paths)


def _rate_conditioned_stages(ctx: StageContext) -> list[Stage]:
    model = RateConditionedCodec(copy.deepcopy(ctx.base), ctx.rates, _prompt_config(ctx.cfg))
    return [_sampled_rate_stage(ctx, model, lambda n, g: model.sample_rates(n, generator=g))]


def _gain_unit_stages(ctx: StageContext) -> list[Stage]:
    model = GainUnitCodec(copy.deepcopy(ctx.base), ctx.rates)
    ladder_t = torch.tensor(ctx.rates)
    return [_sampled_rate_stage(ctx, model, lambda n, g: ladder_t[torch.randint(0, len(ladder_t), (n,), generator=g)])]


#: Run kind -> how its stages are built.
STAGE_KINDS: dict[str, StageKind] = {
    "base": StageKind(_base_stages),
    "prompts": StageKind(_prompt_stages, data_fraction=0.1, needs_init=True, frozen_base=True),
    "lora": StageKind(_lora_stages, data_fraction=0.1, needs_init=True, frozen_base=True),
    "separate": StageKind(_separate_stages),
    "rate_conditioned": StageKind(_rate_conditioned_stages),
    "gain_units": StageKind(_gain_unit_stages),
}
