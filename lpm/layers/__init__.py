"""Reusable layers: prompt-aware window attention, Swin blocks/stages for any H×W, prompt networks."""

from .attention import WindowAttention, capture_attention, relative_position_index
from .prompt import PromptNet, PromptTarget
from .swin import SwinBlock, SwinStage, build_window_mask, window_merge, window_partition

__all__ = [
    "WindowAttention",
    "capture_attention",
    "relative_position_index",
    "PromptNet",
    "PromptTarget",
    "SwinBlock",
    "SwinStage",
    "build_window_mask",
    "window_merge",
    "window_partition",
]
