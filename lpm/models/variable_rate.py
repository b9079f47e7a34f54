"""The one interface every variable-rate codec of lpm shares: :class:`VariableRateCodec`.

A variable-rate codec is one or more :class:`~lpm.models.TICCodec` backbones plus something that moves them
to a rate ``λ`` (the weight of the rate–distortion loss ``λ·255²·MSE + bpp``). In lpm that "something" is
always a :class:`~lpm.models.base.PromptSource` handed to the backbone — prompt maps for the Swin blocks, and
optionally per-channel gains on the latent — so a new method is a subclass that implements one method,
:meth:`VariableRateCodec.prompt_source` (and, for several backbones, :meth:`VariableRateCodec.backbone`)::

    rate ─► check_rate ─► prompt_source(rate) ──┐
    x ─────────────────────────────────► backbone(rate) ─► forward / compress / decompress

What the base class owns, once for all methods:

* the λ ladder (``rates``, sorted, distinct, finite, positive), ``base_rate`` and ``rate_range``;
* :meth:`check_rate`, the ONE rate check (relative tolerance ``1e-9`` for Python numbers and float64
  tensors, a few ulps for float32 tensors; values within it of a trained rate or a range end snap to it);
* ``forward(x, rate)`` / ``compress(x, rate)`` / ``decompress(strings, shape, rate, size)`` in compressai's
  dictionaries; under bf16 autocast the entropy models run in float32 (done by the backbone);
* ``update()``, ``aux_loss()`` and the buffer-resizing ``load_state_dict()`` (compressai's
  ``CompressionModel`` walks every entropy model of every backbone);
* parameter accounting: :meth:`parameter_counts` (groups + ``"total"``), :meth:`num_parameters`,
  :meth:`storage_ratio`;
* checkpoint fields: :meth:`checkpoint_fields` / :meth:`from_checkpoint` (``lpm.checkpoints`` stores the
  ``kind`` and these fields; :data:`lpm.models.CODEC_KINDS` maps kinds to classes).
"""

from __future__ import annotations

import json
import math
from typing import Any, ClassVar, Iterable, Optional, Sequence, Union

import torch
from compressai.models import CompressionModel
from torch import Tensor, nn

from lpm.models.base import Progress, PromptSource, TICCodec

__all__ = ["Rate", "RATE_REL_TOL", "VariableRateCodec", "check_ladder", "count_parameters"]

Rate = Union[float, Tensor]

#: Relative tolerance of every rate comparison (Python floats and float64 tensors).
RATE_REL_TOL = 1e-9


def check_ladder(rates: Iterable[float]) -> list[float]:
    """``rates`` as a sorted list of distinct, finite, positive floats (``ValueError`` otherwise)."""
    try:
        out = sorted(float(r) for r in rates)
    except (TypeError, ValueError):
        raise ValueError(f"rates must be numbers, got {rates!r:.80}") from None
    if not out:
        raise ValueError("need at least one rate")
    if any(not (math.isfinite(r) and r > 0) for r in out):
        raise ValueError(f"rates must be finite positive λ values, got {out}")
    if any(math.isclose(a, b, rel_tol=RATE_REL_TOL) for a, b in zip(out, out[1:])):
        raise ValueError(f"rates must be distinct, got {out}")
    return out


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())



def _full(rate: float) -> str:
    """A λ in a message: as short as :g where that shows it exactly enough, else with every digit needed (0.04830001
    was shown as 0.0483, inside the range it was said to be outside)."""
    short = f"{rate:g}"
    return short if float(short) == rate else repr(float(rate))

class VariableRateCodec(CompressionModel):
    """Base class of the variable-rate codecs (see the module docstring).

    Args:
        rates: the trained λ ladder.
        base_rate: the λ the backbone was trained at (one of ``rates``).
        range_: ``(λ_min, λ_max)`` accepted by :meth:`check_rate`; default the ends of the ladder.

    Subclasses set :attr:`kind` (the checkpoint name), :attr:`continuous` (whether rates between trained
    ones are meaningful) and :attr:`per_image_rates` (whether a batch may carry one λ per image), and
    implement :meth:`prompt_source`.
    """

    #: Name of this codec kind in checkpoints and in :data:`lpm.models.CODEC_KINDS`.
    kind: ClassVar[str] = ""
    #: Whether any λ in ``rate_range`` is supported (False: only the trained rates).
    continuous: ClassVar[bool] = True
    #: Whether ``rate`` may be a 1-D tensor with one λ per image.
    per_image_rates: ClassVar[bool] = False

    def __init__(self, rates: Sequence[float], base_rate: float,
                 range_: Optional[tuple[float, float]] = None) -> None:
        super().__init__()
        self.rates = check_ladder(rates)
        base_rate = float(base_rate)
        if not any(math.isclose(base_rate, r, rel_tol=RATE_REL_TOL) for r in self.rates):
            raise ValueError(f"base_rate {base_rate} is not in the rate ladder {self.rates}")
        self.base_rate = next(r for r in self.rates if math.isclose(base_rate, r, rel_tol=RATE_REL_TOL))
        lo, hi = (self.rates[0], self.rates[-1]) if range_ is None else (float(range_[0]), float(range_[1]))
        if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi):
            raise ValueError(f"rate range must be 0 < λ_min <= λ_max, got ({lo}, {hi})")
        if self.rates[0] < lo * (1 - RATE_REL_TOL) or self.rates[-1] > hi * (1 + RATE_REL_TOL):
            raise ValueError(f"rates {self.rates} must lie in the rate range ({lo}, {hi})")
        self._range = (lo, hi)

    # ------------------------------------------------------------------ rates
    @property
    def rate_range(self) -> tuple[float, float]:
        """``(λ_min, λ_max)`` accepted by :meth:`check_rate`."""
        return self._range

    def check_rate(self, rate: Rate, batch: int = 1) -> Tensor:
        """``rate`` (a number, or for :attr:`per_image_rates` codecs a 1-D tensor of one λ per image) as a
        float64 CPU tensor ``(batch,)``, checked to lie in :attr:`rate_range` (``ValueError`` otherwise).

        Values within the input's precision of a range end or a trained rate are set to it exactly (relative
        ``1e-9`` for numbers and float64 tensors, ``8·eps`` for lower-precision tensors). Codecs that are not
        :attr:`continuous` also refuse rates that are not trained ones.
        """
        tol = RATE_REL_TOL
        if isinstance(rate, Tensor):
            if rate.is_floating_point():
                tol = max(tol, 8 * torch.finfo(rate.dtype).eps)
            r = rate.detach().to("cpu", torch.float64)
            if r.dim() == 0:
                r = r.expand(batch)
            elif r.dim() != 1 or r.numel() != batch:
                raise ValueError(f"a rate tensor must be a scalar or hold one λ per image ({batch}), "
                                 f"got shape {tuple(r.shape)}")
            elif not self.per_image_rates and r.numel() > 1 and not bool((r == r[0]).all()):
                raise ValueError(f"{type(self).__name__} codes a batch at one rate; got different per-image rates")
        else:
            try:
                value = float(rate)
            except (TypeError, ValueError):
                raise ValueError(f"rate must be a number, got {rate!r:.80}") from None
            r = torch.full((batch,), value, dtype=torch.float64)
        lo, hi = self.rate_range
        if not self.continuous:
            off = [v for v in r.tolist() if not any(abs(v - q) <= tol * q for q in self.rates)]
            if off:
                raise ValueError(f"rate {_full(off[0])} is not one of the trained rates {self.rates}: "
                                 f"{type(self).__name__} has no continuous rate")
        bad = ~torch.isfinite(r) | (r < lo * (1 - tol)) | (r > hi * (1 + tol))
        if bool(bad.any()):
            raise ValueError(f"rate {_full(r[bad][0].item())} is outside the trained range [{lo:g}, {hi:g}]")
        r = r.clamp(lo, hi).clone()
        for q in (lo, hi, *self.rates):
            r[(r - q).abs() <= tol * q] = q
        return r

    def scalar_rate(self, rate: Rate) -> float:
        """One checked λ for a whole batch (see :meth:`check_rate`)."""
        if isinstance(rate, Tensor) and rate.dim() == 1:
            r = self.check_rate(rate, rate.numel())
            if not bool((r == r[0]).all()):
                raise ValueError(f"{type(self).__name__} codes a batch at one rate; got different per-image rates")
            return float(r[0])
        return float(self.check_rate(rate)[0])

    def trained_index(self, rate: float) -> Optional[int]:
        """Index of ``rate`` in :attr:`rates` (within the tolerance), or ``None``."""
        return next((i for i, q in enumerate(self.rates) if math.isclose(rate, q, rel_tol=RATE_REL_TOL)), None)

    def key(self, rate: float) -> str:
        """``"r{i}"`` for ``rates[i]`` (``r0`` is the smallest λ); ``KeyError`` for an untrained rate."""
        i = self.trained_index(float(rate))
        if i is None:
            raise KeyError(f"{rate} is not a trained rate; trained rates: {self.rates}")
        return f"r{i}"

    # ------------------------------------------------------------------ what subclasses provide
    def prompt_source(self, rate: Rate, batch: int = 1) -> Optional[PromptSource]:
        """What moves :meth:`backbone` to ``rate`` (``None``: the backbone as it is)."""
        raise NotImplementedError

    def backbone(self, rate: Rate) -> TICCodec:
        """The backbone that codes at ``rate`` (default: the shared ``self.base``)."""
        return self.base  # type: ignore[attr-defined,no-any-return]

    # ------------------------------------------------------------------ codec API (compressai dictionaries)
    def forward(self, x: Tensor, rate: Rate) -> dict[str, Any]:
        return self.backbone(rate)(x, self.prompt_source(rate, x.shape[0]))

    def compress(self, x: Tensor, rate: Rate, progress: Optional[Progress] = None) -> dict[str, Any]:
        """``{"strings", "shape", "table_checks"}`` (see :meth:`lpm.models.TICCodec.compress`; ``progress`` is
        called per tile of a large image)."""
        return self.backbone(rate).compress(x, self.prompt_source(rate, x.shape[0]), progress=progress)

    def decompress(
        self, strings: list[list[bytes]], shape: Sequence[int], rate: Rate, size: Optional[Sequence[int]] = None,
        table_checks: Optional[Sequence[int]] = None, exact: bool = True, progress: Optional[Progress] = None,
    ) -> dict[str, Tensor]:
        """``{"x_hat"}``; ``table_checks``, ``exact`` and ``progress`` as in
        :meth:`lpm.models.TICCodec.decompress`."""
        if not isinstance(strings, (list, tuple)) or len(strings) != 2:
            raise ValueError("expected strings = [y_strings, z_strings]")
        batch = len(strings[1])
        return self.backbone(rate).decompress(strings, shape, self.prompt_source(rate, batch), size=size,
                                              table_checks=table_checks, exact=exact, progress=progress)

    # ------------------------------------------------------------------ accounting
    def parameter_groups(self) -> dict[str, int]:
        """Parameter counts by group (e.g. ``base``, ``prompt_r0``); :meth:`parameter_counts` adds the total."""
        return {"base": self.base.num_parameters()}  # type: ignore[attr-defined]

    def parameter_counts(self) -> dict[str, int]:
        counts = dict(self.parameter_groups())
        counts["total"] = sum(counts.values())
        return counts

    def num_parameters(self) -> int:
        return count_parameters(self)

    def storage_ratio(self) -> float:
        """Parameters stored for all rates over those of one separately trained backbone per rate."""
        per_model = max(m.num_parameters() for m in self.modules() if isinstance(m, TICCodec))
        return self.parameter_counts()["total"] / (len(self.rates) * per_model)

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_fields(self) -> dict[str, str]:
        """Metadata (strings) that, with the backbone's config, rebuild this codec (see :meth:`from_checkpoint`)."""
        return {"rates": json.dumps(self.rates), "base_rate": repr(self.base_rate)}

    @classmethod
    def from_checkpoint(cls, base: TICCodec, fields: dict[str, Any]) -> "VariableRateCodec":
        """Build an (untrained) codec of this kind around ``base`` from parsed :meth:`checkpoint_fields`."""
        raise NotImplementedError
