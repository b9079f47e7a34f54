"""Same-backbone variable-rate baselines the paper compares against, all on :class:`~lpm.models.TICCodec`.

Every baseline exposes the API of :class:`~lpm.models.PromptedCodec`, so evaluation and command-line code
can treat them alike: ``rates`` (sorted λ list), ``base_rate``, ``rate_range``, ``forward(x, rate)``,
``compress(x, rate)``, ``decompress(strings, shape, rate, size=None)``, ``update(scale_table, force)``,
``aux_loss()``, ``parameter_counts()`` (with ``"total"``) and ``num_parameters()``. Unlike the prompted codec,
all of them train the backbone end to end (nothing is frozen).

* :class:`RateConditionedCodec` — after Kao et al., "Transformer-based Variable-rate Image Compression with
  Region-of-interest Control", ICIP 2023: ONE set of prompt networks (the structure of
  :class:`~lpm.models.LayerAdaptivePromptModule`) whose every input gets an extra constant channel holding
  the normalised log-λ ``t = (log λ − log λ_min) / (log λ_max − log λ_min) ∈ [0, 1]``. Continuous in λ by
  construction; λ may differ per image (training samples it per image)::

        t ──┬──────────────┬────────────────┐
        x ─[x|t]─ PromptNet_enc ─► prompts for g_a, h_a
                         ẑ ─[ẑ|t]─ PromptNet_hyp ─► prompts for h_s
                                          ŷ ─[ŷ|t]─ PromptNet_dec ─► prompts for g_s

* :class:`GainUnitCodec` — after Cui et al., "Asymmetric Gained Deep Image Compression with Continuous Rate
  Adaptation", CVPR 2021: per trained rate a gain vector ``g_i`` (M,) scales ``y`` before the hyper-analysis
  and quantisation, and a separately learned inverse gain ``g'_i`` (M,) scales ``ŷ`` before synthesis::

        x ─pad─► g_a ─► y ─×g─► y_g ─► h_a ─► z ─► ẑ ─► h_s ─► (σ, μ)
                                 └──────── GaussianConditional(σ, μ) ──► ŷ_g ─×g'─► g_s ─crop─► x̂

  Between adjacent trained rates ``λ_a < λ < λ_b`` the gains are interpolated exponentially,
  ``g = g_a^(1−l) · g_b^l`` (likewise ``g'``), with ``l = (log λ − log λ_a) / (log λ_b − log λ_a)``, the
  position of λ in *log λ* (Cui et al. leave ``l`` a free knob; tying it to log λ lets ``rate`` mean λ).

* :func:`separate_models` / :class:`SeparateModels` — the "K separately optimised models" reference: one
  deep copy of the backbone per rate; only the trained rates exist.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Iterable, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from lpm.layers import PromptNet
from lpm.models.base import TICCodec
from lpm.models.prompted import PromptConfig

__all__ = [
    "RateConditionedCodec",
    "RateConditionedPrompts",
    "GainUnitCodec",
    "SeparateModels",
    "separate_models",
]

Rate = Union[float, Tensor]

_REL_TOL = 1e-9


# =========================================================================== shared helpers
def _check_ladder(rates: Iterable[float]) -> list[float]:
    out = sorted(float(r) for r in rates)
    if not out:
        raise ValueError("need at least one rate")
    if len(set(out)) != len(out) or any(not (math.isfinite(r) and r > 0) for r in out):
        raise ValueError(f"rates must be distinct positive finite λ values, got {out}")
    return out


def _rate_vector(rate: Rate, batch: int, lo: float, hi: float, snap: Sequence[float] = ()) -> Tensor:
    """``rate`` (a number or a 1-D tensor of per-image λ) as a float64 CPU tensor ``(batch,)``, checked to lie
    in ``[lo, hi]``. Values within the input's precision (relative 1e-9 for numbers and float64 tensors,
    a few float32 ulps for float32 tensors) of ``lo``, ``hi`` or a ``snap`` point are set to it exactly."""
    tol = _REL_TOL
    if isinstance(rate, Tensor):
        if rate.is_floating_point():
            tol = max(tol, 8 * torch.finfo(rate.dtype).eps)
        r = rate.detach().to("cpu", torch.float64)
        if r.dim() == 0:
            r = r.expand(batch)
        elif r.dim() != 1 or r.numel() != batch:
            raise ValueError(f"a rate tensor must be a scalar or have one λ per image ({batch}), got {tuple(r.shape)}")
    else:
        r = torch.full((batch,), float(rate), dtype=torch.float64)
    bad = ~torch.isfinite(r) | (r < lo * (1 - tol)) | (r > hi * (1 + tol))
    if bool(bad.any()):
        raise ValueError(f"rate {r[bad][0].item()} is outside the trained range [{lo}, {hi}]")
    r = r.clamp(lo, hi).clone()
    for q in (lo, hi, *snap):
        r[(r - q).abs() <= tol * q] = q
    return r


def _check_strings(strings: Any) -> None:
    if not isinstance(strings, (list, tuple)) or len(strings) != 2:
        raise ValueError("expected strings = [y_strings, z_strings]")


def _load_with_resize(owner: nn.Module, codecs: dict[str, TICCodec], state_dict: dict[str, Tensor], strict: bool):
    """Let each backbone resize its entropy-model buffers (compressai's CDF tables change size with the
    weights) before the ordinary ``load_state_dict`` of ``owner``. ``codecs`` maps prefix → backbone."""
    for prefix, codec in codecs.items():
        p = prefix + "."
        codec.load_state_dict({k[len(p):]: v for k, v in state_dict.items() if k.startswith(p)}, strict=strict)
    return nn.Module.load_state_dict(owner, state_dict, strict=strict)


def _num(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# =========================================================================== Kao et al. (ICIP 2023)
class _LambdaSource:
    """A :class:`~lpm.models.base.PromptSource`: the shared prompt nets fed with a per-image log-λ map."""

    prompt_logit: Optional[float] = None

    def __init__(self, module: "RateConditionedPrompts", t: Tensor) -> None:
        self.module, self.t = module, t  # t: (B,) normalised log-λ

    def _with_t(self, f: Tensor) -> Tensor:
        if self.t.numel() != f.shape[0]:
            raise ValueError(f"{self.t.numel()} rates for a batch of {f.shape[0]} images")
        t = self.t.to(device=f.device, dtype=f.dtype).view(-1, 1, 1, 1).expand(-1, 1, *f.shape[-2:])
        return torch.cat([f, t], dim=1)

    def encoder(self, x: Tensor) -> dict[str, list[Tensor]]:
        return self.module.encoder(self._with_t(x))

    def hyper_decoder(self, z_hat: Tensor) -> dict[str, list[Tensor]]:
        return self.module.hyper_decoder(self._with_t(z_hat))

    def decoder(self, y_hat: Tensor) -> dict[str, list[Tensor]]:
        return self.module.decoder(self._with_t(y_hat))

    def latent_log_gain(self) -> None:
        return None


class RateConditionedPrompts(nn.Module):
    """One prompt module (encoder-, ẑ- and ŷ-side :class:`~lpm.layers.PromptNet`) whose inputs carry one
    extra channel: the constant normalised log-λ map. Same layout as
    :class:`~lpm.models.LayerAdaptivePromptModule`, ``in_channels + 1``."""

    def __init__(self, base: TICCodec, config: PromptConfig) -> None:
        super().__init__()
        t = base.prompt_targets()
        N, M = base.config.N, base.config.M
        c = config
        self.encoder = PromptNet(3 + 1, c.enc_channels, 0, t["encoder"], c.enc_head_hidden, 3, c.head_init_scale)
        self.hyper_decoder = PromptNet(
            N + 1, c.dec_channels, 6, t["hyper_decoder"], c.dec_head_hidden, 1, c.head_init_scale
        )
        self.decoder = PromptNet(M + 1, c.dec_channels, 4, t["decoder"], c.dec_head_hidden, 1, c.head_init_scale)

    def source(self, t: Tensor) -> _LambdaSource:
        """The prompt source for per-image normalised log-λ ``t`` ``(B,)``."""
        return _LambdaSource(self, t)


class RateConditionedCodec(nn.Module):
    """Backbone + one λ-conditioned prompt module, trained end to end (after Kao et al., ICIP 2023).

    Args:
        base: the backbone; it becomes part of this model and is trained (``requires_grad`` is switched on
            for all its parameters). Pass ``copy.deepcopy(base)`` to keep the original untouched.
        rates: the λ values evaluated/reported (any λ in ``lambda_range`` works).
        prompt_config: sizes of the prompt nets (``latent_gain`` is not part of this baseline).
        lambda_range: ``(λ_min, λ_max)`` of the log-λ normalisation and of training; default: the ends of
            ``rates``.

    ``rate`` arguments are a number or a 1-D tensor with one λ per image.
    """

    def __init__(
        self,
        base: TICCodec,
        rates: Sequence[float],
        prompt_config: Optional[PromptConfig] = None,
        lambda_range: Optional[tuple[float, float]] = None,
    ) -> None:
        super().__init__()
        self.rates = _check_ladder(rates)
        lo, hi = (self.rates[0], self.rates[-1]) if lambda_range is None else map(float, lambda_range)
        if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi):
            raise ValueError(f"lambda_range must be 0 < λ_min < λ_max, got ({lo}, {hi})")
        if self.rates[0] < lo * (1 - _REL_TOL) or self.rates[-1] > hi * (1 + _REL_TOL):
            raise ValueError(f"rates {self.rates} must lie in lambda_range ({lo}, {hi})")
        self.lambda_range = (lo, hi)
        self.prompt_config = prompt_config or PromptConfig()
        if self.prompt_config.latent_gain:
            raise ValueError("RateConditionedCodec does not use latent gains (prompt_config.latent_gain=True)")
        self.base = base
        self.base.requires_grad_(True)
        self.base_rate = self.rates[-1]
        self.prompts = RateConditionedPrompts(base, self.prompt_config)

    @property
    def rate_range(self) -> tuple[float, float]:
        return self.lambda_range

    # ------------------------------------------------------------------ rates
    def normalized_log_rate(self, rate: Rate, batch: int = 1) -> Tensor:
        """``t = (log λ − log λ_min) / (log λ_max − log λ_min)`` per image, float32 ``(batch,)``
        (``batch`` is ignored for a 1-D tensor ``rate``)."""
        if isinstance(rate, Tensor) and rate.dim() == 1:
            batch = rate.numel()
        lo, hi = self.lambda_range
        r = _rate_vector(rate, batch, lo, hi)
        t = (r.log() - math.log(lo)) / (math.log(hi) - math.log(lo))
        return t.clamp(0.0, 1.0).to(torch.float32)

    def sample_rates(self, batch_size: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """λ drawn log-uniformly in ``lambda_range``, one per image (float32 ``(batch_size,)``, CPU)."""
        lo, hi = self.lambda_range
        u = torch.rand(batch_size, generator=generator, dtype=torch.float64)
        return torch.exp(math.log(lo) + u * (math.log(hi) - math.log(lo))).clamp(lo, hi).to(torch.float32)

    def prompt_source(self, rate: Rate, batch: int = 1) -> _LambdaSource:
        return self.prompts.source(self.normalized_log_rate(rate, batch))

    # ------------------------------------------------------------------ codec API
    def forward(self, x: Tensor, rate: Rate) -> dict[str, Any]:
        return self.base(x, self.prompt_source(rate, x.shape[0]))

    def compress(self, x: Tensor, rate: Rate) -> dict[str, Any]:
        return self.base.compress(x, self.prompt_source(rate, x.shape[0]))

    def decompress(
        self, strings: list[list[bytes]], shape: Sequence[int], rate: Rate, size: Optional[Sequence[int]] = None
    ) -> dict[str, Tensor]:
        _check_strings(strings)
        return self.base.decompress(strings, shape, self.prompt_source(rate, len(strings[1])), size=size)

    def update(self, scale_table: Optional[Tensor] = None, force: bool = False) -> bool:
        return self.base.update(scale_table=scale_table, force=force)

    def aux_loss(self) -> Tensor:
        return self.base.aux_loss()

    def load_state_dict(self, state_dict: dict[str, Tensor], strict: bool = True):  # type: ignore[override]
        return _load_with_resize(self, {"base": self.base}, state_dict, strict)

    # ------------------------------------------------------------------ accounting
    def parameter_counts(self) -> dict[str, int]:
        counts = {"base": self.base.num_parameters(), "prompt": _num(self.prompts)}
        counts["total"] = sum(counts.values())
        return counts

    def num_parameters(self) -> int:
        return _num(self)


# =========================================================================== Cui et al. (CVPR 2021)
class GainUnitCodec(nn.Module):
    """Backbone + asymmetric gain units, trained end to end (after Cui et al., CVPR 2021).

    Args:
        base: the backbone; it becomes part of this model and is trained (``requires_grad`` switched on).
            Pass ``copy.deepcopy(base)`` to keep the original untouched.
        rates: the trained λ ladder; one gain pair per rate.
        gain_init: ``"sqrt_lambda"`` (default) starts ``g_i = (λ_i/λ_max)^½`` and ``g'_i = 1/g_i`` (a
            quantisation step ∝ λ^-½, the high-rate approximation; the largest rate starts as the plain
            backbone), ``"ones"`` starts all gains at 1.

    Gains are stored as logs (``log_gain``, ``log_inv_gain``: ``(K, M)``, row ``i`` for ``rates[i]``), so they
    stay positive. ``rate`` arguments are a number or a 1-D tensor of per-image λ in the trained range; see
    the module docstring for the interpolation between trained rates.
    """

    def __init__(self, base: TICCodec, rates: Sequence[float], gain_init: str = "sqrt_lambda") -> None:
        super().__init__()
        self.rates = _check_ladder(rates)
        self.base_rate = self.rates[-1]
        self.base = base
        self.base.requires_grad_(True)
        K, M = len(self.rates), base.config.M
        if gain_init == "sqrt_lambda":
            init = torch.tensor([0.5 * math.log(r / self.base_rate) for r in self.rates]).view(K, 1).expand(K, M)
        elif gain_init == "ones":
            init = torch.zeros(K, M)
        else:
            raise ValueError(f"gain_init must be 'sqrt_lambda' or 'ones', got {gain_init!r}")
        self.gain_init = gain_init
        self.log_gain = nn.Parameter(init.clone().float())
        self.log_inv_gain = nn.Parameter((-init).clone().float())

    @property
    def rate_range(self) -> tuple[float, float]:
        return self.rates[0], self.rates[-1]

    # ------------------------------------------------------------------ gains
    def interpolation(self, rate: Rate, batch: int = 1) -> tuple[Tensor, Tensor, Tensor]:
        """``(a, b, l)`` per image: indices of the bracketing trained rates and the log-λ position
        ``l ∈ [0, 1)`` (``a == b``, ``l = 0`` exactly at a trained rate)."""
        if isinstance(rate, Tensor) and rate.dim() == 1:
            batch = rate.numel()
        r = _rate_vector(rate, batch, *self.rate_range, snap=self.rates)
        log_r = r.log()
        a, b, l = [], [], []
        for lam, lr in zip(r.tolist(), log_r.tolist()):
            hit = next((i for i, q in enumerate(self.rates) if math.isclose(lam, q, rel_tol=_REL_TOL)), None)
            if hit is not None:
                a.append(hit), b.append(hit), l.append(0.0)
                continue
            j = next(i for i, q in enumerate(self.rates) if q > lam)
            la, lb = math.log(self.rates[j - 1]), math.log(self.rates[j])
            a.append(j - 1), b.append(j), l.append((lr - la) / (lb - la))
        return torch.tensor(a), torch.tensor(b), torch.tensor(l, dtype=torch.float64)

    def log_gains(self, rate: Rate, batch: int = 1) -> tuple[Tensor, Tensor]:
        """Per-image ``(log g, log g')``, each ``(B, M)``: ``(1−l)·log g_a + l·log g_b``, i.e.
        ``g = g_a^(1−l) · g_b^l``; exactly the stored row at a trained rate."""
        a, b, l = self.interpolation(rate, batch)
        out = []
        for p in (self.log_gain, self.log_inv_gain):
            w = l.to(device=p.device, dtype=p.dtype).view(-1, 1)
            at_trained = (a == b).to(p.device).view(-1, 1)
            mixed = (1 - w) * p[a.to(p.device)] + w * p[b.to(p.device)]
            out.append(torch.where(at_trained, p[a.to(p.device)], mixed))
        return out[0], out[1]

    def gains(self, rate: Rate, batch: int = 1) -> tuple[Tensor, Tensor]:
        """Per-image gain and inverse gain ``(g, g')``, each ``(B, M)``, positive."""
        lg, lig = self.log_gains(rate, batch)
        return lg.exp(), lig.exp()

    # ------------------------------------------------------------------ transforms
    def _analysis(self, xp: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
        y = self.base.g_a(xp) * g.to(xp.dtype).view(*g.shape, 1, 1)
        return y, self.base.h_a(y)

    def _params(self, z_hat: Tensor) -> tuple[Tensor, Tensor]:
        scales, means = self.base.h_s(z_hat).chunk(2, 1)
        return scales, means

    def _synthesis(self, y_hat: Tensor, g_inv: Tensor) -> Tensor:
        return self.base.g_s(y_hat * g_inv.to(y_hat.dtype).view(*g_inv.shape, 1, 1))

    # ------------------------------------------------------------------ codec API
    def forward(self, x: Tensor, rate: Rate) -> dict[str, Any]:
        """Like :meth:`TICCodec.forward` (noise for likelihoods and straight-through rounding in training,
        exact rounding in eval mode) with the gains of ``rate``."""
        h, w = x.shape[-2:]
        g, g_inv = self.gains(rate, x.shape[0])
        y, z = self._analysis(self.base.pad(x), g)
        z_hat, z_likelihoods = self.base.entropy_bottleneck(z)
        scales, means = self._params(z_hat)
        _, y_likelihoods = self.base.gaussian_conditional(y, scales, means=means)
        if self.training:
            y_hat = y + (torch.round(y - means) + means - y).detach()
        else:
            y_hat = torch.round(y - means) + means
        x_hat = self._synthesis(y_hat, g_inv)[..., :h, :w]
        return {"x_hat": x_hat, "likelihoods": {"y": y_likelihoods, "z": z_likelihoods}}

    @torch.no_grad()
    def compress(self, x: Tensor, rate: Rate) -> dict[str, Any]:
        """Entropy-code ``(B, 3, H, W)`` with compressai's rANS coder; ``update()`` must have been called."""
        g, _ = self.gains(rate, x.shape[0])
        y, z = self._analysis(self.base.pad(x), g)
        z_strings = self.base.entropy_bottleneck.compress(z)
        z_hat = self.base.entropy_bottleneck.decompress(z_strings, z.shape[-2:])
        scales, means = self._params(z_hat)
        indexes = self.base.gaussian_conditional.build_indexes(scales)
        y_strings = self.base.gaussian_conditional.compress(y, indexes, means=means)
        return {"strings": [y_strings, z_strings], "shape": tuple(z.shape[-2:])}

    @torch.no_grad()
    def decompress(
        self, strings: list[list[bytes]], shape: Sequence[int], rate: Rate, size: Optional[Sequence[int]] = None
    ) -> dict[str, Tensor]:
        _check_strings(strings)
        _, g_inv = self.gains(rate, len(strings[1]))
        z_hat = self.base.entropy_bottleneck.decompress(strings[1], tuple(shape))
        scales, means = self._params(z_hat)
        indexes = self.base.gaussian_conditional.build_indexes(scales)
        y_hat = self.base.gaussian_conditional.decompress(strings[0], indexes, z_hat.dtype, means)
        x_hat = self._synthesis(y_hat, g_inv).clamp_(0, 1)
        if size is not None:
            x_hat = x_hat[..., : size[0], : size[1]]
        return {"x_hat": x_hat}

    def update(self, scale_table: Optional[Tensor] = None, force: bool = False) -> bool:
        return self.base.update(scale_table=scale_table, force=force)

    def aux_loss(self) -> Tensor:
        return self.base.aux_loss()

    def load_state_dict(self, state_dict: dict[str, Tensor], strict: bool = True):  # type: ignore[override]
        return _load_with_resize(self, {"base": self.base}, state_dict, strict)

    # ------------------------------------------------------------------ accounting
    def parameter_counts(self) -> dict[str, int]:
        counts = {"base": self.base.num_parameters(), "gains": self.log_gain.numel() + self.log_inv_gain.numel()}
        counts["total"] = sum(counts.values())
        return counts

    def num_parameters(self) -> int:
        return _num(self)


# =========================================================================== K separate models
def separate_models(base: TICCodec, rates: Sequence[float]) -> dict[float, TICCodec]:
    """One independent deep copy of ``base`` per rate (all parameters trainable), keyed by λ (sorted)."""
    out: dict[float, TICCodec] = {}
    for r in _check_ladder(rates):
        m = copy.deepcopy(base)
        m.requires_grad_(True)
        out[r] = m
    return out


class SeparateModels(nn.Module):
    """K separately optimised backbones behind the common variable-rate API. Only the trained rates exist:
    any other ``rate`` is a ``ValueError``. ``models`` maps λ → :class:`TICCodec` (see
    :func:`separate_models`); ``models_by_key["r0"]`` is the smallest λ."""

    def __init__(self, models: dict[float, TICCodec]) -> None:
        super().__init__()
        if not models:
            raise ValueError("SeparateModels needs at least one model")
        self.rates = _check_ladder(models.keys())
        by_rate = {float(r): m for r, m in models.items()}
        self.models = nn.ModuleDict({f"r{i}": by_rate[r] for i, r in enumerate(self.rates)})
        self.base_rate = self.rates[-1]

    @property
    def rate_range(self) -> tuple[float, float]:
        return self.rates[0], self.rates[-1]

    def key(self, rate: Rate) -> str:
        """``"r{i}"`` for ``rates[i]``; a tensor ``rate`` must hold one λ for the whole batch."""
        tol = _REL_TOL
        if isinstance(rate, Tensor):
            if rate.numel() == 0 or not bool((rate == rate.reshape(-1)[0]).all()):
                raise ValueError("SeparateModels codes a batch with one rate; got different per-image rates")
            if rate.is_floating_point():
                tol = max(tol, 8 * torch.finfo(rate.dtype).eps)
            rate = rate.reshape(-1)[0].item()
        rate = float(rate)
        for i, r in enumerate(self.rates):
            if math.isclose(rate, r, rel_tol=tol):
                return f"r{i}"
        raise ValueError(
            f"rate {rate} is not one of the separately trained rates {self.rates}: K separate models have no "
            "continuous rate"
        )

    def model(self, rate: float) -> TICCodec:
        """The backbone trained for ``rate`` (one of :attr:`rates`)."""
        return self.models[self.key(rate)]

    # ------------------------------------------------------------------ codec API
    def forward(self, x: Tensor, rate: float) -> dict[str, Any]:
        return self.model(rate)(x)

    def compress(self, x: Tensor, rate: float) -> dict[str, Any]:
        return self.model(rate).compress(x)

    def decompress(
        self, strings: list[list[bytes]], shape: Sequence[int], rate: float, size: Optional[Sequence[int]] = None
    ) -> dict[str, Tensor]:
        return self.model(rate).decompress(strings, shape, size=size)

    def update(self, scale_table: Optional[Tensor] = None, force: bool = False) -> bool:
        updated = [m.update(scale_table=scale_table, force=force) for m in self.models.values()]
        return any(updated)

    def aux_loss(self) -> Tensor:
        return sum(m.aux_loss() for m in self.models.values())  # type: ignore[return-value]

    def load_state_dict(self, state_dict: dict[str, Tensor], strict: bool = True):  # type: ignore[override]
        return _load_with_resize(self, {f"models.{k}": m for k, m in self.models.items()}, state_dict, strict)

    # ------------------------------------------------------------------ accounting
    def parameter_counts(self) -> dict[str, int]:
        counts = {f"model_{k}": m.num_parameters() for k, m in self.models.items()}
        counts["total"] = sum(counts.values())
        return counts

    def num_parameters(self) -> int:
        return _num(self)
