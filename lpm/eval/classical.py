"""Classical image codecs measured live, through imagecodecs, on the same images as the learned codecs.

Each codec in :data:`CLASSICAL_CODECS` is a :class:`ClassicalCodec` ``(encode, decode, qualities)``::

    uint8 (H, W, 3) ─encode(x, quality)─► bytes (a complete file/codestream) ─decode─► uint8 (H, W, 3)

=========  ======================  =============================================  ======================
name       library (imagecodecs)    settings                                        ``quality`` means
=========  ======================  =============================================  ======================
jpeg       libjpeg-turbo (jpeg8)    4:4:4 (no chroma subsampling), optimised        IJG quality 0–100
                                    Huffman tables, baseline
webp       libwebp                  lossy, method 6 (slowest/best)                  quality 0–100
avif       libavif (AV1)            4:4:4, 8 bit, speed 6, 1 thread                 quality 0–100
jpegxl     libjxl                   effort 7 (libjxl default), bare codestream,     quality 0–100 (libjxl
                                    1 thread                                        maps it to a distance)
jpeg2000   OpenJPEG                 bare J2K codestream, irreversible 9/7 with      target PSNR in dB
                                    colour transform, fixed-quality mode            (OpenJPEG ``-q``)
=========  ======================  =============================================  ======================

Default sweeps stop short of each codec's lossless setting. A codec the installed imagecodecs build
lacks is left out of :data:`CLASSICAL_CODECS` and listed in :data:`UNAVAILABLE_CODECS` with the reason.

:func:`evaluate_classical` measures one codec on a set of images and returns CompressAI's results
dictionary plus provenance:

* **bpp** = 8 · len(encoded bytes) / (H·W), the whole file/codestream as the library writes it;
* **psnr-rgb** = :func:`lpm.eval.metrics.psnr` of the 8-bit RGB image against the decoded one;
* **ms-ssim-rgb** = :func:`lpm.eval.metrics.ms_ssim_rgb`; ``NaN`` for images shorter than 161 px on a
  side, which are left out of that point's MS-SSIM mean (``NaN`` if no image qualifies);
* **encoding_time / decoding_time** = wall seconds per image (``time.perf_counter``) of the encode
  and decode calls alone, single-threaded where the library lets us choose;

each a mean over images (PSNR averaged per image in dB, as CompressAI does). Images are read with
:func:`lpm.data.read_image` and rounded to 8 bits with :func:`lpm.data.to_uint8` (16-bit files are
therefore measured at 8 bits, as every classical codec here is run at 8 bits).

Published points of the same codecs (measured by CompressAI with their own settings, e.g. JPEG
through PIL) are in :mod:`lpm.eval.anchors`; expect small differences from ours.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

try:
    import imagecodecs
except ImportError:  # e.g. a GPU machine without the wheel: the learned codec's evaluation still works
    imagecodecs = None

from lpm.data import find_images, images_sha256, read_image, to_uint8
from lpm.eval.metrics import MS_SSIM_MIN_SIDE, PSNR_CAP_DB, ms_ssim_rgb, psnr
from lpm.jsonio import write_json

__all__ = [
    "CLASSICAL_CODECS",
    "CLASSICAL_SETTINGS",
    "UNAVAILABLE_CODECS",
    "ClassicalCodec",
    "available_classical_codecs",
    "classical_library_version",
    "evaluate_classical",
    "save_results_json",
]

Encoder = Callable[[np.ndarray, float], bytes]
Decoder = Callable[[bytes], np.ndarray]


class ClassicalCodec(NamedTuple):
    """One entry of :data:`CLASSICAL_CODECS`."""

    encode: Encoder
    """``encode(x, quality) -> bytes`` for a C-contiguous uint8 ``(H, W, 3)`` RGB array."""
    decode: Decoder
    """``decode(data) -> uint8 (H, W, 3)`` RGB array."""
    qualities: tuple[float, ...]
    """The default quality sweep (ascending)."""


@dataclass(frozen=True)
class _Spec:
    name: str
    title: str
    feature: str  # imagecodecs codec class name whose ``.available`` tells whether the build has it
    version_func: str  # imagecodecs function returning the library version string
    encode: Encoder
    decode: Decoder
    qualities: tuple[float, ...]
    quality_meaning: str
    settings: dict[str, Any] = field(default_factory=dict)
    #: the qualities that code lossily, inclusive (outside it the libraries go lossless, fall back to a
    #: default or fail: one lossless point at the 148 dB cap moves a BD-rate by 6-16 points)
    lossy: tuple[float, float] = (0.0, 100.0)
    integer: bool = False  # the library takes whole numbers (a fraction would be truncated)
    max_side: int = 65535  # the format's (or library's) largest width or height


def _jpeg_encode(x: np.ndarray, quality: float) -> bytes:
    return bytes(imagecodecs.jpeg8_encode(x, level=int(quality), subsampling="444", optimize=True))


def _jpeg_decode(data: bytes) -> np.ndarray:
    return imagecodecs.jpeg8_decode(data)


def _webp_encode(x: np.ndarray, quality: float) -> bytes:
    # lossless=False must be explicit: this imagecodecs writes lossless WebP when it is left unset.
    return bytes(imagecodecs.webp_encode(x, level=float(quality), lossless=False, method=6, numthreads=1))


def _webp_decode(data: bytes) -> np.ndarray:
    return imagecodecs.webp_decode(data)


def _avif_encode(x: np.ndarray, quality: float) -> bytes:
    return bytes(
        imagecodecs.avif_encode(
            x, level=int(quality), speed=6, pixelformat="444", bitspersample=8, numthreads=1
        )
    )


def _avif_decode(data: bytes) -> np.ndarray:
    return imagecodecs.avif_decode(data, numthreads=1)


def _jpegxl_encode(x: np.ndarray, quality: float) -> bytes:
    return bytes(imagecodecs.jpegxl_encode(x, level=float(quality), effort=7, usecontainer=False, numthreads=1))


def _jpegxl_decode(data: bytes) -> np.ndarray:
    return imagecodecs.jpegxl_decode(data, numthreads=1)


def _jpeg2000_encode(x: np.ndarray, quality: float) -> bytes:
    if not quality > 0:
        raise ValueError("JPEG 2000 quality is a target PSNR in dB and must be > 0 (0 would mean lossless)")
    return bytes(imagecodecs.jpeg2k_encode(x, level=float(quality), codecformat="J2K", mct=True, numthreads=1))


def _jpeg2000_decode(data: bytes) -> np.ndarray:
    return imagecodecs.jpeg2k_decode(data, numthreads=1)


_SPECS: tuple[_Spec, ...] = (
    _Spec(
        "jpeg", "JPEG", "JPEG8", "jpeg8_version", _jpeg_encode, _jpeg_decode,
        (5, 10, 15, 20, 30, 40, 50, 60, 70, 80, 90, 95),
        "IJG quality factor (0-100)",
        {"function": "imagecodecs.jpeg8_encode", "subsampling": "4:4:4", "optimize": True,
         "progressive": False},
        lossy=(1, 100), integer=True, max_side=65500,
    ),
    _Spec(
        "webp", "WebP", "WEBP", "webp_version", _webp_encode, _webp_decode,
        (5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95),
        "libwebp quality (0-100)",
        {"function": "imagecodecs.webp_encode", "lossless": False, "method": 6, "numthreads": 1},
        lossy=(0, 100), max_side=16383,
    ),
    _Spec(
        "avif", "AVIF", "AVIF", "avif_version", _avif_encode, _avif_decode,
        (10, 20, 30, 40, 50, 60, 70, 80, 90),
        "libavif quality (0-100)",
        {"function": "imagecodecs.avif_encode", "pixelformat": "4:4:4", "bitspersample": 8, "speed": 6,
         "numthreads": 1, "av1_encoder": "libavif default"},
        lossy=(0, 99), integer=True,
    ),
    _Spec(
        "jpegxl", "JPEG XL", "JPEGXL", "jpegxl_version", _jpegxl_encode, _jpegxl_decode,
        (10, 20, 30, 40, 50, 60, 70, 80, 90, 95),
        "libjxl quality (0-100; mapped to a Butteraugli distance by libjxl)",
        {"function": "imagecodecs.jpegxl_encode", "effort": 7, "usecontainer": False, "numthreads": 1},
        lossy=(0, 99.9),
    ),
    _Spec(
        "jpeg2000", "JPEG 2000", "JPEG2K", "jpeg2k_version", _jpeg2000_encode, _jpeg2000_decode,
        (24, 26, 28, 30, 32, 34, 36, 38, 40, 42, 44, 46),
        "OpenJPEG fixed-quality target PSNR in dB (tcp_distoratio)",
        {"function": "imagecodecs.jpeg2k_encode", "codecformat": "J2K (bare codestream)",
         "mct": True, "numthreads": 1},
        lossy=(10, 80),
    ),
)


def _availability(spec: _Spec) -> str | None:
    """``None`` if the imagecodecs build can encode and decode with ``spec``, else the reason."""
    if imagecodecs is None:
        return "imagecodecs is not installed (pip install imagecodecs)"
    feature = getattr(imagecodecs, spec.feature, None)
    if feature is None:
        return f"imagecodecs {imagecodecs.__version__} has no {spec.feature} codec"
    if not getattr(feature, "available", False):
        return f"imagecodecs {imagecodecs.__version__} was built without {spec.feature} (.available is False)"
    return None


def _build() -> tuple[dict[str, ClassicalCodec], dict[str, str], dict[str, _Spec]]:
    table: dict[str, ClassicalCodec] = {}
    missing: dict[str, str] = {}
    specs: dict[str, _Spec] = {}
    for spec in _SPECS:
        specs[spec.name] = spec
        reason = _availability(spec)
        if reason is None:
            table[spec.name] = ClassicalCodec(spec.encode, spec.decode, tuple(spec.qualities))
        else:
            missing[spec.name] = reason
    return table, missing, specs


#: Available classical codecs: name -> :class:`ClassicalCodec` ``(encode, decode, qualities)``.
CLASSICAL_CODECS: dict[str, ClassicalCodec]
#: Codecs this imagecodecs build lacks: name -> reason.
UNAVAILABLE_CODECS: dict[str, str]
CLASSICAL_CODECS, UNAVAILABLE_CODECS, _SPEC_BY_NAME = _build()

#: Per-codec settings (library call and parameters, what ``quality`` means), for every known codec.
CLASSICAL_SETTINGS: dict[str, dict[str, Any]] = {
    s.name: {"title": s.title, "quality_meaning": s.quality_meaning, **s.settings} for s in _SPECS
}


def available_classical_codecs() -> list[str]:
    """Names of the classical codecs this imagecodecs build supports (keys of :data:`CLASSICAL_CODECS`)."""
    return list(CLASSICAL_CODECS)


def classical_library_version(name: str) -> str | None:
    """Version string of the library behind codec ``name`` (e.g. ``"libjpeg_turbo 3.1.3/8.0"``), or ``None``."""
    spec = lookup_spec(name)
    func = getattr(imagecodecs, spec.version_func, None) if imagecodecs is not None else None
    if func is None:
        return None
    try:
        return str(func())
    except Exception:  # noqa: BLE001 - a stub raises for a missing library; the version is then unknown
        return None


def lookup_spec(name: str) -> _Spec:
    key = str(name).lower().replace(" ", "").replace("-", "").replace("_", "")
    aliases = {"jpg": "jpeg", "jxl": "jpegxl", "j2k": "jpeg2000", "jpeg2k": "jpeg2000", "jp2": "jpeg2000"}
    key = aliases.get(key, key)
    if key not in _SPEC_BY_NAME:
        raise ValueError(f"unknown classical codec {name!r}; known: {', '.join(_SPEC_BY_NAME)}")
    return _SPEC_BY_NAME[key]


def _image_paths(image_paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[Path]:
    if isinstance(image_paths, (str, os.PathLike)):
        p = Path(image_paths)
        return find_images(p) if p.is_dir() else [p]
    paths = [Path(p) for p in image_paths]
    if not paths:
        raise ValueError("no images given")
    return paths


def _qualities(spec: _Spec, qualities: Sequence[float] | None) -> list[float]:
    if qualities is None:
        return list(spec.qualities)
    if np.ndim(qualities) == 0:  # one number (also a numpy scalar)
        qualities = [qualities]
    try:
        qs = sorted({float(q) for q in qualities})
    except (TypeError, ValueError):
        raise ValueError(f"qualities must be numbers, got {qualities!r}") from None
    if not qs:
        raise ValueError("qualities is empty")
    if not all(math.isfinite(q) for q in qs):
        raise ValueError(f"qualities must be finite numbers, got {list(qualities)!r}")
    lo, hi = spec.lossy
    outside = [q for q in qs if not lo <= q <= hi]
    if outside:
        raise ValueError(f"{spec.title} qualities {_shown_q(outside)} are outside {_shown_q([lo])}..{_shown_q([hi])}, "
                         f"the range it codes lossily ({spec.quality_meaning}); outside it the library codes "
                         "losslessly, falls back to a default or fails")
    fractional = [q for q in qs if not q.is_integer()]
    if spec.integer and fractional:
        raise ValueError(f"{spec.title} qualities are whole numbers ({spec.quality_meaning}); "
                         f"{_shown_q(fractional)} would be truncated to another quality's file")
    return [int(q) if q.is_integer() else q for q in qs]


def _shown_q(qs: Sequence[float]) -> str:
    return ", ".join(f"{q:g}" for q in qs)


def _nanmean(values: Sequence[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return float(sum(vals) / len(vals)) if vals else float("nan")


def evaluate_classical(
    codec_name: str,
    image_paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    qualities: Sequence[float] | None = None,
    progress: bool = True,
    max_pixels: int | None = None,
) -> dict[str, Any]:
    """Encode and decode every image at every quality with one classical codec; average per quality.

    Args:
        codec_name: a key of :data:`CLASSICAL_CODECS` (``"jpeg"``, ``"webp"``, ``"avif"``, ``"jpegxl"``,
            ``"jpeg2000"``; case, ``-``/``_``/spaces and the aliases ``jpg``, ``jxl``, ``j2k`` are accepted).
        image_paths: image files, or a directory (its images, via :func:`lpm.data.find_images`).
        qualities: the sweep (see :data:`CLASSICAL_SETTINGS` for what quality means per codec); sorted
            ascending and de-duplicated. ``None``: the codec's default sweep.
        progress: show a tqdm progress bar.
        max_pixels: refuse (:class:`lpm.data.ImageTooLargeError`) an image with more pixels than this,
            from its header, before decoding it; ``None``: no limit.

    Returns:
        ``{"name", "description", "results": {"bpp", "psnr-rgb", "ms-ssim-rgb", "encoding_time",
        "decoding_time", "quality"}, "meta"}``; one list entry per quality, each a mean over images
        (see the module docstring). ``ms-ssim-rgb`` entries are ``NaN`` when no image is at least
        161 px on its shorter side; :func:`save_results_json` writes them as ``null``.

    Raises:
        ValueError: unknown codec, no images, bad qualities, or an image larger than the format allows.
        RuntimeError: the codec is not available in this imagecodecs build (the reason is given), or a
            decoder returned an image of the wrong shape.
    """
    spec = lookup_spec(codec_name)
    if spec.name not in CLASSICAL_CODECS:
        raise RuntimeError(f"classical codec {spec.name!r} is unavailable: {UNAVAILABLE_CODECS[spec.name]}")
    codec = CLASSICAL_CODECS[spec.name]
    qs = _qualities(spec, qualities)
    paths = _image_paths(image_paths)

    images: list[np.ndarray] = []
    for p in paths:
        x, _info = read_image(p, max_pixels=max_pixels)
        if max(x.shape[-2:]) > spec.max_side:
            raise ValueError(f"{p.name} is {x.shape[-1]}×{x.shape[-2]}: {spec.title} codes at most {spec.max_side} "
                             "pixels a side")
        # a grey image is coded as RGB (its value replicated), as lpm's own codec codes it
        images.append(np.ascontiguousarray(to_uint8(x)))

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(qs) * len(images), desc=f"{spec.title}", unit="img", leave=False)

    keys = ("bpp", "psnr-rgb", "ms-ssim-rgb", "encoding_time", "decoding_time")
    results: dict[str, list[float]] = {k: [] for k in keys}
    results["quality"] = []
    try:
        for q in qs:
            per: dict[str, list[float]] = {k: [] for k in keys}
            for p, img in zip(paths, images):
                h, w = img.shape[:2]
                t0 = time.perf_counter()
                try:
                    data = codec.encode(img, q)
                    t1 = time.perf_counter()
                    rec = codec.decode(data)
                except Exception as e:  # noqa: BLE001 -- the library's own errors name neither image nor limits
                    raise RuntimeError(f"{spec.title} could not code {p.name} ({w}×{h}) at quality {q:g}: "
                                       f"{type(e).__name__}: {e}") from e
                t2 = time.perf_counter()
                rec = np.asarray(rec)
                if rec.shape != img.shape or rec.dtype != np.uint8:
                    raise RuntimeError(
                        f"{spec.title} decoder returned {rec.dtype} {rec.shape} for {p.name} "
                        f"(expected uint8 {img.shape})"
                    )
                per["bpp"].append(8.0 * len(data) / (h * w))
                per["psnr-rgb"].append(psnr(img, rec))
                per["ms-ssim-rgb"].append(ms_ssim_rgb(img, rec))
                per["encoding_time"].append(t1 - t0)
                per["decoding_time"].append(t2 - t1)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(q=q, bpp=f"{per['bpp'][-1]:.3f}", psnr=f"{per['psnr-rgb'][-1]:.2f}")
            for k in ("bpp", "psnr-rgb", "encoding_time", "decoding_time"):
                results[k].append(float(np.mean(per[k])))
            results["ms-ssim-rgb"].append(_nanmean(per["ms-ssim-rgb"]))
            results["quality"].append(q)
    finally:
        if bar is not None:
            bar.close()

    return {
        "name": spec.title,
        "description": (
            f"{spec.title} ({classical_library_version(spec.name) or 'version unknown'} via imagecodecs "
            f"{imagecodecs.__version__}), measured live by lpm; quality = {spec.quality_meaning}"
        ),
        "results": results,
        "meta": _meta(spec, paths, images, qs),
    }


def _meta(spec: _Spec, paths: list[Path], images: list[np.ndarray], qs: list[float]) -> dict[str, Any]:
    import importlib.metadata

    from lpm.provenance import environment

    try:
        msssim_version = importlib.metadata.version("pytorch-msssim")
    except importlib.metadata.PackageNotFoundError:
        msssim_version = "unknown"
    n_msssim = sum(min(img.shape[:2]) >= MS_SSIM_MIN_SIDE for img in images)
    return {
        **environment("cpu"),
        "codec": spec.name,
        "imagecodecs": imagecodecs.__version__,
        "codec_library": classical_library_version(spec.name),
        "settings": dict(CLASSICAL_SETTINGS[spec.name]),
        "qualities": list(qs),
        "image_count": len(images),
        "images": [p.name for p in paths],
        "images_sha256": images_sha256(paths),
        "image_sizes": [list(img.shape[:2]) for img in images],
        "ms_ssim_image_count": int(n_msssim),
        "pytorch_msssim": msssim_version,
        "bpp_definition": "8 * len(encoded bytes) / (H * W): the complete file/codestream the library writes",
        "psnr_definition": (
            "10*log10(255^2/MSE) over the 8-bit RGB image vs the decoded one, averaged over images (dB); "
            f"identical images count as {PSNR_CAP_DB:.2f} dB (MSE floored at 1e-10)"
        ),
        "ms_ssim_definition": (
            "pytorch_msssim.ms_ssim(data_range=1) on 8-bit RGB / 255; images shorter than "
            f"{MS_SSIM_MIN_SIDE} px on a side are undefined and left out of the mean (NaN if none is left)"
        ),
        "timing": "wall seconds per image of the encode / decode call alone (time.perf_counter)",
        "input": "lpm.data.read_image + lpm.data.to_uint8 (8-bit RGB; alpha dropped, grey replicated)",
    }


def save_results_json(results: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write a results dictionary as strict JSON (``NaN``/``inf`` -> ``null``), atomically; return the path."""
    return write_json(path, results)
