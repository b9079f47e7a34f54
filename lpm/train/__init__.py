"""Training: rate–distortion losses and checkpoints (training loops arrive with the training issue)."""

from .checkpoint import CHECKPOINT_FORMAT, CheckpointError, file_sha256, load_codec, read_metadata, save_codec
from .losses import RateDistortionLoss, bpp_from_likelihoods

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "file_sha256",
    "load_codec",
    "read_metadata",
    "save_codec",
    "RateDistortionLoss",
    "bpp_from_likelihoods",
]
