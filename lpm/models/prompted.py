"""The variable-rate codec: one frozen base codec plus one Layer-adaptive Prompt Module per extra rate.

Qin et al., "Progressive Learning with Visual Prompt Tuning for Variable-Rate Image Compression",
arXiv:2311.13846. The base (:class:`~lpm.models.TICCodec`) is trained at one rate (``base_rate``, a λ of the
rate–distortion loss λ·255²·MSE + bpp) and frozen; every other rate of the ladder owns a
:class:`LayerAdaptivePromptModule` whose prompts move the frozen codec to that rate::

                  ┌────────── LPM(rate).encoder(x) ──────────┐ prompt maps per Swin block of g_a, h_a
    x ─► g_a ─► y ─► h_a ─► z ─► ẑ ─► h_s ─► (σ, μ) ─► ŷ ─► g_s ─► x̂
                                 └ LPM.hyper_decoder(ẑ) ┘     └ LPM.decoder(ŷ) ┘ prompts for h_s, g_s

The base's own rate uses no prompts at all, so it reproduces the base bit for bit.

Continuous rate (beyond the paper): ``rate`` may be any λ between the smallest and largest trained one.
Positions are taken in log λ. Between two prompted rates the prompt maps of both modules are linearly
interpolated, layer by layer. Between the base rate and its prompted neighbour, the neighbour's prompts are
faded in by a *prompt strength* ``s ∈ (0, 1]`` that enters attention as the logit offset ``log s`` on prompt
keys (``s → 0`` is exactly the base). Both rules give the trained models exactly at trained rates.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from lpm.entropy import cpu_float64
from lpm.layers import HiddenPromptNet, PromptMap, PromptNet
from lpm.models.base import CONFIG_LIMITS, TICCodec, _int_in, config_from_dict, _real
from lpm.models.variable_rate import RATE_REL_TOL, Rate, VariableRateCodec

__all__ = ["PromptConfig", "LayerAdaptivePromptModule", "PromptedCodec", "RateMix", "find_rate", "prompt_settings"]

#: compressai's λ ladder for MSE models (qualities 1–6); the default rates of the variable-rate codec.
DEFAULT_RATES = (0.0018, 0.0035, 0.0067, 0.0130, 0.0250, 0.0483)
#: Prompt sources of :class:`PromptConfig` (the first of each is the default).
ENC_SOURCES = ("image", "hidden")
DEC_SOURCES = ("latent", "hidden")


@dataclass
class PromptConfig:
    """Sizes of one prompt module (defaults chosen to keep 5 modules + base ≤ 20 % of 6 base models)."""

    enc_channels: int = 48
    enc_head_hidden: int = 0
    dec_channels: int = 32
    dec_head_hidden: int = 0
    head_init_scale: float = 0.1
    #: Beyond the paper (off by default): a learned per-channel log-gain on ``y`` per rate (Cui et al.,
    #: CVPR 2021 gain units), a direct quantisation-step lever for when prompts alone cannot reach a rate.
    latent_gain: bool = False
    #: Beyond the paper (off by default): each head also makes a map added to its Swin block's tokens (the
    #: residual stream), besides the prompt tokens of keys/values — a more direct lever on the features.
    additive: bool = False
    #: Where the encoder side's prompts come from: ``"image"`` (the paper: one trunk fed by the input image)
    #: or ``"hidden"`` (beyond the paper: each Swin block's own input tokens, :class:`~lpm.layers.HiddenPromptNet`,
    #: heads of ``enc_channels`` bottleneck channels).
    enc_source: str = "image"
    #: Where the decoder side's prompts come from: ``"latent"`` (our default reading of the paper's "hidden
    #: features": ẑ for h_s, ŷ for g_s) or ``"hidden"`` (the other reading: each Swin block's own input
    #: tokens; heads of ``dec_channels`` bottleneck channels).
    dec_source: str = "latent"
    #: Prompt keys/values (default). ``False`` (beyond the paper) with ``additive`` and both sources
    #: ``"hidden"``: the heads only add to their block's tokens — no prompt tokens in attention at all.
    kv_prompts: bool = True

    def __post_init__(self) -> None:
        """Bounds: channels in ``CONFIG_LIMITS["channels"]``, hidden widths 0 (none) or within them, a finite
        ``head_init_scale``, booleans ``latent_gain``/``additive`` and known sources (``ValueError`` otherwise)."""
        lo, hi = CONFIG_LIMITS["channels"]
        for name in ("enc_channels", "dec_channels"):
            _int_in(f"prompt config {name}", getattr(self, name), lo, hi)
        for name in ("enc_head_hidden", "dec_head_hidden"):
            _int_in(f"prompt config {name}", getattr(self, name), 0, hi)
        _real("prompt config head_init_scale", self.head_init_scale)
        for name in ("latent_gain", "additive", "kv_prompts"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"prompt config {name} must be true or false, got {getattr(self, name)!r:.40}")
        for name, known in (("enc_source", ENC_SOURCES), ("dec_source", DEC_SOURCES)):
            if getattr(self, name) not in known:
                raise ValueError(f"prompt config {name} must be one of {', '.join(known)}, got {getattr(self, name)!r:.40}")
        if not self.kv_prompts and not (self.additive and self.enc_source == self.dec_source == "hidden"):
            raise ValueError("prompt config kv_prompts=false needs additive=true and enc_source=dec_source=hidden "
                             "(only heads on the blocks' own tokens can do without prompt keys/values)")

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PromptConfig":
        """A config from :meth:`to_dict` output (e.g. parsed JSON); ``ValueError`` for anything else."""
        return config_from_dict(cls, d, "prompt")


def prompt_settings(items: Sequence[str]) -> dict[str, Any]:
    """``["enc_head_hidden=32", "head_init_scale=1"]`` → ``{"enc_head_hidden": 32, "head_init_scale": 1.0}``
    (booleans as ``true``/``false``/``1``/``0``):
    command-line overrides of :class:`PromptConfig` fields (all but ``latent_gain``), typed like the field and
    checked by :class:`PromptConfig` itself. ``ValueError`` naming the item for anything else."""
    fields = {k: type(v) for k, v in PromptConfig().to_dict().items() if k != "latent_gain"}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            raise ValueError(f"{item!r}: expected KEY=VALUE with KEY one of {', '.join(fields)}")
        try:
            if fields[key] is bool:
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(value)
                out[key] = value.lower() in ("true", "1")
            else:
                out[key] = fields[key](value)
        except ValueError:
            raise ValueError(f"{item!r}: {value!r} is not a valid {fields[key].__name__}") from None
    PromptConfig.from_dict(out)
    return out


class LayerAdaptivePromptModule(nn.Module):
    """Prompts for one rate, one head per Swin block: by default an image-fed encoder net and ẑ-/ŷ-fed
    decoder nets (:class:`~lpm.layers.PromptNet`); with ``enc_source``/``dec_source`` ``"hidden"`` that side's
    heads read their own block's tokens instead (:class:`~lpm.layers.HiddenPromptNet`; ``*_head_hidden``
    and the trunk do not apply there)."""

    def __init__(self, base: TICCodec, config: Optional[PromptConfig] = None) -> None:
        super().__init__()
        cfg = config or PromptConfig()
        self.config = cfg
        t = base.prompt_targets()
        N, M = base.config.N, base.config.M
        add, init, stride = cfg.additive, cfg.head_init_scale, base.config.prompt_stride
        self.encoder: nn.Module
        self.hyper_decoder: nn.Module
        self.decoder: nn.Module
        kv = cfg.kv_prompts
        if cfg.enc_source == "hidden":
            self.encoder = HiddenPromptNet(cfg.enc_channels, t["encoder"], stride, init, add, kv)
        else:
            self.encoder = PromptNet(3, cfg.enc_channels, 0, t["encoder"], cfg.enc_head_hidden, 3, init, add)
        if cfg.dec_source == "hidden":
            self.hyper_decoder = HiddenPromptNet(cfg.dec_channels, t["hyper_decoder"], stride, init, add, kv)
            self.decoder = HiddenPromptNet(cfg.dec_channels, t["decoder"], stride, init, add, kv)
        else:
            self.hyper_decoder = PromptNet(N, cfg.dec_channels, 6, t["hyper_decoder"], cfg.dec_head_hidden, 1, init, add)
            self.decoder = PromptNet(M, cfg.dec_channels, 4, t["decoder"], cfg.dec_head_hidden, 1, init, add)
        self.log_gain = nn.Parameter(torch.zeros(M)) if cfg.latent_gain else None

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


class _MixedHeads:
    """A weighted sum of prompt heads, itself a prompt callable: ``tokens ↦ Σ w_k · head_k(tokens)``."""

    def __init__(self, heads: list[Callable[[Tensor], Tensor]], weights: list[float]) -> None:
        self.heads, self.weights = heads, weights
        kinds = {bool(getattr(h, "adds_only", False)) for h in heads}
        if len(kinds) != 1:
            raise ValueError("cannot mix additive-only prompt heads with heads that make prompt keys/values")
        self.adds_only = kinds.pop()

    def __call__(self, tokens: Tensor) -> Tensor:
        return sum(w * h(tokens) for h, w in zip(self.heads, self.weights))  # type: ignore[return-value]


def _mix(maps: list[dict[str, list[PromptMap]]], weights: list[float]) -> dict[str, list[PromptMap]]:
    """Prompt maps (or heads) of several modules, weighted layer by layer (heads mix their outputs)."""
    if len(maps) == 1 and weights[0] == 1.0:
        return maps[0]
    out: dict[str, list[PromptMap]] = {}
    for name in maps[0]:
        layers = []
        for i in range(len(maps[0][name])):
            parts = [m[name][i] for m in maps]
            if all(isinstance(p, Tensor) for p in parts):
                layers.append(sum(w * p for p, w in zip(parts, weights)))
            else:
                layers.append(_MixedHeads(parts, weights))  # type: ignore[arg-type]
        out[name] = layers
    return out


class RateMix:
    """A :class:`~lpm.models.base.PromptSource`: weighted prompt modules plus a prompt-strength logit."""

    def __init__(self, modules: list[LayerAdaptivePromptModule], weights: list[float], strength: float = 1.0):
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"prompt strength must be in (0, 1], got {strength}")
        self.modules, self.weights = modules, weights
        self.strength = strength
        self.prompt_logit: Optional[float] = None if strength == 1.0 else math.log(strength)

    def encoder(self, x: Tensor) -> dict[str, list[Tensor]]:
        return _mix([m.encoder(x) for m in self.modules], self.weights)

    def hyper_decoder(self, z_hat: Tensor) -> dict[str, list[Tensor]]:
        return _mix([m.hyper_decoder(z_hat) for m in self.modules], self.weights)

    def exact_hyper_decoder(self, z_hat: Tensor) -> dict[str, list[Tensor]]:
        """The same prompts from float64 CPU copies of the nets (the weights are Python floats)."""
        return _mix([cpu_float64(m.hyper_decoder)(z_hat) for m in self.modules], self.weights)

    def decoder(self, y_hat: Tensor) -> dict[str, list[Tensor]]:
        return _mix([m.decoder(y_hat) for m in self.modules], self.weights)

    def latent_log_gain(self) -> Optional[Tensor]:
        """Log-gains mix like the prompts (geometric interpolation of gains) and fade with the strength."""
        if self.modules[0].log_gain is None:
            return None
        return self.strength * sum(w * m.log_gain for m, w in zip(self.modules, self.weights))

    def __repr__(self) -> str:
        return f"RateMix(weights={self.weights}, strength={self.strength:.4g})"


class PromptedCodec(VariableRateCodec):
    """Frozen base codec + prompt modules keyed by rate (λ). See the module docstring.

    Args:
        base: the pre-trained base codec (frozen here: ``requires_grad=False``).
        rates: the λ ladder, including ``base_rate``.
        base_rate: the λ the base was trained at (needs no prompts).
        prompt_config: sizes of each prompt module.

    Methods mirror compressai with an extra ``rate`` argument (see :class:`VariableRateCodec`):
    ``forward(x, rate)``, ``compress(x, rate)``, ``decompress(strings, shape, rate, size=None)``.
    """

    kind = "prompted"

    def __init__(
        self,
        base: TICCodec,
        rates: Sequence[float] = DEFAULT_RATES,
        base_rate: float = 0.0483,
        prompt_config: Optional[PromptConfig] = None,
    ) -> None:
        super().__init__(rates, base_rate)
        self.base = base
        self.base.requires_grad_(False)
        self.prompt_config = prompt_config or PromptConfig()
        self.prompts = nn.ModuleDict(
            {self.key(r): LayerAdaptivePromptModule(base, self.prompt_config) for r in self.rates if not self._is_base(r)}
        )

    # ------------------------------------------------------------------ rates
    def _is_base(self, rate: float) -> bool:
        return math.isclose(rate, self.base_rate, rel_tol=RATE_REL_TOL)

    def module(self, rate: float) -> LayerAdaptivePromptModule:
        """The prompt module of a trained, non-base rate."""
        return self.prompts[self.key(rate)]

    def prompt_source(self, rate: Rate, batch: int = 1) -> Optional[RateMix]:
        """The prompts for any ``rate`` in the trained range (``None`` at the base rate)."""
        rate = self.scalar_rate(rate)
        if self.trained_index(rate) is not None:
            return None if self._is_base(rate) else RateMix([self.module(rate)], [1.0])
        i = next(i for i, r in enumerate(self.rates) if r > rate)
        a, b = self.rates[i - 1], self.rates[i]
        t = (math.log(rate) - math.log(a)) / (math.log(b) - math.log(a))  # 0 at a, 1 at b
        if self._is_base(a):
            return RateMix([self.module(b)], [1.0], strength=t)
        if self._is_base(b):
            return RateMix([self.module(a)], [1.0], strength=1.0 - t)
        return RateMix([self.module(a), self.module(b)], [1.0 - t, t])

    # ------------------------------------------------------------------ accounting
    def prompt_parameters(self) -> list[nn.Parameter]:
        return list(self.prompts.parameters())

    def parameter_groups(self) -> dict[str, int]:
        """Parameters of the base and of each prompt module."""
        counts = {"base": self.base.num_parameters()}
        for k, m in self.prompts.items():
            counts[f"prompt_{k}"] = m.num_parameters()
        return counts

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_fields(self) -> dict[str, str]:
        return {**super().checkpoint_fields(), "prompt_config": json.dumps(self.prompt_config.to_dict())}

    @classmethod
    def from_checkpoint(cls, base: TICCodec, fields: dict[str, Any]) -> "PromptedCodec":
        return cls(base, fields["rates"], fields["base_rate"], PromptConfig.from_dict(fields["prompt_config"]))


def find_rate(
    measure: Callable[[float], float],
    target: float,
    rate_range: tuple[float, float],
    tol: float = 0.01,
    max_iter: int = 24,
    probes: Sequence[float] = (),
) -> tuple[float, float]:
    """A rate whose measured size fits ``target``, at most ``tol`` under it where the search gets there: for a
    codec whose size rises with λ, the largest such rate (to within that tolerance), by safeguarded false
    position.

    ``measure(rate)`` returns the real size at that rate (bpp or bytes, positive, non-decreasing in λ for a
    sane codec). The search brackets the answer in log λ and interpolates in (log λ, log size), where a
    codec's size is close to a straight line, so it needs far fewer encodes than bisection (each one is a
    whole encode: minutes for a large photo); the Illinois rule and a clamp to the inner 80 % of the
    bracket keep it converging on steps, kinks and noise. Only measured sizes that fit are ever returned:
    of those, the largest size (the larger rate on a tie). Stops when the measured size is within ``tol``
    (relative) below the target or after ``max_iter`` encodes. Returns ``(rate, measured)``; if the largest
    rate fits, the larger of the two ends' sizes (the largest rate, for a codec whose size rises with λ). If the smallest rate is too big, the largest rate and the ``probes`` (the
    trained rates, say) are measured too, since for a checkpoint whose size does not rise with λ one of them
    may fit: the largest fitting size among them is returned, with the warning below; if none fits, the
    smallest rate and its size (the caller decides whether that is an error).

    Warns (``UserWarning``) when the sizes it measured do not rise with λ (a checkpoint whose rate is not
    monotone, e.g. a smoke one): the rate returned fits, but another rate, larger or smaller, may give a file
    that fits and comes closer to the target, and "the largest rate that fits" is then not what was searched.
    """
    lo, hi = rate_range
    s_lo = measure(lo)
    seen = {lo: s_lo}
    if s_lo > target:
        for r in sorted({hi, *(float(r) for r in probes if lo < r <= hi)}):
            seen[r] = measure(r)
        if all(s > target for s in seen.values()):
            return lo, s_lo
        return _fitting(seen, target)
    s_hi = measure(hi)
    seen[hi] = s_hi
    if s_hi <= target:  # both ends fit: the larger size (the largest rate where the size rises with λ)
        return _fitting(seen, target)
    # interpolate toward the middle of the accepted window [target·(1-tol), target]
    log_aim = math.log(max(target * (1 - tol / 2), 1e-300))

    def gap(size: float) -> float:  # < 0 below the aim
        return math.log(max(size, 1e-300)) - log_aim

    a, b, fa, fb = math.log(lo), math.log(hi), gap(s_lo), gap(s_hi)
    kept = ""  # which end was kept by the last step (Illinois)
    for _ in range(max_iter):
        w = b - a
        m = a - fa * w / (fb - fa) if fb > fa else 0.5 * (a + b)
        m = min(max(m, a + 0.1 * w), b - 0.1 * w)
        s = measure(math.exp(m))
        seen[math.exp(m)] = s
        if s <= target:
            a, fa = m, gap(s)
            if s >= target * (1 - tol):
                break
            if kept == "b":
                fb *= 0.5
            kept = "b"
        else:
            b, fb = m, gap(s)
            if kept == "a":
                fa *= 0.5
            kept = "a"
    return _fitting(seen, target)


def _fitting(seen: dict[float, float], target: float) -> tuple[float, float]:
    """Of the measured ``{rate: size}``, the largest size that fits (the larger rate on a tie), warning when
    the sizes do not rise with the rate."""
    points = sorted(seen.items())
    falls = [(p, q) for p, q in zip(points, points[1:]) if q[1] < p[1]]
    if falls:
        (r0, s0), (r1, s1) = falls[0]
        warnings.warn(
            f"the file size does not rise with the rate for this checkpoint and image ({s0:.6g} at λ={r0:.5g}, "
            f"{s1:.6g} at λ={r1:.5g}; {len(falls)} fall(s) in {len(points)} encodes): the rate found fits the "
            f"target, but another rate may fit it more closely", UserWarning, stacklevel=3)
    size, rate = max((s, r) for r, s in points if s <= target)  # the largest fitting size (larger rate on a tie)
    return rate, size
