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
from .maps import attention_layer_names, attention_maps, bit_allocation
from .rd import BPP_DEFINITION, evaluate_codec
from .savings import data_table, dataset_saving, parameter_table, read_ledger, storage_saving

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
    "BPP_DEFINITION",
    "attention_layer_names",
    "attention_maps",
    "bit_allocation",
    "data_table",
    "dataset_saving",
    "evaluate_codec",
    "parameter_table",
    "read_ledger",
    "storage_saving",
]
