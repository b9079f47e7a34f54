"""Low-rank rate adapters: one frozen backbone plus, per extra rate, low-rank updates of its linear layers.

After Xu, Huang and Wu, "Variable-Rate Deep Image Compression based on Low-Rank Adaptation by Progressive
Learning", arXiv:2606.16107 (2026), the successor of the LPM paper: instead of prompt modules, every non-base
rate ``λ_i`` owns a low-rank update ``ΔW_i = B_i A_i`` (``A_i``: ``r × in``, ``B_i``: ``out × r``, rank ``r``)
of chosen ``nn.Linear`` layers of the frozen base — the attention ``qkv``/``proj`` and the MLP ``fc1``/``fc2``
of every Swin block of the chosen transforms (:class:`LoRAConfig`). Training is the same progressive,
rate-by-rate schedule on the same data subset as the prompt modules (``kind: lora`` runs of ``lpm train``)::

    Swin block of the base:   y = W x + b                       (W, b frozen)
    at rate λ_i:              y = W x + b + B_i (A_i x)          (only A_i, B_i trained)
    merged for inference:     y = (W + B_i A_i) x + b            (:meth:`LoRACodec.merge`: no extra cost)

The base's own rate uses no adapter at all, so it reproduces the base bit for bit. ``B`` starts at zero, so
a fresh adapter is the base exactly; the first adapter on each side of the base starts that way, every
further one from its trained neighbour (one notch closer to the base).

Continuous rate (beyond the paper, measured in the comparison notebook): any λ between the smallest and
largest trained one. With ``t`` the position of λ between its trained neighbours ``λ_a < λ < λ_b`` in
log λ, the *updates* are interpolated, ``ΔW(λ) = (1 − t)·ΔW_a + t·ΔW_b`` (``ΔW`` of the base rate is 0),
computed as two low-rank paths (or merged). Exactly the trained model at trained rates.

Where the adapters live: each chosen ``nn.Linear`` of the base is replaced, in place, by a
:class:`LoRALinear` that holds the *same* weight and bias parameters (their names in the state dict do not
change) and the adapters of every rate as parameters (``...attn.qkv.lora_A.r0``, ``...lora_B.r0``), so that
checkpoints, ``.to()``, ``.double()``, ``torch.func.functional_call`` and :func:`lpm.entropy.cpu_float64`
copies of a transform all see them. Which adapters are active, and with which weights, is plain Python
state set by :meth:`LoRACodec.backbone` before every forward/compress/decompress: a LoRA codec object codes
one rate at a time and is **not thread-safe** (use one object per thread).

Merging: :meth:`LoRACodec.merge` computes ``W + ΔW(λ)`` for one λ into non-persistent buffers
(``merged_weight``; never saved); coding at that λ then uses them instead of the low-rank paths, in the
precision they were computed in. A copy in another precision (the float64 CPU copy of ``h_s`` from which the
entropy tables are derived at both ends) uses the low-rank form, so merged and unmerged codecs derive the
same tables and decode the same streams; the synthesis differs by float32 rounding only. Switching to
training mode, loading a state dict or :meth:`LoRACodec.unmerge` drops the merged weights.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lpm.layers import SwinStage
from lpm.models.base import CONFIG_LIMITS, TICCodec, _int_in, config_from_dict
from lpm.models.variable_rate import RATE_REL_TOL, Rate, VariableRateCodec, count_parameters

__all__ = ["LoRAConfig", "LoRALinear", "LoRACodec", "LORA_TARGETS", "LORA_TRANSFORMS", "matching_rank"]

#: The linear layers of a Swin block an adapter can target: attention ``qkv`` and ``proj``, MLP ``fc1``, ``fc2``.
LORA_TARGETS = ("qkv", "proj", "fc1", "fc2")
#: The transforms of the backbone whose Swin blocks can carry adapters.
LORA_TRANSFORMS = ("g_a", "h_a", "h_s", "g_s")
_LAYER_PATHS = {"qkv": ("attn", "qkv"), "proj": ("attn", "proj"), "fc1": ("mlp", "fc1"), "fc2": ("mlp", "fc2")}


@dataclass
class LoRAConfig:
    """Which linear layers get low-rank rate adapters, and their rank.

    Defaults: rank 7 — at the paper-size (``tic``) config one rate's adapters then hold 301,056 parameters,
    the size of one prompt module (301,792), so the two methods store the same per rate — on all four
    linear layers of every Swin block of all four transforms. Rank 0 gives empty adapters (the base at every
    rate). Every field decides the tensors' names and shapes, so a checkpoint of another config never loads
    silently into this one.
    """

    rank: int = 7
    targets: Sequence[str] = LORA_TARGETS
    transforms: Sequence[str] = LORA_TRANSFORMS

    def __post_init__(self) -> None:
        """Bounds: ``rank`` in 0..``CONFIG_LIMITS["channels"][1]``; ``targets`` and ``transforms`` non-empty
        lists of distinct known names (``ValueError`` otherwise)."""
        _int_in("lora config rank", self.rank, 0, CONFIG_LIMITS["channels"][1])
        for name, known in (("targets", LORA_TARGETS), ("transforms", LORA_TRANSFORMS)):
            value = getattr(self, name)
            if isinstance(value, str) or not isinstance(value, (list, tuple)):
                raise ValueError(f"lora config {name} must be a list of names from {list(known)}, got {value!r:.60}")
            bad = [v for v in value if v not in known]
            if not value or bad or len(set(value)) != len(value):
                raise ValueError(f"lora config {name} must be distinct names from {list(known)}, got {list(value)}")
            setattr(self, name, tuple(v for v in known if v in value))  # canonical order

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "targets": list(self.targets), "transforms": list(self.transforms)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LoRAConfig":
        """A config from :meth:`to_dict` output (e.g. parsed JSON); ``ValueError`` for anything else."""
        return config_from_dict(cls, d, "lora")


class LoRALinear(nn.Module):
    """An ``nn.Linear`` (its own ``weight`` and ``bias`` parameters, shared) plus per-rate low-rank adapters.

    ``forward(x) = F.linear(x, W, b) + Σ_k w_k · B_k (A_k x)`` over the ``(key, w_k)`` pairs of
    :attr:`active` (set by :meth:`LoRACodec.backbone`); with no active adapter it is exactly the linear layer.
    With :attr:`use_merged` and a ``merged_weight`` computed in the weight's current dtype it is
    ``F.linear(x, merged_weight, b)``. Everything is computed in the dtype of the input and the (possibly
    swapped) parameters; nothing is cached besides the explicit merge.
    """

    def __init__(self, linear: nn.Linear, keys: Sequence[str], rank: int) -> None:
        super().__init__()
        if isinstance(linear, LoRALinear) or not isinstance(linear, nn.Linear):
            raise ValueError(f"LoRALinear wraps a plain nn.Linear, got {type(linear).__name__}")
        self.in_features, self.out_features, self.rank = linear.in_features, linear.out_features, int(rank)
        self.weight = linear.weight
        self.register_parameter("bias", linear.bias)
        factory = {"device": linear.weight.device, "dtype": linear.weight.dtype}
        self.lora_A = nn.ParameterDict({k: nn.Parameter(torch.empty(rank, self.in_features, **factory)) for k in keys})
        self.lora_B = nn.ParameterDict({k: nn.Parameter(torch.zeros(self.out_features, rank, **factory)) for k in keys})
        self.reset_adapters()
        self.register_buffer("merged_weight", None, persistent=False)
        self._merged_dtype: Optional[torch.dtype] = None
        #: ``((key, weight), ...)``: the adapters the next forward adds (set by the codec, one rate at a time).
        self.active: tuple[tuple[str, float], ...] = ()
        #: Whether the next forward may use ``merged_weight`` (set by the codec at the merged rate).
        self.use_merged = False

    @torch.no_grad()
    def reset_adapters(self, key: Optional[str] = None) -> None:
        """A fresh adapter (all, or ``key``'s): ``A`` random (std ``1/√in``), ``B = 0``, so ``ΔW = 0``."""
        for k in [key] if key is not None else list(self.lora_A.keys()):
            if self.rank:
                nn.init.normal_(self.lora_A[k], std=self.in_features ** -0.5)
            self.lora_B[k].zero_()

    def delta(self, key: str) -> Tensor:
        """``ΔW = B A`` of one adapter, ``(out, in)``, in the parameters' dtype."""
        return self.lora_B[key] @ self.lora_A[key]

    def forward(self, x: Tensor) -> Tensor:
        merged = self.merged_weight
        if self.use_merged and merged is not None and self.weight.dtype == self._merged_dtype \
                and merged.dtype == self.weight.dtype and merged.device == self.weight.device:
            return F.linear(x, merged, self.bias)
        out = F.linear(x, self.weight, self.bias)
        if not self.rank:
            return out
        for key, w in self.active:
            low = F.linear(F.linear(x, self.lora_A[key]), self.lora_B[key])
            out = out + (low if w == 1.0 else low * w)
        return out

    @torch.no_grad()
    def merge(self, weights: Sequence[tuple[str, float]]) -> None:
        """Store ``W + Σ w_k ΔW_k`` as ``merged_weight`` (non-persistent), in the weight's dtype and device."""
        merged = self.weight.detach().clone()
        for key, w in weights:
            if self.rank:
                merged += w * self.delta(key).to(merged.dtype)
        self.merged_weight = merged
        self._merged_dtype = merged.dtype

    def unmerge(self) -> None:
        self.merged_weight = None
        self._merged_dtype = None
        self.use_merged = False

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, " \
               f"rates={list(self.lora_A.keys())}"


def _swin_blocks(base: TICCodec, transforms: Sequence[str]) -> Iterator[tuple[str, nn.Module]]:
    for tname in transforms:
        transform = getattr(base, tname)
        for idx, layer in enumerate(transform.layers):
            if isinstance(layer, SwinStage):
                for b, block in enumerate(layer.blocks):
                    yield f"{tname}.layers.{idx}.blocks.{b}", block


def matching_rank(base: TICCodec, params: int, config: Optional[LoRAConfig] = None) -> tuple[int, int]:
    """``(rank, parameters per rate)``: the rank whose adapters (for ``config``'s targets and transforms) hold
    the parameter count closest to ``params`` (e.g. one prompt module's), ties to the smaller rank."""
    cfg = config or LoRAConfig()
    per_rank = 0
    for _, block in _swin_blocks(base, cfg.transforms):
        for t in cfg.targets:
            parent, leaf = _LAYER_PATHS[t]
            lin = getattr(getattr(block, parent), leaf)
            per_rank += lin.in_features + lin.out_features
    if per_rank == 0:
        return 0, 0
    lo = params // per_rank
    rank = lo if abs(params - lo * per_rank) <= abs((lo + 1) * per_rank - params) else lo + 1
    return rank, rank * per_rank


class LoRACodec(VariableRateCodec):
    """Frozen base codec + per-rate low-rank adapters on its linear layers. See the module docstring.

    Args:
        base: the pre-trained base codec. It is frozen (``requires_grad=False``) and its chosen linear layers
            are wrapped **in place** by :class:`LoRALinear` (pass ``copy.deepcopy(base)`` to keep it as it is).
        rates: the λ ladder, including ``base_rate``.
        base_rate: the λ the base was trained at (no adapter).
        lora_config: rank and placement of the adapters.

    Methods mirror compressai with an extra ``rate`` argument (see :class:`VariableRateCodec`). One rate at a
    time, not thread-safe (the active adapters are Python state of the wrapped layers).
    """

    kind = "lora"

    def __init__(
        self,
        base: TICCodec,
        rates: Sequence[float],
        base_rate: float,
        lora_config: Optional[LoRAConfig] = None,
    ) -> None:
        super().__init__(rates, base_rate)
        self.lora_config = lora_config or LoRAConfig()
        if any(isinstance(m, LoRALinear) for m in base.modules()):
            raise ValueError("this base already carries low-rank adapters (pass a fresh base or a deep copy)")
        self.base = base
        self.base.requires_grad_(False)
        self.adapter_keys = [self.key(r) for r in self.rates if not self._is_base(r)]
        self._layers: list[tuple[str, LoRALinear]] = []
        for prefix, block in _swin_blocks(base, self.lora_config.transforms):
            for t in self.lora_config.targets:
                parent_name, leaf = _LAYER_PATHS[t]
                parent = getattr(block, parent_name)
                wrapped = LoRALinear(getattr(parent, leaf), self.adapter_keys, self.lora_config.rank)
                setattr(parent, leaf, wrapped)
                self._layers.append((f"{prefix}.{parent_name}.{leaf}", wrapped))
        self.merged_rate: Optional[float] = None

    # ------------------------------------------------------------------ rates
    def _is_base(self, rate: float) -> bool:
        return math.isclose(rate, self.base_rate, rel_tol=RATE_REL_TOL)

    def layers(self) -> list[tuple[str, LoRALinear]]:
        """``(name in the base, layer)`` of every wrapped linear layer."""
        return list(self._layers)

    def adapter_weights(self, rate: Rate) -> tuple[tuple[str, float], ...]:
        """``((key, weight), ...)``: the adapters that make ``rate`` (empty at the base rate; one with weight
        1 at a trained rate; two, or one faded against the base, in between; see the module docstring)."""
        rate = self.scalar_rate(rate)
        if self.trained_index(rate) is not None:
            return () if self._is_base(rate) else ((self.key(rate), 1.0),)
        i = next(i for i, r in enumerate(self.rates) if r > rate)
        a, b = self.rates[i - 1], self.rates[i]
        t = (math.log(rate) - math.log(a)) / (math.log(b) - math.log(a))  # 0 at a, 1 at b
        out = [(self.key(a), 1.0 - t)] if not self._is_base(a) else []
        out += [(self.key(b), t)] if not self._is_base(b) else []
        return tuple(out)

    def backbone(self, rate: Rate) -> TICCodec:
        """The base with the adapters of ``rate`` switched on (merged weights at the merged rate, in eval mode)."""
        weights = self.adapter_weights(rate)
        merged = (self.merged_rate is not None and not self.training
                  and math.isclose(self.scalar_rate(rate), self.merged_rate, rel_tol=RATE_REL_TOL))
        for _, layer in self._layers:
            layer.active = weights
            layer.use_merged = merged
        return self.base

    def prompt_source(self, rate: Rate, batch: int = 1) -> None:
        self.scalar_rate(rate)
        return None

    # ------------------------------------------------------------------ merging
    def merge(self, rate: Rate) -> None:
        """Merge the updates of ``rate`` into weight copies used whenever this codec codes at ``rate`` in eval
        mode (other rates keep working through the low-rank paths). Replaces an earlier merge."""
        rate = self.scalar_rate(rate)
        self.unmerge()
        weights = self.adapter_weights(rate)
        if weights:
            for _, layer in self._layers:
                layer.merge(weights)
        self.merged_rate = rate

    def unmerge(self) -> None:
        """Drop the merged weights (the low-rank paths are used at every rate)."""
        for _, layer in self._layers:
            layer.unmerge()
        self.merged_rate = None

    def train(self, mode: bool = True) -> "LoRACodec":
        if mode:
            self.unmerge()  # merged weights would go stale as soon as the adapters change
        return super().train(mode)

    def load_state_dict(self, state_dict: Any, strict: bool = True, **kw: Any) -> Any:
        self.unmerge()
        return super().load_state_dict(state_dict, strict=strict, **kw)

    # ------------------------------------------------------------------ training helpers
    def adapter_parameters(self, rate: Optional[float] = None) -> list[nn.Parameter]:
        """The ``A`` and ``B`` of every wrapped layer, for one trained non-base ``rate`` or all rates."""
        if rate is not None and self._is_base(float(rate)):
            raise KeyError(f"the base rate {rate} has no adapter")
        keys = self.adapter_keys if rate is None else [self.key(rate)]
        return [p for _, layer in self._layers for k in keys for p in (layer.lora_A[k], layer.lora_B[k])]

    @torch.no_grad()
    def copy_adapter(self, src: float, dst: float) -> None:
        """Initialise the adapter of rate ``dst`` from that of ``src`` (a trained rate; the base rate gives a
        fresh adapter, ``ΔW = 0``)."""
        self.unmerge()
        kd = self.key(dst)
        if self._is_base(float(dst)):
            raise KeyError(f"the base rate {dst} has no adapter")
        for _, layer in self._layers:
            if self._is_base(float(src)):
                layer.reset_adapters(kd)
            else:
                ks = self.key(src)
                layer.lora_A[kd].copy_(layer.lora_A[ks])
                layer.lora_B[kd].copy_(layer.lora_B[ks])

    def base_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """``(name, parameter)`` of the base without the adapters."""
        return [(n, p) for n, p in self.base.named_parameters() if ".lora_A." not in n and ".lora_B." not in n]

    # ------------------------------------------------------------------ accounting
    def parameter_groups(self) -> dict[str, int]:
        """Parameters of the base (adapters excluded) and of each rate's adapters."""
        counts = {"base": sum(p.numel() for _, p in self.base_parameters())}
        for k in self.adapter_keys:
            counts[f"adapter_{k}"] = sum(layer.lora_A[k].numel() + layer.lora_B[k].numel() for _, layer in self._layers)
        return counts

    def num_parameters(self) -> int:
        return count_parameters(self)

    def storage_ratio(self) -> float:
        """Parameters stored for all rates over K separately trained backbones (adapters not counted in one)."""
        counts = self.parameter_counts()
        return counts["total"] / (len(self.rates) * counts["base"])

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_fields(self) -> dict[str, str]:
        return {**super().checkpoint_fields(), "lora_config": json.dumps(self.lora_config.to_dict())}

    @classmethod
    def from_checkpoint(cls, base: TICCodec, fields: dict[str, Any]) -> "LoRACodec":
        """``fields["lora_config"]`` (parsed JSON) if the loader passes it, else the default
        :class:`LoRAConfig` (the tensor check against the file then refuses any other config)."""
        cfg = fields.get("lora_config")
        return cls(base, fields["rates"], fields["base_rate"], LoRAConfig.from_dict(cfg) if cfg is not None else None)
