"""Reusable layers: prompt-aware window attention, Swin blocks/stages for any H×W, prompt networks."""

from .attention import WindowAttention, capture_attention, relative_position_index
from .prompt import HiddenPromptHead, HiddenPromptNet, PromptMap, PromptNet, PromptTarget
from .swin import SwinBlock, SwinStage, build_window_mask, window_merge, window_partition

__all__ = [
    "WindowAttention",
    "capture_attention",
    "relative_position_index",
    "PromptNet",
    "HiddenPromptNet",
    "HiddenPromptHead",
    "PromptMap",
    "PromptTarget",
    "SwinBlock",
    "SwinStage",
    "build_window_mask",
    "window_merge",
    "window_partition",
]
