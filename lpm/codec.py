"""Image ⇄ ``.lpm`` file with a variable-rate codec: the functions behind ``lpm compress/decompress``.

The file (see :mod:`lpm.fileformat`) records which checkpoint made it (first 16 hex digits of the
checkpoint's sha256), the rate, and the original size, channels and bit depth, so decoding with another
checkpoint is refused and the decoded PNG has the input's shape and format (grayscale stays grayscale,
16-bit stays 16-bit; alpha is dropped at encoding with a warning — the codec codes colour only).
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import Tensor

from lpm import fileformat
from lpm.limits import BASE_BYTES, BYTES_PER_PIXEL, default_max_pixels
from lpm.data import ImageInfo, read_image, write_image
from lpm.models import PromptedCodec, find_rate

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ModelMismatchError",
    "LegacyStreamWarning",
    "encode_image",
    "decode_image",
    "compress_file",
    "decompress_file",
    "CodingResult",
    "Progress",
]

#: ``progress(done, total)``: called after each tile of a transform (see :func:`lpm.models.base.tile_grid`;
#: images up to 1024×1024 are one tile, so it is called once with ``(1, 1)``).
Progress = Callable[[int, int], None]

#: Largest image coded by default: derived from the memory available when lpm starts and the measured peak of
#: the paper-size codec with tiled transforms, ~3 GB plus 150 bytes per pixel (see :mod:`lpm.limits`); larger
#: images are refused with a clear message (raise the limit with ``max_pixels`` / ``--max-pixels`` on a
#: bigger machine). It never changes how an image is coded (tiling depends on the image size alone).
DEFAULT_MAX_PIXELS = default_max_pixels()


class LegacyStreamWarning(UserWarning):
    """A ``.lpm`` file of format version 1 was decoded (no table check; see :mod:`lpm.fileformat`)."""


class ModelMismatchError(ValueError):
    """The stream was made by another checkpoint, or asks for a rate the model does not have."""


@dataclass(frozen=True)
class CodingResult:
    path: str
    height: int
    width: int
    rate: float
    num_bytes: int

    @property
    def bpp(self) -> float:
        return 8.0 * self.num_bytes / (self.height * self.width)


def _check_size(h: int, w: int, max_pixels: Optional[int]) -> None:
    if max_pixels is not None and h * w > max_pixels:
        raise ValueError(
            f"image of {h}x{w} (HxW) = {h * w} pixels exceeds the limit of {max_pixels} pixels "
            f"(raise it with --max-pixels if this machine has the memory: about {BASE_BYTES / 1e9:g} GB plus "
            f"{BYTES_PER_PIXEL} bytes per pixel)"
        )


def _progress_kw(progress: Optional[Progress]) -> dict[str, Any]:
    return {} if progress is None else {"progress": progress}


@torch.no_grad()
def encode_image(
    model: PromptedCodec, model_id: str, x: Tensor, info: ImageInfo, rate: float,
    progress: Optional[Progress] = None,
) -> fileformat.CompressedImage:
    """Code one image ``x`` ``(3, H, W)`` in [0, 1] at ``rate`` (a λ in the model's range).

    Images larger than 1024 pixels on a padded side are analysed in tiles (:func:`lpm.models.base.tile_grid`);
    ``progress(done, total)`` is called after each tile."""
    if x.dim() != 3 or x.shape[0] != 3:
        raise ValueError(f"expected an image tensor of shape (3, H, W), got {tuple(x.shape)}")
    if max(info.height, info.width) > fileformat.MAX_SIDE:  # before the encode, not after it (minutes)
        raise ValueError(f"image of {info.height}x{info.width} (HxW): a .lpm file holds images of up to "
                         f"{fileformat.MAX_SIDE} pixels a side; crop or split it")
    device = next(model.parameters()).device
    out = model.compress(x[None].to(device), rate, **_progress_kw(progress))
    header = fileformat.StreamHeader(
        model_id=model_id,
        rate=float(rate),
        height=info.height,
        width=info.width,
        channels=info.channels,
        bit_depth=info.bit_depth,
        latent_shape=tuple(out["shape"]),
        table_check=out["table_checks"][0],
    )
    return fileformat.CompressedImage(header, [s[0] for s in out["strings"]])


@torch.no_grad()
def decode_image(
    model: PromptedCodec, model_id: str, c: fileformat.CompressedImage, progress: Optional[Progress] = None
) -> tuple[Tensor, ImageInfo]:
    """Decode a parsed stream; refuses streams of other checkpoints or rates outside the model's range.

    Large images are synthesised in tiles, decided by the size in the header alone (so every machine decodes
    a file to the same pixels); ``progress(done, total)`` is called after each tile."""
    h = c.header
    if h.model_id != model_id:
        raise ModelMismatchError(
            f"stream was made by checkpoint {h.model_id}, but the loaded checkpoint is {model_id}; "
            "decode with the checkpoint that encoded it"
        )
    lo, hi = model.rate_range
    if not lo * (1 - 1e-9) <= h.rate <= hi * (1 + 1e-9):
        raise ModelMismatchError(f"stream rate {h.rate} is outside this model's range [{lo}, {hi}]")
    if len(c.strings) != 2:
        raise ModelMismatchError(f"stream has {len(c.strings)} strings; this codec writes 2 (y, z)")
    legacy = h.table_check is None
    x_hat = model.decompress([[c.strings[0]], [c.strings[1]]], h.latent_shape, h.rate, size=(h.height, h.width),
                             table_checks=None if legacy else [h.table_check], exact=not legacy,
                             **_progress_kw(progress))
    if legacy:
        warnings.warn(
            "format version 1 stream (lpm 0.1, before 2026-11-25): it carries no table check, so a decoder whose arithmetic differs "
            "from the encoder's cannot notice; decoded with version 1's float32 hyper-synthesis (re-encode to "
            "get a version 2 file)", LegacyStreamWarning, stacklevel=2)
    info = ImageInfo(height=h.height, width=h.width, channels=h.channels, bit_depth=h.bit_depth, had_alpha=False)
    return x_hat["x_hat"][0].cpu(), info


def compress_file(
    model: PromptedCodec,
    model_id: str,
    src: Union[str, os.PathLike],
    dst: Union[str, os.PathLike],
    *,
    rate: Optional[float] = None,
    target_bpp: Optional[float] = None,
    max_pixels: Optional[int] = DEFAULT_MAX_PIXELS,
    force: bool = False,
    progress: Optional[Progress] = None,
    keep: Sequence[Union[str, os.PathLike]] = (),
) -> CodingResult:
    """Read an image, code it at ``rate`` (default: the base rate) or at the rate whose *file* (header
    included) comes closest under ``target_bpp`` (:func:`lpm.models.find_rate`: at most 1 % under it where a
    search of up to 26 encodes gets there; for a checkpoint whose size rises with λ, the largest rate that
    fits), and write the ``.lpm`` file atomically.

    ``progress(done, total)`` is called after each tile of each encoding (a ``target_bpp`` search encodes
    several times; each encoding counts from 1 again).

    The output is checked first (:func:`lpm.fsutil.check_output`): never the input itself nor a file of
    ``keep`` (the CLI names its checkpoint there), and an existing file only with ``force`` (a symbolic link is then replaced, not written through; a
    directory, FIFO or device never). A ``target_bpp`` that no rate fits (lowest, highest, trained) is a
    ``ValueError`` naming the lowest rate's bpp; nothing is written then.
    """
    from lpm.fsutil import check_output

    if rate is not None and target_bpp is not None:
        raise ValueError("give either a rate or a target bpp, not both")
    if target_bpp is not None and not (math.isfinite(target_bpp) and target_bpp > 0):
        raise ValueError(f"target bpp must be a positive number, got {target_bpp}")
    check_output(dst, force=force, inputs=(src, *keep))
    x, info = read_image(src, max_pixels=max_pixels)
    _check_size(info.height, info.width, max_pixels)
    _warn_orientation(src)
    npix = info.height * info.width
    if target_bpp is not None:
        cache: dict[float, fileformat.CompressedImage] = {}

        def measure(r: float) -> float:
            cache[r] = encode_image(model, model_id, x, info, r, progress)
            return 8.0 * len(fileformat.encode(cache[r])) / npix

        rate, bpp = find_rate(measure, target_bpp, model.rate_range, probes=getattr(model, "rates", ()))
        if bpp > target_bpp:
            raise ValueError(_unreachable_target(src, target_bpp, rate, bpp))
        c = cache[rate]
    else:
        rate = model.base_rate if rate is None else float(rate)
        c = encode_image(model, model_id, x, info, rate, progress)
    num_bytes = fileformat.write(dst, c, overwrite=force)
    return CodingResult(str(dst), info.height, info.width, rate, num_bytes)


def decompress_file(
    model: PromptedCodec,
    model_id: str,
    src: Union[str, os.PathLike],
    dst: Union[str, os.PathLike],
    *,
    max_pixels: Optional[int] = DEFAULT_MAX_PIXELS,
    force: bool = False,
    progress: Optional[Progress] = None,
    keep: Sequence[Union[str, os.PathLike]] = (),
) -> CodingResult:
    """Decode an ``.lpm`` file to a PNG (same channels and bit depth as the original); ``progress(done,
    total)`` is called after each tile of the synthesis.

    The output is checked before anything is decoded, as in :func:`compress_file` (never the input,
    an existing file only with ``force``, a ``.png`` name).
    """
    from lpm.fsutil import check_output

    if os.path.splitext(os.fspath(dst))[1].lower() != ".png":
        raise ValueError(f"decompress writes PNG files only; name the output *.png, got {os.fspath(dst)}")
    check_output(dst, force=force, inputs=(src, *keep))
    c = fileformat.read(src, max_pixels=max_pixels)
    try:
        x_hat, info = decode_image(model, model_id, c, progress)
    except fileformat.BitstreamError as e:  # the stream's contents (the container was already checked)
        raise fileformat.BitstreamError(f"{os.fspath(src)}: {e}") from None
    except ModelMismatchError as e:
        raise ModelMismatchError(f"{os.fspath(src)}: {e}") from None
    write_image(dst, x_hat, info, overwrite=force)
    # the bytes that were decoded (a file replaced while it was decoded must not change the reported bpp)
    return CodingResult(str(dst), info.height, info.width, c.header.rate, fileformat.encoded_size(c))


def _warn_orientation(src: Union[str, os.PathLike]) -> None:
    from lpm.data import EXIF_ORIENTATIONS, exif_orientation

    o = exif_orientation(src)
    if o != 1:
        warnings.warn(
            f"{os.fspath(src)}: its EXIF orientation ({o}: {EXIF_ORIENTATIONS[o]}) is not applied and not stored: "
            f"the pixels are coded as stored, so the decoded PNG shows them that way, not as a viewer that "
            f"honours the tag shows the original (apply it first, e.g. PIL.ImageOps.exif_transpose)",
            UserWarning, stacklevel=2)


def _unreachable_target(src: Union[str, os.PathLike], target_bpp: float, rate: float, bpp: float) -> str:
    return (
        f"{os.fspath(src)}: no file fits {target_bpp:g} bpp; the lowest rate λ={rate:.5g} gives {bpp:.4f} bpp "
        f"and neither the highest nor any trained rate fits either; nothing written"
    )
