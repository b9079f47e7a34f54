"""Same-backbone variable-rate baselines the paper compares against, all on :class:`~lpm.models.TICCodec`.

Every baseline is a :class:`~lpm.models.VariableRateCodec`, like :class:`~lpm.models.PromptedCodec`, so
evaluation and command-line code treat them alike, and each acts on its backbone only through the
:class:`~lpm.models.base.PromptSource` hook (prompt maps and/or latent gains). Unlike the prompted codec, all
of them train the backbone end to end (nothing is frozen).

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
import json
import math
from typing import Any, Optional, Sequence

import torch
from torch import Tensor, nn

from lpm.entropy import cpu_float64
from lpm.layers import PromptNet
from lpm.models.base import TICCodec
from lpm.models.prompted import PromptConfig
from lpm.models.variable_rate import Rate, VariableRateCodec, check_ladder, count_parameters

__all__ = [
    "RateConditionedCodec",
    "RateConditionedPrompts",
    "GainUnitCodec",
    "GainSource",
    "SeparateModels",
    "separate_models",
]


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

    def exact_hyper_decoder(self, z_hat: Tensor) -> dict[str, list[Tensor]]:
        return cpu_float64(self.module.hyper_decoder)(self._with_t(z_hat))

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


class RateConditionedCodec(VariableRateCodec):
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

    kind = "rate_conditioned"
    per_image_rates = True

    def __init__(
        self,
        base: TICCodec,
        rates: Sequence[float],
        prompt_config: Optional[PromptConfig] = None,
        lambda_range: Optional[tuple[float, float]] = None,
    ) -> None:
        ladder = check_ladder(rates)
        super().__init__(ladder, ladder[-1], lambda_range)
        lo, hi = self.rate_range
        if not lo < hi:
            raise ValueError(f"lambda_range must be 0 < λ_min < λ_max, got ({lo}, {hi})")
        self.prompt_config = prompt_config or PromptConfig()
        self.check_prompt_config(self.prompt_config)
        self.base = base
        self.base.requires_grad_(True)
        self.prompts = RateConditionedPrompts(base, self.prompt_config)

    @staticmethod
    def check_prompt_config(c: PromptConfig) -> None:
        """``ValueError`` unless ``c`` is a prompt configuration this codec can use (also checked by a run
        config, :mod:`lpm.train.config`, before a run writes anything)."""
        if c.latent_gain:
            raise ValueError("RateConditionedCodec does not use latent gains (prompt_config.latent_gain=True)")
        if c.additive or c.enc_source != "image" or c.dec_source != "latent" or not c.kv_prompts:
            raise ValueError("RateConditionedCodec feeds its prompt nets the image and the latents with the λ map: "
                             "prompt_config additive, enc_source, dec_source and kv_prompts must keep their defaults")

    @property
    def lambda_range(self) -> tuple[float, float]:
        return self.rate_range

    # ------------------------------------------------------------------ rates
    def normalized_log_rate(self, rate: Rate, batch: int = 1) -> Tensor:
        """``t = (log λ − log λ_min) / (log λ_max − log λ_min)`` per image, float32 ``(batch,)``
        (``batch`` is ignored for a 1-D tensor ``rate``)."""
        if isinstance(rate, Tensor) and rate.dim() == 1:
            batch = rate.numel()
        lo, hi = self.rate_range
        r = self.check_rate(rate, batch)
        # Python's log per image, not torch's vectorised one: the value feeds the hyper-decoder's prompt net,
        # whose output must be the same on the encoding and the decoding machine
        span = math.log(hi) - math.log(lo)
        t = [min(max((math.log(v) - math.log(lo)) / span, 0.0), 1.0) for v in r.double().cpu().tolist()]
        return torch.tensor(t, dtype=torch.float32)

    def sample_rates(self, batch_size: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """λ drawn log-uniformly in ``lambda_range``, one per image (float32 ``(batch_size,)``, CPU)."""
        lo, hi = self.rate_range
        u = torch.rand(batch_size, generator=generator, dtype=torch.float64)
        return torch.exp(math.log(lo) + u * (math.log(hi) - math.log(lo))).clamp(lo, hi).to(torch.float32)

    def prompt_source(self, rate: Rate, batch: int = 1) -> _LambdaSource:
        return self.prompts.source(self.normalized_log_rate(rate, batch))

    # ------------------------------------------------------------------ accounting and checkpoints
    def parameter_groups(self) -> dict[str, int]:
        return {"base": self.base.num_parameters(), "prompt": count_parameters(self.prompts)}

    def checkpoint_fields(self) -> dict[str, str]:
        return {
            **super().checkpoint_fields(),
            "prompt_config": json.dumps(self.prompt_config.to_dict()),
            "lambda_range": json.dumps(list(self.rate_range)),
        }

    @classmethod
    def from_checkpoint(cls, base: TICCodec, fields: dict[str, Any]) -> "RateConditionedCodec":
        return cls(base, fields["rates"], PromptConfig.from_dict(fields["prompt_config"]),
                   tuple(fields["lambda_range"]))


# =========================================================================== Cui et al. (CVPR 2021)
class GainSource:
    """A :class:`~lpm.models.base.PromptSource` holding per-image gains only (no prompt maps)."""

    prompt_logit: Optional[float] = None

    def __init__(self, log_gain: Tensor, log_inv_gain: Tensor) -> None:
        self.log_gain, self.log_inv_gain = log_gain, log_inv_gain  # (B, M) each

    def encoder(self, x: Tensor) -> None:
        return None

    def hyper_decoder(self, z_hat: Tensor) -> None:
        return None

    def exact_hyper_decoder(self, z_hat: Tensor) -> None:
        return None

    def decoder(self, y_hat: Tensor) -> None:
        return None

    def latent_log_gain(self) -> Tensor:
        return self.log_gain

    def latent_log_inv_gain(self) -> Tensor:
        return self.log_inv_gain


class GainUnitCodec(VariableRateCodec):
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
    the module docstring for the interpolation between trained rates. The gains reach the backbone as a
    :class:`GainSource` (the backbone's latent-gain hook), so this codec shares the backbone's forward,
    compress and decompress (and their float32 entropy models under autocast).
    """

    kind = "gain_units"
    per_image_rates = True

    def __init__(self, base: TICCodec, rates: Sequence[float], gain_init: str = "sqrt_lambda") -> None:
        ladder = check_ladder(rates)
        super().__init__(ladder, ladder[-1])
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

    # ------------------------------------------------------------------ gains
    def interpolation(self, rate: Rate, batch: int = 1) -> tuple[Tensor, Tensor, Tensor]:
        """``(a, b, l)`` per image: indices of the bracketing trained rates and the log-λ position
        ``l ∈ [0, 1)`` (``a == b``, ``l = 0`` exactly at a trained rate)."""
        if isinstance(rate, Tensor) and rate.dim() == 1:
            batch = rate.numel()
        r = self.check_rate(rate, batch)
        a, b, l = [], [], []
        for lam in r.tolist():
            hit = self.trained_index(lam)
            if hit is not None:
                a.append(hit), b.append(hit), l.append(0.0)
                continue
            j = next(i for i, q in enumerate(self.rates) if q > lam)
            la, lb = math.log(self.rates[j - 1]), math.log(self.rates[j])
            a.append(j - 1), b.append(j), l.append((math.log(lam) - la) / (lb - la))
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

    def prompt_source(self, rate: Rate, batch: int = 1) -> GainSource:
        return GainSource(*self.log_gains(rate, batch))

    # ------------------------------------------------------------------ accounting and checkpoints
    def parameter_groups(self) -> dict[str, int]:
        return {"base": self.base.num_parameters(), "gains": self.log_gain.numel() + self.log_inv_gain.numel()}

    @classmethod
    def from_checkpoint(cls, base: TICCodec, fields: dict[str, Any]) -> "GainUnitCodec":
        return cls(base, fields["rates"], gain_init="ones")


# =========================================================================== K separate models
def separate_models(base: TICCodec, rates: Sequence[float]) -> dict[float, TICCodec]:
    """One independent deep copy of ``base`` per rate (all parameters trainable), keyed by λ (sorted)."""
    out: dict[float, TICCodec] = {}
    for r in check_ladder(rates):
        m = copy.deepcopy(base)
        m.requires_grad_(True)
        out[r] = m
    return out


class SeparateModels(VariableRateCodec):
    """K separately optimised backbones behind the common variable-rate API. Only the trained rates exist:
    any other ``rate`` is a ``ValueError``. ``models`` maps λ → :class:`TICCodec` (see
    :func:`separate_models`); ``models_by_key["r0"]`` is the smallest λ. Each backbone codes its own rate
    as it is (no prompt source). Not stored as one checkpoint: each backbone is a ``tic`` checkpoint."""

    kind = "separate"
    continuous = False

    def __init__(self, models: dict[float, TICCodec]) -> None:
        if not models:
            raise ValueError("SeparateModels needs at least one model")
        ladder = check_ladder(models.keys())
        super().__init__(ladder, ladder[-1])
        by_rate = {float(r): m for r, m in models.items()}
        self.models = nn.ModuleDict({f"r{i}": by_rate[r] for i, r in enumerate(self.rates)})

    def key(self, rate: Rate) -> str:  # type: ignore[override]
        """``"r{i}"`` for ``rates[i]``; a tensor ``rate`` must hold one λ for the whole batch."""
        return f"r{self.rates.index(self.scalar_rate(rate))}"

    def model(self, rate: Rate) -> TICCodec:
        """The backbone trained for ``rate`` (one of :attr:`rates`)."""
        return self.models[self.key(rate)]

    def backbone(self, rate: Rate) -> TICCodec:
        return self.model(rate)

    def prompt_source(self, rate: Rate, batch: int = 1) -> None:
        return None

    def parameter_groups(self) -> dict[str, int]:
        return {f"model_{k}": m.num_parameters() for k, m in self.models.items()}
