"""Evaluation: real-bitstream rate–distortion, metrics, BD-rate, classical codecs, attention and bit maps,
storage and training-data accounting."""

from .anchors import anchor_codecs, load_anchors
from .bd import bd_psnr, bd_rate
from .classical import (
    CLASSICAL_CODECS,
    UNAVAILABLE_CODECS,
    available_classical_codecs,
    evaluate_classical,
    save_results_json,
)
from .metrics import ms_ssim_rgb, psnr

__all__ = [
    "CLASSICAL_CODECS",
    "UNAVAILABLE_CODECS",
    "anchor_codecs",
    "available_classical_codecs",
    "bd_psnr",
    "bd_rate",
    "evaluate_classical",
    "load_anchors",
    "ms_ssim_rgb",
    "psnr",
    "save_results_json",
]
