"""Codecs: the TIC-family base codec and the prompted variable-rate codec."""

from .base import STRIDE, CodecConfig, PromptSource, TICCodec, Transform
from .prompted import (
    DEFAULT_RATES,
    LayerAdaptivePromptModule,
    PromptConfig,
    PromptedCodec,
    RateMix,
    find_rate,
)
from .baselines import GainUnitCodec, RateConditionedCodec, RateConditionedPrompts, SeparateModels, separate_models

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
    "GainUnitCodec",
    "RateConditionedCodec",
    "RateConditionedPrompts",
    "SeparateModels",
    "separate_models",
]
