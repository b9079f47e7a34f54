"""Training: rate–distortion losses, the resumable runner (``lpm train``) and its parts.

One engine, in parts: ``runner`` (the run: stages in order, processes, signals, out_dir), ``config`` (run
configs), ``stages`` (the stage table: kind -> how its stages are built), ``step`` (the one training step),
``progressive`` (progressive prompt learning: order, neighbour initialisation, frozen base), ``sampler``
(crops), ``progress`` (log.csv and the bar), ``ledger`` (budget records), ``state`` (state.pt and its checks),
``losses``. Checkpoint files live in :mod:`lpm.checkpoints` (re-exported here for older imports)."""

from lpm.checkpoints import CHECKPOINT_FORMAT, CheckpointError, file_sha256, load_codec, read_metadata, save_codec
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
