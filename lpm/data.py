"""Image I/O, image sets on disk, and training crops.

Reading (:func:`read_image`) turns any image file into the one form the codecs take: a float32
tensor of shape ``(3, H, W)`` with values in ``[0, 1]``, plus an :class:`ImageInfo` that remembers
what the file was (grey or colour, 8 or 16 bits, whether it had alpha), so that
:func:`write_image` can give back a file of the same kind::

    file --read_image--> (x: (3,H,W) float32 in [0,1], info) --codec--> x_hat --write_image(info)--> PNG

Policies, in one place:

- grey images are replicated to three channels; ``info.channels == 1`` remembers it;
- alpha is dropped, the codec codes colour only (a :class:`UserWarning` names the file);
- 16-bit images keep full precision (``value / 65535``), 8-bit ones are ``value / 255``;
- PNG and TIFF are decoded with imagecodecs, which reads 16-bit RGB that PIL cannot (PIL cuts it
  to 8 bits); every other format goes through PIL; EXIF orientation is not applied (pixels as
  stored, as in the usual evaluation code; :func:`exif_orientation` reads the tag, and
  :func:`lpm.codec.compress_file` warns when it would turn the picture);
- one image per file: an animated GIF/WebP/PNG or a multi-page TIFF is refused (:class:`ImageReadError`)
  rather than silently coded from its first frame (a JPEG's MPO preview pages are ignored);
- written files are always PNG, written atomically (:func:`lpm.fsutil.atomic_write`).

Data sets (:data:`KNOWN_SETS`) are never part of the repository: ``data/`` holds their sha256
manifests and ``data/download.py``; :func:`locate_dataset` finds a local copy and
:func:`verify_manifest` checks it. :class:`ImageFolderDataset` gives random training crops.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import re
import struct
import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, get_worker_info
from PIL import Image, UnidentifiedImageError

from lpm.fsutil import atomic_write, broken_link
from lpm.fsutil import one_line as _one_line
from lpm.paths import PROJECT_ROOT as _PROJECT_ROOT


def _imagecodecs():
    """imagecodecs, imported on first use: the training path (JPEG crops through PIL) runs without it, e.g. on
    a GPU machine that has no wheel for it."""
    import imagecodecs

    return imagecodecs

__all__ = [
    "DATA_DIR",
    "IMAGE_EXTENSIONS",
    "KNOWN_SETS",
    "MANIFEST_DIR",
    "PROJECT_ROOT",
    "ImageFolderDataset",
    "ImageInfo",
    "ImageReadError",
    "ImageTooLargeError",
    "KnownSet",
    "exif_orientation",
    "find_images",
    "locate_dataset",
    "manifest_checksum",
    "manifest_path",
    "read_image",
    "read_manifest",
    "sha256_file",
    "images_sha256",
    "to_uint8",
    "verify_manifest",
    "write_image",
]

#: Root of the checkout: the parent of the ``lpm`` package directory.
PROJECT_ROOT: Path = _PROJECT_ROOT
#: Where the sha256 manifests and ``download.py`` live: the project's ``data/`` directory.
MANIFEST_DIR: Path = PROJECT_ROOT / "data"
#: Default parent of local data set copies (``<DATA_DIR>/<name>``, git-ignored); same ``data/``.
DATA_DIR: Path = PROJECT_ROOT / "data"
#: Environment variable naming a directory that holds data sets as ``<dir>/<name>``.
DATA_DIR_ENV = "LPM_DATA_DIR"

#: Suffixes (lower case) that :func:`find_images` treats as images.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
)

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # TIFF and BigTIFF
# ITU-R BT.601 luma weights, used when a colour tensor is written as a grey image.
_BT601 = (0.299, 0.587, 0.114)


class ImageReadError(ValueError):
    """A file exists but is not an image this package can read."""


class ImageTooLargeError(ValueError):
    """An image has more pixels than the caller allowed (``max_pixels``)."""


@dataclass(frozen=True)
class ImageInfo:
    """What an image file was, before :func:`read_image` turned it into ``(3, H, W)`` floats.

    ``channels`` counts colour channels of the original file after alpha is dropped (1 or 3);
    ``bit_depth`` is 8 or 16; ``had_alpha`` says an alpha channel was dropped.
    """

    height: int
    width: int
    channels: int
    bit_depth: int
    had_alpha: bool


# ----------------------------------------------------------------------------------------------
# reading


def read_image(
    path: str | os.PathLike[str], *, max_pixels: int | None = None
) -> tuple[torch.Tensor, ImageInfo]:
    """Read an image file as a float32 tensor ``(3, H, W)`` in ``[0, 1]`` and its :class:`ImageInfo`.

    Grey images are replicated to three channels. Policy for transparency: alpha is dropped, the
    codec codes colour only; a :class:`UserWarning` naming the file says so. 16-bit images are
    converted at full precision (``value / 65535``). PNG and TIFF files (recognised by their
    signature, not their name) are decoded with imagecodecs, anything else with PIL (JPEG, BMP,
    WebP, GIF, PNM, ...); palettes are expanded to RGB. Files holding several images (animated GIF,
    WebP or PNG, multi-page TIFF) are refused: the codec codes one image, and coding the first frame
    silently would lose the others.

    Args:
        path: the image file.
        max_pixels: refuse images with more than this many pixels (``H * W``), checked from the
            file header before decoding where the format allows. ``None``: no limit.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ImageReadError: the path is a directory or not a regular file, the file is not a readable
            image, has zero width or height, or holds several frames or pages.
        ImageTooLargeError: the image has more than ``max_pixels`` pixels.
    """
    path = Path(path)
    if not path.exists():
        if os.fspath(path) == "-":  # the convention for standard input, which lpm does not read
            raise FileNotFoundError("image file not found: '-' (lpm does not read standard input; name a file)")
        link = broken_link(path)  # say what is wrong with the link rather than "not found"
        raise FileNotFoundError(f"image file not found: {path}" + (f" is {link}" if link else ""))
    if path.is_dir():
        raise ImageReadError(f"{path}: is a directory, not an image file")
    if not path.is_file():
        raise ImageReadError(f"{path}: not a regular file")
    if max_pixels is not None and max_pixels < 1:
        raise ValueError(f"max_pixels must be a positive integer or None, got {max_pixels!r}")
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(_PNG_SIGNATURE):
        array = _decode_png(path, max_pixels)
    elif head[:4] in _TIFF_SIGNATURES:
        array = _decode_tiff(path, max_pixels)
    elif head[:2] in (b"P3", b"P6") and (array := _decode_deep_ppm(path, max_pixels)) is not None:
        pass  # a 16-bit colour PPM, which PIL would cut to 8 bits
    else:
        array = _decode_with_pil(path, max_pixels)
    return _array_to_tensor(path, array)


#: A PPM header: magic, width, height, maxval, separated by whitespace and ``#`` comments, then one whitespace.
_PPM_SEP = rb"(?:\s|#[^\n]*\n)+"
_PPM_HEADER = re.compile(rb"P[36]" + _PPM_SEP + rb"(\d{1,10})" + _PPM_SEP + rb"(\d{1,10})" + _PPM_SEP
                         + rb"(\d{1,10})\s")
#: Most samples of a plain-text (P3) 16-bit PPM read (4 M: a 1.3-megapixel image; binary P6 has no limit here).
_MAX_PLAIN_PPM_SAMPLES = 4 * 2**20


def _decode_deep_ppm(path: Path, max_pixels: int | None) -> np.ndarray | None:
    """A colour PPM (``P6`` binary or ``P3`` plain) with more than 8 bits (``maxval`` 256..65535) as uint16
    ``(H, W, 3)`` scaled to 0..65535 — PIL reads these at 8 bits, silently; ``None`` for an 8-bit one (PIL
    reads those exactly). Size checked from the header before the samples are read."""
    with open(path, "rb") as f:
        data = f.read(1024)  # the header: magic, width, height, maxval (comments allowed)
        m = _PPM_HEADER.match(data)
        if m is None:
            raise ImageReadError(f"{path}: not a readable PPM (malformed header)")
        width, height, maxval = (int(g) for g in m.groups())
        pos = m.end()  # just past the one whitespace character that ends the header
        if not 1 <= maxval <= 65535:
            raise ImageReadError(f"{path}: not a readable PPM (maxval {maxval} outside 1..65535)")
        if maxval < 256:
            return None
        _check_size(path, height, width, max_pixels)
        n = height * width * 3
        if data[:2] == b"P6":
            f.seek(pos)
            raw = f.read(2 * n)
            if len(raw) < 2 * n:
                raise ImageReadError(f"{path}: truncated PPM ({len(raw)} of {2 * n} bytes of samples)")
            values = np.frombuffer(raw, dtype=">u2").astype(np.uint32)
        else:  # plain: decimal samples separated by any whitespace
            if n > _MAX_PLAIN_PPM_SAMPLES:  # one Python int per sample while parsing: bounded
                raise ImageReadError(f"{path}: a plain (P3) 16-bit PPM of {height}x{width} (HxW) is too large to "
                                     f"parse here (at most {_MAX_PLAIN_PPM_SAMPLES // 3} pixels); convert it to "
                                     "binary P6 or PNG")
            f.seek(pos)
            text = f.read().split()
            if len(text) < n:
                raise ImageReadError(f"{path}: truncated PPM ({len(text)} of {n} samples)")
            try:
                values = np.array([int(t) for t in text[:n]], dtype=np.uint32)
            except ValueError:
                raise ImageReadError(f"{path}: not a readable PPM (a sample is not a number)") from None
    if values.size and int(values.max()) > maxval:
        raise ImageReadError(f"{path}: not a readable PPM (a sample exceeds maxval {maxval})")
    if maxval != 65535:
        values = (values * 65535 + maxval // 2) // maxval
    return values.astype(np.uint16).reshape(height, width, 3)


#: What each EXIF orientation (tag 0x0112, values 2..8) asks a viewer to do with the stored pixels.
EXIF_ORIENTATIONS = {2: "mirror it", 3: "turn it 180°", 4: "flip it upside down", 5: "mirror it and turn it 90°",
                     6: "turn it 90° clockwise", 7: "mirror it and turn it 90° clockwise",
                     8: "turn it 90° counter-clockwise"}


def exif_orientation(path: str | os.PathLike[str]) -> int:
    """The EXIF orientation of an image file (1: as stored; also when the file has none or PIL cannot read it)."""
    try:
        with Image.open(path) as im:
            value = im.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 -- no readable tag means nothing to warn about; reading the image says why
        return 1
    return value if isinstance(value, int) and value in EXIF_ORIENTATIONS else 1


def _decode_png(path: Path, max_pixels: int | None) -> np.ndarray:
    with open(path, "rb") as f:
        # IHDR is always the first chunk: length(4) "IHDR"(4) width(4) height(4) ...; the size is checked from it
        # before the rest of the file is read (a large file declaring a huge image was read whole, then refused)
        data = f.read(24)
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise ImageReadError(f"{path}: not a readable PNG (missing IHDR header)")
        width, height = struct.unpack(">II", data[16:24])
        _check_size(path, height, width, max_pixels)
        data += f.read()
    _check_single_png(path, data)
    try:
        codecs = _imagecodecs()
    except ImportError:  # e.g. a GPU machine without the wheel: PIL reads every PNG but 16-bit colour exactly
        depth, colour = data[24], data[25]
        if depth == 16 and colour != 0:  # plain 16-bit grey is the only 16-bit PNG PIL keeps at 16 bits
            raise ImageReadError(f"{path}: a 16-bit colour or alpha PNG needs imagecodecs to be read at full precision "
                                 "(pip install imagecodecs)") from None
        return _decode_with_pil(path, max_pixels)
    try:
        return codecs.png_decode(data)
    except Exception as exc:  # imagecodecs raises PngError (RuntimeError) or ValueError
        raise ImageReadError(f"{path}: cannot decode PNG ({_one_line(exc)})") from exc


def _check_single_png(path: Path, data: bytes) -> None:
    """Refuse an animated PNG: an ``acTL`` chunk (before the image data) declaring several frames."""
    pos = 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if kind in (b"IDAT", b"IEND"):
            return
        if kind == b"acTL" and length >= 8 and pos + 12 <= len(data):
            frames = struct.unpack(">I", data[pos + 8 : pos + 12])[0]
            if frames > 1:
                raise ImageReadError(_several_frames(path, frames, "animated PNG"))
        pos += 12 + length


def _several_frames(path: Path, n: int, what: str) -> str:
    return (
        f"{path}: {what} with {n} frames/pages; lpm codes single images "
        "(extract one frame first, e.g. as PNG)"
    )


def _check_single_frame(path: Path, im: Image.Image) -> None:
    n = getattr(im, "n_frames", 1)
    if n > 1 and im.format != "MPO":  # MPO: a JPEG whose extra pages are previews/depth; keep the photo
        what = {"GIF": "animated GIF", "WEBP": "animated WebP", "PNG": "animated PNG", "TIFF": "multi-page TIFF"}
        raise ImageReadError(_several_frames(path, n, what.get(im.format or "", f"{im.format} file")))


def _decode_tiff(path: Path, max_pixels: int | None) -> np.ndarray:
    """TIFF: size, pages and colour model from the file's own first directory, checked before any pixel is
    decoded; then imagecodecs (PIL would cut 16-bit RGB to 8 bits) for grey and RGB samples, PIL for the
    colour models whose samples are not what a viewer shows (palette, CMYK, YCbCr, Lab, ...)."""
    layout = _tiff_layout(path)
    _check_size(path, layout.height, layout.width, max_pixels)
    bomb = _pil_limit(max_pixels)  # the limit PIL opens it with
    if bomb and layout.height * layout.width > 2 * bomb:  # where PIL itself refuses to open one
        raise ImageTooLargeError(f"{path}: {layout.height}x{layout.width} (HxW) TIFF has {layout.height * layout.width} "
                                 f"pixels, more than twice PIL's decompression-bomb limit of {bomb}")
    if layout.pages > 1:
        raise ImageReadError(_several_frames(path, layout.pages, "multi-page TIFF"))
    if layout.sample_format in (2, 3):  # PIL would read signed samples as unsigned ones
        kind = "int" if layout.sample_format == 2 else "float"
        raise ImageReadError(f"{path}: TIFF with {kind}{layout.bits} samples is not supported (unsigned 8 or 16 bits "
                             "only)")
    if not 1 <= layout.samples <= 4:
        raise ImageReadError(f"{path}: TIFF with {layout.samples} samples per pixel is not supported (1 to 4: grey, "
                             "grey + alpha, colour, colour + alpha)")
    array = None
    if layout.photometric in (0, 1, 2) and layout.bits in (8, 16):  # MinIsWhite, MinIsBlack, RGB: the samples are the picture
        try:
            array = _imagecodecs().tiff_decode(path.read_bytes(), index=0)
        except MemoryError:
            raise
        except Exception:  # noqa: BLE001 -- no imagecodecs, or a layout it cannot read: PIL's turn
            array = None
    planar_shape = (layout.samples, layout.height, layout.width)
    if array is not None and layout.planar == 2 and layout.samples > 1 and array.shape == planar_shape:
        array = np.ascontiguousarray(np.moveaxis(array, 0, -1))  # planar (one plane per sample) -> interleaved
    if array is not None and array.dtype.kind in "if":  # PIL would read signed samples as unsigned ones
        raise ImageReadError(f"{path}: TIFF with {array.dtype} samples is not supported (unsigned 8 or 16 bits only)")
    ok = (
        array is not None
        and array.dtype in (np.uint8, np.uint16)
        and array.shape[:2] == (layout.height, layout.width)
        and (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 2, 3, 4)))
    )
    if not ok:
        try:
            out = _decode_with_pil(path, max_pixels)
        except ImageReadError as exc:
            if layout.photometric in (0, 1, 2) and layout.bits in (8, 16):
                raise
            name = _TIFF_PHOTOMETRIC.get(layout.photometric, f"photometric interpretation {layout.photometric}")
            raise ImageReadError(f"{path}: {layout.bits}-bit {name} TIFF cannot be read here (lpm reads grey and RGB "
                                 "TIFFs of 8 or 16 bits itself and leaves the rest to PIL, which cannot read this one); "
                                 "convert it to an 8- or 16-bit RGB or grey PNG or TIFF") from exc
        if out.shape[:2] != (layout.height, layout.width):
            raise ImageReadError(f"{path}: TIFF decoded as {out.shape[0]}x{out.shape[1]} (HxW) where its header says "
                                 f"{layout.height}x{layout.width}")
        if out.dtype == np.uint8 and layout.bits > 8:  # e.g. 16-bit CMYK: PIL reads it at 8 bits
            warnings.warn(f"{path}: {layout.bits}-bit TIFF read at 8 bits (only PIL reads this layout; it keeps 8 "
                          f"bits per sample)", UserWarning, stacklevel=4)
        return out
    if layout.photometric == 0:  # MinIsWhite: 0 is white; store as MinIsBlack
        array = np.iinfo(array.dtype).max - array
    return array


#: TIFF PhotometricInterpretation values (tag 262) that get a name in messages.
_TIFF_PHOTOMETRIC = {0: "MinIsWhite", 1: "grey", 2: "RGB", 3: "palette", 4: "transparency-mask", 5: "CMYK",
                     6: "YCbCr", 8: "CIELab", 9: "ICCLab", 10: "ITULab", 32844: "LogL", 32845: "LogLuv"}


_MAX_TIFF_PAGES = 10_000


@dataclass(frozen=True)
class _TiffLayout:
    width: int
    height: int
    pages: int  # directories in the main chain (counted up to _MAX_TIFF_PAGES)
    photometric: int  # tag 262; -1 when absent
    bits: int  # largest BitsPerSample
    samples: int  # SamplesPerPixel
    planar: int  # PlanarConfiguration: 1 interleaved, 2 one plane per sample
    sample_format: int  # SampleFormat: 1 unsigned, 2 signed, 3 floating point


def _tiff_layout(path: Path) -> _TiffLayout:
    """Read a TIFF's (or BigTIFF's) first image directory without decoding pixels.

    Raises :class:`ImageReadError` for a file whose directory cannot be read or lacks its size: such a file
    is refused rather than decoded blind (its pixels could be any size).
    """
    def bad(why: str) -> ImageReadError:
        return ImageReadError(f"{path}: not a readable TIFF ({why})")

    size = path.stat().st_size
    with open(path, "rb") as f:
        def read(offset: int, n: int) -> bytes:
            if offset < 0 or offset + n > size:
                raise bad(f"directory data at byte {offset} lies outside the {size}-byte file")
            f.seek(offset)
            return f.read(n)

        head = read(0, 16 if size >= 16 else 8)
        end = "<" if head[:2] == b"II" else ">"
        big = struct.unpack(end + "H", head[2:4])[0] == 43
        if big:
            if len(head) < 16 or struct.unpack(end + "HH", head[4:8]) != (8, 0):
                raise bad("BigTIFF header")
            first = struct.unpack(end + "Q", head[8:16])[0]
        else:
            first = struct.unpack(end + "I", head[4:8])[0]
        count_fmt, entry_size, value_size, next_fmt = ("Q", 20, 8, "Q") if big else ("H", 12, 4, "I")
        count_size = struct.calcsize(count_fmt)
        n = struct.unpack(end + count_fmt, read(first, count_size))[0]
        if not 0 < n <= 4096:
            raise bad(f"first directory has {n} entries")
        entries = read(first + count_size, n * entry_size)
        tags: dict[int, list[int]] = {}
        widths = {1: "B", 3: "H", 4: "I", 16: "Q"}  # BYTE, SHORT, LONG, LONG8
        for i in range(n):
            e = entries[i * entry_size : (i + 1) * entry_size]
            tag, kind = struct.unpack(end + "HH", e[:4])
            if tag not in (256, 257, 258, 262, 277, 284, 339) or kind not in widths:
                continue
            count = struct.unpack(end + ("Q" if big else "I"), e[4 : 4 + (8 if big else 4)])[0]
            if not 0 < count <= 64:
                raise bad(f"tag {tag} has {count} values")
            fmt = end + widths[kind] * count
            raw = e[entry_size - value_size :]
            need = struct.calcsize(fmt)
            if need > value_size:
                raw = read(struct.unpack(end + ("Q" if big else "I"), raw)[0], need)
            tags[tag] = list(struct.unpack(fmt, raw[:need]))
        if 256 not in tags or 257 not in tags:
            raise bad("its first directory gives no ImageWidth/ImageLength")
        # pages: the directories of the main chain (as PIL and viewers count them), a loop or a bad link ends it
        pages, seen, at, entries_of = 1, {first}, first, n
        while pages < _MAX_TIFF_PAGES:
            nxt = struct.unpack(end + next_fmt, read(at + count_size + entries_of * entry_size,
                                                     struct.calcsize(next_fmt)))[0]
            if nxt == 0 or nxt in seen or nxt + count_size > size:
                break
            entries_of = struct.unpack(end + count_fmt, read(nxt, count_size))[0]
            if not 0 < entries_of <= 4096 or nxt + count_size + entries_of * entry_size + struct.calcsize(next_fmt) > size:
                break
            pages, at = pages + 1, nxt
            seen.add(nxt)
    return _TiffLayout(width=tags[256][0], height=tags[257][0], pages=pages,
                       photometric=tags.get(262, [-1])[0], bits=max(tags.get(258, [1])),
                       samples=tags.get(277, [1])[0], planar=tags.get(284, [1])[0],
                       sample_format=max(tags.get(339, [1])))


_PIL_LIMIT_LOCK = threading.Lock()


def _pil_limit(max_pixels: int | None) -> int | None:
    """PIL's decompression-bomb limit while lpm opens an image (:func:`_pil_pixel_limit`): raised to ours."""
    bomb = Image.MAX_IMAGE_PIXELS
    return bomb if max_pixels is None or bomb is None else max(bomb, max_pixels)


@contextmanager
def _pil_pixel_limit(max_pixels: int | None) -> Iterator[None]:
    """PIL's decompression-bomb limit raised to ``max_pixels`` while an image is opened, and its warning
    silenced: PIL refuses images of more than twice ``Image.MAX_IMAGE_PIXELS`` (179 M pixels by default)
    whatever ``--max-pixels`` allows, and warns above it; our own limit, checked from the header right after
    opening and before any pixel is decoded, is the one that bounds memory here, with its own message.
    ``None`` (no limit asked for) leaves PIL's limit and warning as they are."""
    bomb = Image.MAX_IMAGE_PIXELS
    if max_pixels is None or bomb is None:
        yield
        return
    with _PIL_LIMIT_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        Image.MAX_IMAGE_PIXELS = _pil_limit(max_pixels)
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = bomb


def _decode_with_pil(path: Path, max_pixels: int | None) -> np.ndarray:
    try:
        with _pil_pixel_limit(max_pixels), Image.open(path) as im:
            width, height = im.size  # from the header; pixels are not decoded yet
            _check_size(path, height, width, max_pixels)
            _check_single_frame(path, im)
            return _pil_to_array(path, im)
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"{path}: {_one_line(exc)}") from exc
    except UnidentifiedImageError as exc:
        raise ImageReadError(f"{path}: not an image file PIL can identify") from exc
    except (ImageReadError, ImageTooLargeError, PermissionError):
        raise
    except (OSError, SyntaxError, ValueError, struct.error, EOFError) as exc:
        raise ImageReadError(f"{path}: cannot decode image ({_one_line(exc)})") from exc


def _pil_to_array(path: Path, im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return np.asarray(im).astype(np.uint16)
    if mode == "I":  # 32-bit integer pixels: accept only values that fit 16 bits
        arr = np.asarray(im)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise ImageReadError(f"{path}: 32-bit integer pixels outside 0..65535 are not supported")
        return arr.astype(np.uint16)
    if mode == "F":
        raise ImageReadError(f"{path}: floating-point images are not supported")
    if mode in ("L", "LA", "RGB", "RGBA"):
        return np.asarray(im)
    if mode == "1":
        return np.asarray(im.convert("L"))
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in im.info
        return np.asarray(im.convert("RGBA" if has_alpha else "RGB"))
    if mode in ("La", "RGBa"):
        return np.asarray(im.convert("LA" if mode == "La" else "RGBA"))
    return np.asarray(im.convert("RGB"))  # CMYK, YCbCr, LAB, HSV, RGBX, ...


def _check_size(path: Path, height: int, width: int, max_pixels: int | None) -> None:
    if height <= 0 or width <= 0:
        raise ImageReadError(f"{path}: image has zero size ({height}x{width}, HxW)")
    if max_pixels is not None and height * width > max_pixels:
        raise ImageTooLargeError(
            f"{path}: {height}x{width} (HxW) image has {height * width} pixels, "
            f"more than the allowed max_pixels={max_pixels}"
        )


def _array_to_tensor(path: Path, array: np.ndarray) -> tuple[torch.Tensor, ImageInfo]:
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
        raise ImageReadError(f"{path}: unsupported pixel layout {tuple(array.shape)}")
    height, width, n = array.shape
    if height == 0 or width == 0:
        raise ImageReadError(f"{path}: image has zero size ({height}x{width}, HxW)")
    if array.dtype == np.uint8:
        bit_depth, scale = 8, 255.0
    elif array.dtype == np.uint16:
        bit_depth, scale = 16, 65535.0
    else:
        raise ImageReadError(f"{path}: unsupported sample type {array.dtype}")
    had_alpha = n in (2, 4)
    if had_alpha:
        warnings.warn(
            f"{path}: alpha channel dropped (the codec codes colour only)", UserWarning, stacklevel=3
        )
        array = array[:, :, : n - 1]
    channels = array.shape[2]
    # float64 for the division so 16-bit values land on the nearest float32 to v/65535
    x = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)).astype(np.float64) / scale)
    x = x.to(torch.float32)
    if channels == 1:
        x = x.expand(3, height, width).contiguous()
    info = ImageInfo(height, width, channels, bit_depth, had_alpha)
    return x, info


# ----------------------------------------------------------------------------------------------
# writing


def _check_chw(x: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 3 or x.shape[0] not in (1, 3):
        raise ValueError(f"expected an image tensor of shape (3, H, W) or (1, H, W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"expected a floating-point tensor in [0, 1], got dtype {x.dtype}")
    x = x.detach().cpu().to(torch.float64)
    if not torch.isfinite(x).all():
        raise ValueError("image tensor contains NaN or infinite values")
    return x


def _quantise(x: torch.Tensor, bit_depth: int) -> np.ndarray:
    """Float64 ``(C, H, W)`` -> ``(H, W, C)`` integers of ``bit_depth`` bits (clamp, scale, round)."""
    peak = 255.0 if bit_depth == 8 else 65535.0
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    q = x.clamp(0.0, 1.0)  # a new tensor: the in-place steps below touch no caller's data
    q.mul_(peak).round_()  # in place: one float64 copy of the image at a time, not three (24-MP photos)
    return np.ascontiguousarray(q.numpy().transpose(1, 2, 0).astype(dtype))


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Float tensor ``(C, H, W)`` in ``[0, 1]`` -> uint8 numpy ``(H, W, C)``: ``round(clamp(x) * 255)``."""
    return _quantise(_check_chw(x), 8)


def as_written(x: torch.Tensor, info: ImageInfo | None = None) -> torch.Tensor:
    """The image :func:`write_image` writes for ``x`` and ``info``, before clamping and rounding: ``(1, H, W)``
    BT.601 luma of a colour ``x`` where ``info.channels == 1`` (what ``lpm decompress`` gives back for a grey
    source), ``(3, H, W)`` where it is 3, ``x`` itself without ``info``. The evaluation measures this, not the
    codec's raw three channels (for a grey image they differ: 26.51 against 27.20 dB on a grey Kodak image)."""
    x = _check_chw(x)
    channels = x.shape[0] if info is None else info.channels
    if channels == 1 and x.shape[0] == 3:
        r, g, b = _BT601
        return (r * x[0] + g * x[1] + b * x[2]).unsqueeze(0)
    if channels == 3 and x.shape[0] == 1:
        return x.expand(3, -1, -1)
    return x


def write_image(
    path: str | os.PathLike[str], x: torch.Tensor, info: ImageInfo | None = None, *, overwrite: bool = True
) -> None:
    """Write ``x`` (``(3, H, W)`` or ``(1, H, W)`` float in ``[0, 1]``) as a PNG file.

    Values are clamped to ``[0, 1]`` and rounded. ``info`` (from :func:`read_image`) chooses the
    file's kind: ``channels == 1`` writes a grey image, taking the ITU-R BT.601 luma
    ``0.299 R + 0.587 G + 0.114 B`` of a colour tensor (for a grey image replicated by
    :func:`read_image` this is the original value); ``bit_depth == 16`` writes 16-bit samples.
    Without ``info``: 8 bits, and as many channels as ``x`` has. The file appears atomically
    (:func:`lpm.fsutil.atomic_write`: a temporary file in the same directory, then :func:`os.replace`;
    nothing is left behind on failure). ``overwrite=False`` refuses an existing file
    (``FileExistsError``); a directory, FIFO or device is never replaced, a symbolic link is replaced
    itself (not written through).

    Raises:
        ValueError: wrong shape, non-finite values, or a file name not ending in ``.png``.
        OSError: the file cannot be written (the error names ``path``).
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"write_image writes PNG files only; name the output *.png, got {path}")
    x = _check_chw(x)
    channels = x.shape[0] if info is None else info.channels
    bit_depth = 8 if info is None else info.bit_depth
    if channels not in (1, 3):
        raise ValueError(f"info.channels must be 1 or 3, got {channels}")
    if bit_depth not in (8, 16):
        raise ValueError(f"info.bit_depth must be 8 or 16, got {bit_depth}")
    array = _quantise(as_written(x, info), bit_depth)
    if channels == 1:
        array = array[:, :, 0]
    atomic_write(path, _encode_png(path, array), overwrite=overwrite)


def _encode_png(path: Path, array: np.ndarray) -> bytes:
    """PNG bytes through imagecodecs, or through PIL where imagecodecs is missing (8-bit images and 16-bit
    grey; 16-bit colour needs imagecodecs and says so)."""
    try:
        codecs = _imagecodecs()
    except ImportError:
        if array.dtype == np.uint16 and array.ndim == 3:
            raise ValueError(f"{path}: writing a 16-bit colour PNG needs imagecodecs (pip install imagecodecs)") from None
        buf = io.BytesIO()
        Image.fromarray(array.astype("<u2") if array.dtype == np.uint16 else array).save(buf, format="PNG")
        return buf.getvalue()
    return codecs.png_encode(array)


# ----------------------------------------------------------------------------------------------
# image folders and data sets


def find_images(directory: str | os.PathLike[str], *, recursive: bool = False) -> list[Path]:
    """Image files in ``directory`` (suffix in :data:`IMAGE_EXTENSIONS`, any case), sorted.

    Hidden files (names starting with ``.``) are skipped. ``recursive=True`` also searches
    subdirectories.

    Raises:
        FileNotFoundError: ``directory`` does not exist.
        NotADirectoryError: ``directory`` is not a directory.
        ValueError: no image files were found.
    """
    directory = Path(directory)
    if not directory.exists():
        raise FileNotFoundError(f"image directory not found: {directory}")
    if not directory.is_dir():
        raise NotADirectoryError(f"not a directory: {directory}")
    candidates = directory.rglob("*") if recursive else directory.iterdir()
    images = sorted(
        p
        for p in candidates
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
    )
    if not images:
        where = "in or below" if recursive else "in"
        raise ValueError(
            f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) {where} {directory}"
        )
    return images


@dataclass(frozen=True)
class KnownSet:
    """A data set the project knows by name: its manifest in ``data/`` and what it holds."""

    name: str
    manifest: str
    num_images: int
    description: str

    @property
    def manifest_path(self) -> Path:
        return MANIFEST_DIR / self.manifest


KNOWN_SETS: dict[str, KnownSet] = {
    "kodak": KnownSet(
        "kodak",
        "kodak.sha256",
        24,
        "Kodak Lossless True Color Image Suite, kodim01..24.png, 768x512 RGB (evaluation)",
    ),
    "bsds500": KnownSet(
        "bsds500",
        "bsds500.sha256",
        500,
        "Berkeley Segmentation Dataset 500, {train,val,test}/*.jpg, 481x321 RGB (training)",
    ),
}


def _known(name: str) -> KnownSet:
    try:
        return KNOWN_SETS[name]
    except KeyError:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(sorted(KNOWN_SETS))}") from None


def manifest_path(name: str) -> Path:
    """Path of the sha256 manifest of the known data set ``name`` (in the project's ``data/``)."""
    return _known(name).manifest_path


def locate_dataset(
    name: str, data_dir: str | os.PathLike[str] | None = None, *, verify: bool = False
) -> Path:
    """Directory holding a local copy of the known data set ``name``.

    Looked for in ``data_dir/name`` if ``data_dir`` is given (a relative ``data_dir`` is taken as the
    caller gives it, i.e. against the current directory: command-line arguments), else in
    ``$LPM_DATA_DIR/name`` if that variable is set (relative: against the project root, see
    :func:`named_data_dir`), else in ``<project root>/data/name``. With ``verify=True`` every file is
    checked against the set's manifest.

    Raises:
        ValueError: ``name`` is not in :data:`KNOWN_SETS`, or ``verify`` found problems.
        FileNotFoundError: the directory does not exist; the message says how to get the data.
    """
    known = _known(name)
    if data_dir is not None:
        root, source = Path(data_dir), "data_dir argument"
    elif os.environ.get(DATA_DIR_ENV):
        root, source = named_data_dir(None)
    else:
        root, source = DATA_DIR, "project default"
    directory = root / name
    if not directory.is_dir():
        raise FileNotFoundError(
            f"data set {name!r} not found at {directory} ({source}). Get it with "
            f"`python {MANIFEST_DIR / 'download.py'} {name} --dest DIR` (see data/README.md), "
            f"then pass data_dir=DIR or set {DATA_DIR_ENV}=DIR"
        )
    if verify:
        problems = verify_manifest(directory, known.manifest_path)
        if problems:
            shown = "; ".join(problems[:5]) + (f"; ... ({len(problems)} in all)" if len(problems) > 5 else "")
            raise ValueError(f"data set {name!r} at {directory} does not match its manifest: {shown}")
    return directory


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def images_sha256(paths: Sequence[str | os.PathLike[str]], digests: dict[str, str] | None = None) -> str:
    """One sha256 for a list of images: over each file's name and content sha256, in the order given (the id
    under which results of exactly these images are cached). ``digests``: ``{str(path): sha256}`` already
    computed."""
    h = hashlib.sha256()
    for p in paths:
        digest = (digests or {}).get(str(p)) or sha256_file(p)
        h.update(f"{Path(p).name}\0{digest}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def read_manifest(manifest_path: str | os.PathLike[str]) -> dict[str, str]:
    """Parse a ``sha256sum``-style manifest into ``{relative path: hex digest}``.

    Lines are ``<64 hex>  <path>`` (or ``<64 hex> *<path>``); a leading ``./`` is dropped; blank
    lines and ``#`` comments are ignored.

    Raises:
        ValueError: a malformed line, or a path that is absolute or leaves the directory.
    """
    entries: dict[str, str] = {}
    lines = Path(manifest_path).read_text(encoding="utf-8").splitlines()
    for lineno, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        digest, _, rest = line.partition(" ")
        rel = rest[1:] if rest[:1] in (" ", "*") else rest
        while rel.startswith("./"):
            rel = rel[2:]
        digest = digest.lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest) or not rel:
            raise ValueError(f"{manifest_path}:{lineno}: malformed manifest line: {line!r}")
        parts = Path(rel).parts
        if Path(rel).is_absolute() or ".." in parts:
            raise ValueError(f"{manifest_path}:{lineno}: path leaves the data directory: {rel!r}")
        entries[rel] = digest
    return entries


def verify_manifest(
    directory: str | os.PathLike[str], manifest_path: str | os.PathLike[str]
) -> list[str]:
    """Check the files of ``directory`` against a sha256 manifest; return the problems found.

    Each problem is one line, ``"missing: <path>"`` or ``"sha256 mismatch: <path>"``; an empty list
    means every listed file is present with the listed content (files not listed are ignored).
    """
    directory = Path(directory)
    problems: list[str] = []
    for rel, digest in read_manifest(manifest_path).items():
        file = directory / rel
        if not file.is_file():
            problems.append(f"missing: {rel}")
        elif sha256_file(file) != digest:
            problems.append(f"sha256 mismatch: {rel}")
    return problems


def manifest_checksum(manifest_path: str | os.PathLike[str]) -> str:
    """Hex sha256 of the manifest file itself: an id of the data set's exact content for results."""
    return sha256_file(manifest_path)


# ----------------------------------------------------------------------------------------------
# training data


class ImageFolderDataset(Dataset):
    """Images from a folder or a list of paths, as float ``(3, h, w)`` tensors in ``[0, 1]``.

    With ``crop_size`` each item is a random crop of that size; an image smaller than the crop is
    first reflection-padded (replicated where a side is a single pixel) to at least the crop size.
    ``hflip`` / ``vflip`` flip with probability 1/2 each.

    Randomness: in a DataLoader worker process the worker's torch RNG is used (DataLoader seeds
    it per worker from its base seed, so seed the DataLoader's ``generator`` for reproducibility);
    in the main process ``generator`` is used if given, else torch's global RNG. The generator is
    not sent to workers, so workers never repeat one another's crops.
    """

    def __init__(
        self,
        images: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        crop_size: int | tuple[int, int] | None = None,
        *,
        hflip: bool = False,
        vflip: bool = False,
        generator: torch.Generator | None = None,
        max_pixels: int | None = None,
    ) -> None:
        if isinstance(images, (str, os.PathLike)):
            self.paths = find_images(images)
        else:
            self.paths = [Path(p) for p in images]
            if not self.paths:
                raise ValueError("ImageFolderDataset needs at least one image path")
        if crop_size is None:
            self.crop_size: tuple[int, int] | None = None
        else:
            h, w = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(crop_size)
            if h < 1 or w < 1:
                raise ValueError(f"crop_size must be positive, got {crop_size!r}")
            self.crop_size = (int(h), int(w))
        self.hflip = hflip
        self.vflip = vflip
        self.generator = generator
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["generator"] = None  # workers use their own per-worker seeded RNG
        return state

    def _rng(self) -> torch.Generator | None:
        if get_worker_info() is not None:
            return None
        return self.generator

    def __getitem__(self, index: int) -> torch.Tensor:
        x, _ = read_image(self.paths[index], max_pixels=self.max_pixels)
        gen = self._rng()
        if self.crop_size is not None:
            x = pad_to(x, *self.crop_size)
            ch, cw = self.crop_size
            top = int(torch.randint(0, x.shape[1] - ch + 1, (1,), generator=gen))
            left = int(torch.randint(0, x.shape[2] - cw + 1, (1,), generator=gen))
            x = x[:, top : top + ch, left : left + cw]
        if self.hflip and bool(torch.rand((), generator=gen) < 0.5):
            x = x.flip(-1)
        if self.vflip and bool(torch.rand((), generator=gen) < 0.5):
            x = x.flip(-2)
        return x.contiguous()


def pad_to(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pad ``(C, H, W)`` symmetrically to at least ``height x width``, mirroring the image.

    Reflection needs a pad smaller than the side, so large pads are done in several rounds; a side
    of one pixel can only be replicated.
    """
    while x.shape[1] < height or x.shape[2] < width:
        pads = []
        for size, target in ((x.shape[2], width), (x.shape[1], height)):  # F.pad order: W then H
            need = min(max(target - size, 0), max(size - 1, 0))
            pads += [need // 2, need - need // 2]
        if any(pads):
            x = F.pad(x.unsqueeze(0), pads, mode="reflect").squeeze(0)
        else:  # a side of one pixel that must grow
            need_h, need_w = max(height - x.shape[1], 0), max(width - x.shape[2], 0)
            x = F.pad(x.unsqueeze(0), [0, need_w, 0, need_h], mode="replicate").squeeze(0)
    return x


# ---------------------------------------------------------------------------------------------------------
# Evaluation images for notebooks and the batch job: Kodak if present, else bundled sample photographs.

#: Photographs bundled inside the scikit-image wheel (no download), used when Kodak is not available.
SAMPLE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field")


@dataclass(frozen=True)
class EvalImages:
    """Images to evaluate on: ``paths``, a ``name`` for results, an optional ``manifest`` (sha256 list),
    and a ``notice`` to print when they are not what figures usually show (Kodak)."""

    paths: tuple[Path, ...]
    name: str
    manifest: Path | None
    notice: str | None

    @functools.cached_property
    def sha256(self) -> str:
        """:func:`images_sha256` of ``paths``: what cached results must have been measured on."""
        return images_sha256(self.paths)


def sample_photos(cache_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """Write scikit-image's bundled sample photographs as PNGs (once) and return their paths."""
    import numpy as _np
    import skimage.data

    cache = Path(cache_dir) if cache_dir else PROJECT_ROOT / "results" / "cache" / "sample_photos"
    cache.mkdir(parents=True, exist_ok=True)
    out = []
    for name in SAMPLE_PHOTOS:
        path = cache / f"{name}.png"
        if not path.exists():
            img = _np.ascontiguousarray(getattr(skimage.data, name)()[..., :3])
            atomic_write(path, _imagecodecs().png_encode(img))
        out.append(path)
    return out


#: Name (and ``results/cache/<name>/`` folder) of the fallback images when no data directory is named.
SAMPLE_PHOTOS_NAME = "sample-photos"


class DataDirError(FileNotFoundError):
    """A data directory was named (``DATA_DIR`` / ``data_dir`` / ``$LPM_DATA_DIR``) but holds no images to
    evaluate: it does not exist, or has neither ``kodak/`` nor image files. Never a silent fallback."""


def named_data_dir(data_dir: str | os.PathLike[str] | None = None) -> tuple[Path | None, str]:
    """The data directory a caller named, as an absolute path, and a phrase saying which name it came from.

    ``data_dir`` if given (not ``None`` or ``""``), else ``$LPM_DATA_DIR`` if set, else ``(None,
    "nothing named")``. A relative path is resolved against the **project root** (the folder holding
    ``lpm/``, ``notebooks/``, ``results/``), never against the current directory: a notebook kernel runs in
    ``notebooks/`` and papermill wherever it is started, so ``"../shared/data"`` means the same folder
    from both. ``~`` is expanded.
    """
    if data_dir is not None and str(data_dir) != "":
        raw, source = str(data_dir), "DATA_DIR"
    elif os.environ.get(DATA_DIR_ENV):
        raw, source = os.environ[DATA_DIR_ENV], f"${DATA_DIR_ENV}"
    else:
        return None, "nothing named"
    path = Path(raw).expanduser()
    if path.is_absolute():
        return path.resolve(), f"{source} {raw!r}"
    return (PROJECT_ROOT / path).resolve(), (f"{source} {raw!r} (relative: resolved against the project root "
                                             f"{PROJECT_ROOT}, not the current directory)")


def _named_images(named: Path, source: str) -> tuple[list[Path], str]:
    """Images of a named data directory: ``named/kodak/`` if it exists, else the images directly in
    ``named`` (named after the folder); anything else is a :class:`DataDirError` with one clear message."""
    fix = (f"Name the folder holding kodak/ (e.g. ../shared/data; `python data/download.py kodak --dest DIR` "
           f"fetches it), or leave DATA_DIR and ${DATA_DIR_ENV} unset for data/kodak, else sample photos "
           f"(outputs then go to results/cache/{SAMPLE_PHOTOS_NAME}/).")
    if not named.is_dir():
        raise DataDirError(f"data directory not found: {named} does not exist, from {source}. {fix}")
    folder = named / "kodak" if (named / "kodak").is_dir() else named
    try:
        return find_images(folder), "kodak" if folder.name == "kodak" else folder.name
    except ValueError:
        what = f"{folder} holds no image files" if folder != named else f"{named} has no kodak/ folder and no images"
        raise DataDirError(f"no evaluation images: {what}, from {source}. {fix}") from None


def resolve_eval_images(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    limit: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> EvalImages:
    """The images to evaluate on (notebooks, ``lpm reproduce``).

    Rules:

    1. A **named** directory — ``data_dir``, else ``$LPM_DATA_DIR`` (:func:`named_data_dir`; relative paths
       against the project root) — must deliver: its ``kodak/`` folder if it has one, else the images directly
       in it (named after the folder, e.g. a ``kodak`` folder itself). A named directory that does not exist
       or holds neither raises :class:`DataDirError`; there is no fallback.
    2. Nothing named: the project's ``data/kodak`` if present.
    3. Nothing named and no ``data/kodak``: scikit-image's bundled sample photographs (written once as PNGs
       to ``cache_dir``, default ``results/cache/sample-photos/images``), named ``"sample-photos"``, with a
       ``notice`` saying that these are not Kodak. (:func:`lpm.figures.results_dir` then sends every output
       to ``results/cache/sample-photos/``, never over the Kodak results.)

    ``limit`` keeps the first images only (smoke runs).
    """
    named, source = named_data_dir(data_dir)
    notice = None
    if named is not None:
        paths, name = _named_images(named, source)
    elif (DATA_DIR / "kodak").is_dir():
        paths, name = find_images(DATA_DIR / "kodak"), "kodak"
    else:
        paths = sample_photos(cache_dir or PROJECT_ROOT / "results" / "cache" / SAMPLE_PHOTOS_NAME / "images")
        name = SAMPLE_PHOTOS_NAME
        notice = (
            f"NOTICE: no data directory named (DATA_DIR, {DATA_DIR_ENV}) and no {DATA_DIR / 'kodak'}; using "
            f"{len(paths)} scikit-image sample photographs instead — numbers are NOT comparable to Kodak results "
            "or to the published anchors, and outputs go to results/cache/sample-photos/ unless RESULTS_DIR is "
            "given. Set DATA_DIR to the directory holding kodak/ (e.g. ../shared/data) for the real figures."
        )
    manifest = None
    if name == "kodak":  # a folder named kodak is Kodak only if its files are the manifest's, all of them
        name, manifest, mismatch = kodak_identity(paths)
        if mismatch:
            notice = (f"NOTICE: {mismatch} — numbers are NOT comparable to Kodak results or to the published "
                      f"anchors, and outputs go to results/cache/{KODAK_UNVERIFIED}/ unless RESULTS_DIR is given.")
    paths = list(paths[:limit] if limit else paths)  # a smoke run's first images of a verified folder
    return EvalImages(tuple(paths), name, manifest, notice)


#: Name of a folder called ``kodak`` whose files are not those of the Kodak manifest.
KODAK_UNVERIFIED = "kodak-unverified"


def kodak_identity(paths: Sequence[Path]) -> tuple[str, Path | None, str | None]:
    """What images found in a folder named ``kodak`` are: ``("kodak", manifest, None)`` if they are the Kodak
    manifest's files, all of them, each with its sha256, else ``("kodak-unverified", None, why)`` — images of
    the user's own, or part of the set, whose numbers must not be filed as Kodak results or set against the
    published (24-image) anchors; ``why`` is one sentence for the caller's warning."""
    manifest = manifest_path("kodak")
    listed = read_manifest(manifest)
    wrong = [p.name for p in paths if listed.get(p.name) != sha256_file(p)]
    missing = sorted(set(listed) - {p.name for p in paths})
    if not wrong and not missing:
        return "kodak", manifest, None
    folder = paths[0].parent if paths else "the folder"
    why = (f"{len(wrong)} of the {len(paths)} images in {folder} are not the Kodak images of {manifest.name} "
           f"(e.g. {', '.join(wrong[:3])}: another sha256, or not listed)" if wrong else
           f"{folder} holds {len(paths)} of the {len(listed)} Kodak images of {manifest.name} (missing: "
           f"{', '.join(missing[:3])}{', …' if len(missing) > 3 else ''})")
    return KODAK_UNVERIFIED, None, f"{why}; they are evaluated as images of your own, named '{KODAK_UNVERIFIED}'"
