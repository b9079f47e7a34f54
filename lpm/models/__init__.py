"""Codecs: the TIC-family backbone, the variable-rate interface, and every variable-rate method.

Where things go (a new variable-rate method is a subclass of :class:`VariableRateCodec` in its own module,
registered in :data:`CODEC_KINDS` below)::

    base.py           TICCodec (the backbone) and the PromptSource hook it offers
    variable_rate.py  VariableRateCodec: ladder, check_rate, codec API, update/aux/load, accounting
    prompted.py       PromptedCodec: the paper's Layer-adaptive Prompt Modules on a frozen backbone
    baselines.py      same-backbone baselines: RateConditionedCodec, GainUnitCodec, SeparateModels
    lora.py           LoRACodec: per-rate low-rank adapters on the frozen backbone's linear layers (the
                      successor paper's method, arXiv:2606.16107), mergeable into the weights
"""

from .base import STRIDE, CodecConfig, PromptSource, TICCodec, Transform
from .prompted import (
    DEFAULT_RATES,
    LayerAdaptivePromptModule,
    PromptConfig,
    PromptedCodec,
    RateMix,
    find_rate,
    prompt_settings,
)
from .variable_rate import RATE_REL_TOL, Rate, VariableRateCodec, check_ladder
from .baselines import (
    GainSource,
    GainUnitCodec,
    RateConditionedCodec,
    RateConditionedPrompts,
    SeparateModels,
    separate_models,
)
from .lora import LoRACodec, LoRAConfig, LoRALinear, matching_rank

#: The table of codec kinds stored in checkpoints (``kind`` metadata) → class. ``"tic"`` is a bare backbone.
CODEC_KINDS: dict[str, type] = {
    "tic": TICCodec,
    **{cls.kind: cls for cls in (PromptedCodec, RateConditionedCodec, GainUnitCodec, LoRACodec)},
}

__all__ = [
    "STRIDE",
    "CodecConfig",
    "PromptSource",
    "TICCodec",
    "Transform",
    "DEFAULT_RATES",
    "LayerAdaptivePromptModule",
    "PromptConfig",
    "PromptedCodec",
    "RateMix",
    "find_rate",
    "prompt_settings",
    "GainUnitCodec",
    "RateConditionedCodec",
    "RateConditionedPrompts",
    "SeparateModels",
    "separate_models",
    "GainSource",
    "LoRACodec",
    "LoRAConfig",
    "LoRALinear",
    "matching_rank",
    "VariableRateCodec",
    "Rate",
    "RATE_REL_TOL",
    "check_ladder",
    "CODEC_KINDS",
]
