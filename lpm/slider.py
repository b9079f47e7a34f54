"""The rate slider: pick any λ in a checkpoint's trained range and see the *real* file it makes.

:class:`RateSlider` wraps one image and one :class:`~lpm.models.PromptedCodec`. Every number it shows comes
from a real round trip: the image is coded with :func:`lpm.codec.encode_image`, serialised to ``.lpm`` bytes
with :func:`lpm.fileformat.encode` (header and CRC included), parsed back and decoded with
:func:`lpm.codec.decode_image`. bpp = 8 · file bytes / pixels; PSNR on the 8-bit images.

Data flow of one slider move (all on the kernel's thread, so a CPU-only kernel stays usable)::

    slider released (continuous_update=False)
        └─ code_at(λ, full=False): downscaled preview (``preview_size`` on the long side) ─► shown, labelled
           └─ if "full resolution" is on: code_at(λ, full=True) ─► shown, labelled

Results are cached per (λ rounded to 4 significant digits, preview/full): going back to a rate costs
nothing, and the widget then says "cached" instead of a coding time. The target-bpp box searches, with
:func:`lpm.models.find_rate` (false position in log λ and log size), the rate whose full-resolution *file* comes
closest under the target (the largest rate that fits, where the size rises with λ; the status line says when it does not).

While a rate is being coded, the numbers, the image and the zoom still on screen are those of the previous
rate: they carry the CSS class ``lpm-stale`` (greyed out) until the new result replaces them. A small RD plot
(an inline SVG, :func:`rd_svg`) shows bpp against PSNR of every rate coded so far in the session (of the
kind shown: preview or full resolution), trained rates marked, the current one highlighted. The layout wraps
(flex-wrap, images capped at 100 % of the width), so the decoded | original zoom needs no horizontal scroll
in a narrow notebook.

:meth:`RateSlider.code_at` is plain Python (no widgets), used by the widget and by the tests; the
ipywidgets UI is built lazily by :meth:`RateSlider.widget` and also by ``display(slider)``.
"""

from __future__ import annotations

import html
import collections
import math
import time
import warnings
from typing import Any, Optional

import imagecodecs
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lpm import fileformat
from lpm.codec import decode_image, encode_image
from lpm.data import ImageInfo, as_written, to_uint8
from lpm.eval.metrics import psnr as psnr_8bit
from lpm.models import PromptedCodec, find_rate

__all__ = ["RateSlider", "center_crop", "rd_svg", "round_rate", "CACHE_SIZE", "RATE_DIGITS"]

#: How many coded results (decoded image, stream, zoom) the slider keeps; older ones are coded again if
#: asked for (their bpp and PSNR stay in the RD plot).
CACHE_SIZE = 32

#: Significant digits a rate is rounded to before coding (the cache key; the coded rate is the rounded one).
RATE_DIGITS = 4
#: Side in pixels of the zoomed crop as displayed (nearest-neighbour enlargement by an integer factor).
ZOOM_DISPLAY = 288
#: CSS class of the widgets whose content belongs to the previous rate while a new one is being coded.
STALE = "lpm-stale"

#: Style sheet of the widget (in a hidden HTML child): stale marking, wrapping rows, shrinkable images.
_CSS = f"""<style>
.lpm-rate-slider-box .{STALE} {{ opacity: 0.35; filter: grayscale(1); }}
.lpm-rate-slider-box .lpm-row {{ flex-wrap: wrap; max-width: 100%; }}
.lpm-rate-slider-box .lpm-zoom-pair {{ flex-wrap: nowrap; max-width: 100%; }}
.lpm-rate-slider-box img.lpm-zoom, .lpm-rate-slider-box img.lpm-zoom-ref {{
  image-rendering: pixelated; min-width: 0; max-width: calc(50% - 4px); height: auto; flex: 0 1 auto; }}
.lpm-rate-slider-box img.lpm-decoded {{ max-width: 100%; height: auto; }}
.lpm-rate-slider-box .lpm-rd svg {{ max-width: 100%; height: auto; }}
</style>"""


def round_rate(rate: float, digits: int = RATE_DIGITS) -> float:
    """``rate`` rounded to ``digits`` significant digits (the slider's cache key and the rate actually coded)."""
    return float(f"{float(rate):.{digits}g}")


def _zoom_caption(y: int, x: int, size: int, full: bool) -> str:
    where = "px" if full else "px of the downscaled preview (its blur is the downscaling's, not the codec's)"
    return f"<small>zoom: {size}×{size} {where} at (y={y}, x={x}), decoded | original</small>"


def center_crop(x: Tensor, info: ImageInfo, height: int, width: Optional[int] = None) -> tuple[Tensor, ImageInfo]:
    """The central ``height × width`` crop (clipped to the image) of ``x`` ``(3, H, W)`` and its ImageInfo."""
    width = height if width is None else width
    h, w = min(height, x.shape[-2]), min(width, x.shape[-1])
    top, left = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2
    crop = x[:, top : top + h, left : left + w].contiguous()
    return crop, ImageInfo(height=h, width=w, channels=info.channels, bit_depth=info.bit_depth, had_alpha=False)


def _png(a: np.ndarray) -> bytes:
    return bytes(imagecodecs.png_encode(np.ascontiguousarray(a)))


def _enlarge(a: np.ndarray, side: int = ZOOM_DISPLAY) -> np.ndarray:
    """Nearest-neighbour enlargement of an ``(h, w, 3)`` crop by the largest integer factor fitting ``side``."""
    f = max(1, side // max(a.shape[0], a.shape[1]))
    return np.repeat(np.repeat(a, f, axis=0), f, axis=1)


def _ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    """About ``n`` round tick values (steps of 1, 2, 2.5 or 5 × 10^k) within ``[lo, hi]``."""
    raw = (hi - lo) / max(n, 1)
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1.0, 2.0, 2.5, 5.0, 10.0) if m * mag >= raw * (1 - 1e-9))
    t, out = math.ceil(lo / step - 1e-9) * step, []
    while t <= hi + 1e-9 * step:
        out.append(round(t, 12))
        t += step
    return out


def _span(values: list[float], pad: float, min_half: float) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    half = max(0.5 * (hi - lo) * (1 + 2 * pad), min_half)
    mid = 0.5 * (lo + hi)
    return mid - half, mid + half


def rd_svg(points: list[dict[str, Any]], current: Optional[float] = None, *, caption: str = "",
           width: int = 300, height: int = 220) -> str:
    """A small RD plot as inline SVG: ``points`` (dicts with ``rate``, ``bpp``, ``psnr`` and ``trained``)
    joined in rate order, trained rates drawn as diamonds, the point whose rate is ``current`` in red.

    Each point is an element of class ``lpm-rd-point`` (plus ``lpm-rd-trained`` / ``lpm-rd-current``) with
    ``data-rate``, ``data-bpp`` and ``data-psnr`` attributes and a hover title."""
    ml, mr, mt, mb = 42, 10, 20, 30
    pw, ph = width - ml - mr, height - mt - mb
    out = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
           f"viewBox='0 0 {width} {height}' font-family='sans-serif' font-size='10'>",
           f"<text x='{ml}' y='12' font-size='10' fill='#333'>{html.escape(caption)}</text>",
           f"<rect x='{ml}' y='{mt}' width='{pw}' height='{ph}' fill='none' stroke='#999'/>"]
    if not points:
        out.append(f"<text x='{ml + 8}' y='{mt + ph / 2:.1f}' fill='#777'>nothing coded yet</text></svg>")
        return "".join(out)
    pts = sorted(points, key=lambda p: p["rate"])
    x0, x1 = _span([p["bpp"] for p in pts], 0.08, 0.02)
    y0, y1 = _span([p["psnr"] for p in pts], 0.08, 0.5)

    def X(v: float) -> float:
        return ml + (v - x0) / (x1 - x0) * pw

    def Y(v: float) -> float:
        return mt + (1 - (v - y0) / (y1 - y0)) * ph

    for t in _ticks(x0, x1):
        out.append(f"<line x1='{X(t):.1f}' y1='{mt + ph}' x2='{X(t):.1f}' y2='{mt + ph + 3}' stroke='#999'/>"
                   f"<text x='{X(t):.1f}' y='{mt + ph + 13}' text-anchor='middle' fill='#555'>{t:.3g}</text>")
    for t in _ticks(y0, y1):
        out.append(f"<line x1='{ml - 3}' y1='{Y(t):.1f}' x2='{ml}' y2='{Y(t):.1f}' stroke='#999'/>"
                   f"<text x='{ml - 5}' y='{Y(t) + 3:.1f}' text-anchor='end' fill='#555'>{t:.3g}</text>")
    out.append(f"<text x='{ml + pw / 2:.1f}' y='{height - 3}' text-anchor='middle' fill='#333'>bpp (file)</text>"
               f"<text x='10' y='{mt + ph / 2:.1f}' text-anchor='middle' fill='#333' "
               f"transform='rotate(-90 10 {mt + ph / 2:.1f})'>PSNR (dB)</text>")
    if len(pts) > 1:
        line = " ".join(f"{X(p['bpp']):.1f},{Y(p['psnr']):.1f}" for p in pts)
        out.append(f"<polyline points='{line}' fill='none' stroke='#9ab' stroke-width='1'/>")
    cur = current  # a rate the slider coded (its points' rates are those)
    for p in sorted(pts, key=lambda p: p["rate"] == cur):  # the current point last, on top
        x, y = X(p["bpp"]), Y(p["psnr"])
        is_cur = p["rate"] == cur
        cls = "lpm-rd-point" + (" lpm-rd-trained" if p["trained"] else "") + (" lpm-rd-current" if is_cur else "")
        fill, r = ("#d62728", 5.5) if is_cur else (("#1f4e79", 4.5) if p["trained"] else ("#6a8caf", 3.0))
        attrs = (f"class='{cls}' data-rate='{p['rate']:.4g}' data-bpp='{p['bpp']:.4f}' data-psnr='{p['psnr']:.2f}' "
                 f"fill='{fill}' stroke='{'#000' if is_cur else 'none'}'")
        tip = (f"<title>λ={p['rate']:.4g}{' (trained)' if p['trained'] else ''}: {p['bpp']:.4f} bpp, "
               f"{p['psnr']:.2f} dB</title>")
        if p["trained"]:
            shape = (f"<polygon {attrs} points='{x:.1f},{y - r:.1f} {x + r:.1f},{y:.1f} {x:.1f},{y + r:.1f} "
                     f"{x - r:.1f},{y:.1f}'>{tip}</polygon>")
        else:
            shape = f"<circle {attrs} cx='{x:.1f}' cy='{y:.1f}' r='{r}'>{tip}</circle>"
        out.append(shape)
    out.append("</svg>")
    return "".join(out)


class RateSlider:
    """Interactive continuous-rate viewer for one image (see the module docstring).

    Args:
        model: a :class:`PromptedCodec` in eval mode with entropy tables built (as :func:`lpm.zoo.load` gives).
        model_id: the checkpoint id written into files (:func:`lpm.fileformat.model_id_from_sha256`).
        image: ``(3, H, W)`` float tensor in ``[0, 1]``.
        info: the image's :class:`~lpm.data.ImageInfo` (size, channels, bit depth) as read.
        preview_size: long side of the downscaled preview, in pixels. Images no larger are coded only once.
        zoom: ``(y, x, size)`` of the square region shown enlarged, in full-resolution pixels
            (default: a central square of ``min(96, H, W)``).
        rate: the initial λ (default: the model's base rate).
        full_resolution: initial state of the "full resolution" toggle (code the full image after the preview).
        budget: the checkpoint's training-budget string, shown under the widget.
        name: the checkpoint's name, shown with the budget.
    """

    @classmethod
    def for_checkpoint(cls, checkpoint: Any, image: Tensor, info: ImageInfo, **kwargs: Any) -> "RateSlider":
        """A slider for a :class:`lpm.checkpoints.LoadedCodec` (``zoo.load(...)``): its model, stream id and
        training budget."""
        kwargs.setdefault("budget", checkpoint.budget or "not recorded in the checkpoint")
        return cls(checkpoint.model, checkpoint.model_id, image, info, **kwargs)

    def __init__(
        self,
        model: PromptedCodec,
        model_id: str,
        image: Tensor,
        info: ImageInfo,
        *,
        preview_size: int = 256,
        zoom: Optional[tuple[int, int, int]] = None,
        rate: Optional[float] = None,
        full_resolution: bool = True,
        budget: Optional[str] = None,
        name: Optional[str] = None,
    ) -> None:
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"expected an image tensor of shape (3, H, W), got {tuple(image.shape)}")
        if (image.shape[1], image.shape[2]) != (info.height, info.width):
            raise ValueError(f"image is {tuple(image.shape[1:])} but info says {info.height}x{info.width}")
        if preview_size < 1:
            raise ValueError(f"preview_size must be a positive number of pixels, got {preview_size}")
        self.model, self.model_id = model, model_id
        self.budget, self.name = budget, name
        self.preview_size = int(preview_size)
        self.rate_range: tuple[float, float] = tuple(float(r) for r in model.rate_range)  # type: ignore[assignment]
        self.trained_rates: list[float] = [float(r) for r in model.rates]
        # checked now (NaN, out of range: one clear error when the slider is built, not when it is shown)
        self.initial_rate = self._check_rate(float(model.base_rate if rate is None else rate))
        self.initial_full = bool(full_resolution)

        H, W = info.height, info.width
        image = image.detach().float().cpu().clamp(0.0, 1.0)
        if zoom is None:
            s = min(96, H, W)
            zoom = ((H - s) // 2, (W - s) // 2, s)
        zy, zx, zs = (int(v) for v in zoom)
        zs = max(1, min(zs, H, W))
        zy, zx = min(max(zy, 0), H - zs), min(max(zx, 0), W - zs)
        self.zoom = (zy, zx, zs)

        # the two versions of the image that get coded: "full" (as read) and "preview" (downscaled, 8-bit)
        self._sources: dict[str, tuple[Tensor, ImageInfo, np.ndarray, tuple[int, int, int]]] = {}
        ref = to_uint8(image)
        self._sources["full"] = (image, info, ref, self.zoom)
        if max(H, W) > self.preview_size:
            s = self.preview_size / max(H, W)
            h, w = max(1, round(H * s)), max(1, round(W * s))
            small = F.interpolate(image[None], size=(h, w), mode="bilinear", antialias=True, align_corners=False)
            small = torch.round(small[0].clamp(0.0, 1.0) * 255.0) / 255.0  # an 8-bit image, like a file would be
            pinfo = ImageInfo(height=h, width=w, channels=info.channels, bit_depth=8, had_alpha=False)
            pz = max(1, min(round(zs * s), h, w))
            pzoom = (min(round(zy * s), h - pz), min(round(zx * s), w - pz), pz)
            self._sources["preview"] = (small, pinfo, to_uint8(small), pzoom)
        self.preview_is_full = "preview" not in self._sources

        # the last CACHE_SIZE coded results (each holds the decoded PNG: ~6 MB for a 3.5-megapixel photo), and
        # the bpp/PSNR of every rate coded (the RD plot's points; a few numbers each)
        self._cache: collections.OrderedDict[tuple[float, str], dict[str, Any]] = collections.OrderedDict()
        self._points: dict[tuple[float, str], dict[str, Any]] = {}
        self._sizes: dict[tuple[float, str], int] = {}  # file bytes of rates measured by the target search only
        self._ui: Optional[dict[str, Any]] = None
        self._box: Any = None
        self._quiet = False  # set while the code itself changes widget values (observers then do nothing)
        self._shown: Optional[float] = None  # the rate of the result on screen

    # ------------------------------------------------------------------------------------------ pure Python
    def _kind(self, full: bool) -> str:
        return "full" if (full or self.preview_is_full) else "preview"

    def _check_rate(self, rate: float) -> float:
        """The codec's own rate check; a trained rate or a range end (to :data:`RATE_DIGITS` digits) is taken
        exactly, any other rate rounded to :data:`RATE_DIGITS` digits (kept in range). (Rounding first coded
        a trained λ of more digits, 0.00932850…, as an interpolated 0.009329: not the trained model, and
        refused by codecs without continuous rates.)"""
        lo, hi = self.rate_range
        try:
            r = float(rate)
        except (TypeError, ValueError):
            r = math.nan  # the codec's check below says what is wrong
        if math.isfinite(r):
            for t in (*self.trained_rates, lo, hi):
                if r == t or round_rate(r) == round_rate(t):
                    return float(self.model.scalar_rate(t))
        return min(max(round_rate(self.model.scalar_rate(rate)), lo), hi)

    def _stream(self, rate: float, kind: str) -> bytes:
        x, info, _, _ = self._sources[kind]
        return fileformat.encode(encode_image(self.model, self.model_id, x, info, rate))

    def code_at(self, rate: float, full: bool = False) -> dict[str, Any]:
        """Code the image (``full``) or its preview at ``rate`` (rounded to :data:`RATE_DIGITS` digits) through
        a real ``.lpm`` file, decode it, and return ``dict(rate, bytes, bpp, psnr, png_bytes, ...)``.

        Keys: ``rate`` (the λ coded), ``bytes`` (length of the whole ``.lpm`` file), ``bpp`` (8·bytes / pixels of
        the coded image), ``psnr`` (dB, 8-bit, against the coded source), ``png_bytes`` (the decoded image as
        PNG), ``zoom_png`` (the enlarged zoom crop), ``full`` (True if the full-resolution image was coded),
        ``height``/``width`` (of the coded image), ``stream`` (the ``.lpm`` file bytes), ``seconds`` (coding
        time). Cached: a repeated call returns the same dict object without coding again.
        """
        rate = self._check_rate(rate)
        kind = self._kind(full)
        key = (rate, kind)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        x, info, ref, (zy, zx, zs) = self._sources[kind]
        t0 = time.perf_counter()
        data = self._stream(rate, kind)
        x_hat, _ = decode_image(self.model, self.model_id, fileformat.decode(data))
        seconds = time.perf_counter() - t0
        # what ``lpm decompress`` writes (a grey source comes back grey: the luma of the decoded channels), as
        # ``lpm eval`` measures it, replicated to RGB like the grey original
        dec = to_uint8(as_written(x_hat, info).expand(3, -1, -1))
        npix = info.height * info.width
        result = {
            "rate": rate,
            "bytes": len(data),
            "bpp": 8.0 * len(data) / npix,
            "psnr": psnr_8bit(ref, dec),
            "png_bytes": _png(dec),
            "zoom_png": _png(_enlarge(dec[zy : zy + zs, zx : zx + zs])),
            "full": kind == "full",
            "height": info.height,
            "width": info.width,
            "stream": data,
            "seconds": seconds,
        }
        self._cache[key] = result
        self._points[key] = {k: result[k] for k in ("bpp", "psnr", "bytes")}
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        self._sizes[key] = len(data)
        return result

    def is_cached(self, rate: float, full: bool = False) -> bool:
        """Whether :meth:`code_at` would answer ``(rate, full)`` from the cache (no coding)."""
        return (self._check_rate(rate), self._kind(full)) in self._cache

    def session_points(self, full: bool = True) -> list[dict[str, Any]]:
        """The rates coded so far (full resolution or preview), in rate order: ``dict(rate, bpp, psnr,
        bytes, trained)``; ``trained`` marks the checkpoint's trained rates."""
        kind = self._kind(full)
        trained = set(self.trained_rates)
        return [{"rate": r, "bpp": res["bpp"], "psnr": res["psnr"], "bytes": res["bytes"], "trained": r in trained}
                for (r, k), res in sorted(self._points.items()) if k == kind]

    def zoom_crops(self, res: Optional[dict[str, Any]] = None) -> tuple[Optional[np.ndarray], np.ndarray]:
        """``(decoded, original)`` zoom crops, ``(s, s, 3)`` uint8, not enlarged, of a :meth:`code_at` result
        (``res=None``: ``(None, original)`` of the full-resolution image)."""
        full = True if res is None else bool(res["full"])
        _, _, ref, (zy, zx, zs) = self._sources["full" if full else "preview"]
        original = ref[zy : zy + zs, zx : zx + zs].copy()
        if res is None:
            return None, original
        dec = np.asarray(imagecodecs.png_decode(res["png_bytes"]))[..., :3]
        return dec[zy : zy + zs, zx : zx + zs].copy(), original

    def strip(self, rates: Optional[list[float]] = None) -> dict[str, Any]:
        """The full-resolution image coded at each of ``rates`` (default: the trained rates) with
        :meth:`code_at` — the slider's own real files — for a static picture of what the slider shows
        (:func:`lpm.figures.rate_strip.plot_rate_strip`).

        Returns ``dict(panels, original, zoom, height, width)``: ``panels`` one dict per rate with ``rate``,
        ``bytes``, ``bpp``, ``psnr`` (of the whole coded image), ``trained`` and ``crop`` (the decoded zoom
        crop); ``original`` the same crop of the source; ``zoom`` ``(y, x, size)``."""
        trained = set(self.trained_rates)
        panels = []
        for rate in (self.trained_rates if rates is None else rates):
            res = self.code_at(rate, full=True)
            crop, original = self.zoom_crops(res)
            panels.append({"rate": res["rate"], "bytes": res["bytes"], "bpp": res["bpp"], "psnr": res["psnr"],
                           "trained": res["rate"] in trained, "crop": crop})
        _, info, _, _ = self._sources["full"]
        return {"panels": panels, "original": self.zoom_crops()[1], "zoom": self.zoom,
                "height": info.height, "width": info.width}

    def file_bytes(self, rate: float, full: bool = True) -> int:
        """Length of the ``.lpm`` file at ``rate`` (rounded), encoding only (no decode) unless already cached."""
        rate = self._check_rate(rate)
        key = (rate, self._kind(full))
        if key not in self._sizes:
            self._sizes[key] = len(self._stream(rate, key[1]))
        return self._sizes[key]

    def find_rate_for_bpp(self, target_bpp: float, full: bool = True) -> dict[str, Any]:
        """The (rounded) rate whose real file comes closest under ``target_bpp`` (for a checkpoint whose size
        rises with λ, the largest rate that fits; see :func:`lpm.models.find_rate`), coded with :meth:`code_at`.

        A search in log λ (:func:`lpm.models.find_rate`, safeguarded false position) over rounded rates, so the returned result's
        ``bpp`` is the measured one. If the lowest rate is over the target, the trained rates are measured too
        (a checkpoint whose size does not rise with λ may fit it at one of them); if none fits either, the
        lowest rate's result is returned (its ``bpp`` then exceeds the target; the widget says so).
        """
        if not (math.isfinite(target_bpp) and target_bpp > 0):
            raise ValueError(f"target bpp must be a positive number, got {target_bpp}")
        _, info, _, _ = self._sources[self._kind(full)]
        npix = info.height * info.width

        def measure(r: float) -> float:
            return 8.0 * self.file_bytes(r, full) / npix

        rate, _ = find_rate(measure, float(target_bpp), self.rate_range, probes=getattr(self.model, "rates", ()))
        return self.code_at(rate, full)

    # ------------------------------------------------------------------------------------------ widgets
    def widget(self):
        """The ipywidgets UI (a ``VBox``), built on first call and shown at the initial rate."""
        if self._box is None:
            self._build()
            self.show(self.initial_rate)
        return self._box

    def _repr_mimebundle_(self, **kwargs):
        return self.widget()._repr_mimebundle_(**kwargs)

    def _build(self) -> None:
        import ipywidgets as w

        lo, hi = self.rate_range
        _, info, _, _ = self._sources["full"]
        H, W = info.height, info.width
        slider = w.FloatLogSlider(
            value=min(max(self.initial_rate, lo), hi),
            base=10,
            min=math.log10(lo),
            max=math.log10(hi),
            step=(math.log10(hi) - math.log10(lo)) / 200,
            continuous_update=False,
            readout_format=".4g",
            description="λ (rate)",
            style={"description_width": "initial"},
            layout=w.Layout(width="520px", max_width="100%"),
        )
        slider.add_class("lpm-rate-slider")
        full = w.Checkbox(
            value=self.initial_full and not self.preview_is_full,
            description=f"full resolution ({W}×{H}) after the preview",
            disabled=self.preview_is_full,
            indent=False,
            layout=w.Layout(width="auto"),
        )
        full.add_class("lpm-full-toggle")
        target = w.BoundedFloatText(
            value=0.25, min=0.001, max=48.0, step=0.01, description="target bpp",
            style={"description_width": "initial"}, layout=w.Layout(width="170px"),
        )
        target.add_class("lpm-target-bpp")
        find = w.Button(description="find rate", tooltip="the λ whose full-resolution file comes closest under the target")
        find.add_class("lpm-find-rate")
        jumps = [w.Button(description=f"{r:g}", tooltip=f"trained rate λ={r:g}", layout=w.Layout(width="auto"))
                 for r in self.trained_rates]
        for b, r in zip(jumps, self.trained_rates):
            b.on_click(lambda _b, r=r: setattr(slider, "value", r))
        shown = w.HTML()
        shown.add_class("lpm-stats")
        status = w.HTML()
        status.add_class("lpm-status")
        display_w = min(W, 640)
        image = w.Image(format="png", width=str(display_w),
                        layout=w.Layout(height="auto", max_width="100%", object_fit="contain", margin="0 8px 8px 0"))
        image.add_class("lpm-decoded")
        zoom = w.Image(format="png", layout=w.Layout(margin="0 4px 0 0"))
        zoom.add_class("lpm-zoom")
        zoom_ref = w.Image(format="png", layout=w.Layout(margin="0"))
        zoom_ref.add_class("lpm-zoom-ref")
        rd = w.HTML(layout=w.Layout(margin="0 0 8px 0", max_width="100%"))
        rd.add_class("lpm-rd")
        style = w.HTML(_CSS, layout=w.Layout(display="none"))
        style.add_class("lpm-style")
        zy, zx, zs = self.zoom
        budget = html.escape(self.budget) if self.budget else "not recorded in the checkpoint"
        name = f"{html.escape(self.name)} " if self.name else ""
        footer = w.HTML(
            f"<small>checkpoint {name}(id {html.escape(self.model_id)}) — training budget: {budget}<br>"
            "bytes are whole <code>.lpm</code> files (header and CRC included); PSNR on 8-bit RGB; "
            "the preview is the image downscaled to "
            f"{self.preview_size} px on its long side, coded as its own file.</small>"
        )
        footer.add_class("lpm-budget")
        header = w.HTML(f"<b>{html.escape(self.name)}</b> {html.escape(self._method())}" if self.name else "")
        header.add_class("lpm-title")
        pair = w.HBox([zoom, zoom_ref], layout=w.Layout(max_width="100%"))
        pair.add_class("lpm-zoom-pair")
        zoom_caption = w.HTML(_zoom_caption(zy, zx, zs, True))
        zoom_caption.add_class("lpm-zoom-caption")
        zoom_box = w.VBox([
            zoom_caption,
            pair,
        ], layout=w.Layout(max_width="100%", margin="0 8px 8px 0"))
        zoom_box.add_class("lpm-zoom-box")

        def row(children, **kw):
            box = w.HBox(children, layout=w.Layout(flex_flow="row wrap", max_width="100%", **kw))
            box.add_class("lpm-row")
            return box

        views = row([image, zoom_box, rd], align_items="flex-start")
        views.add_class("lpm-views")
        self._ui = dict(slider=slider, full=full, target=target, find=find, shown=shown, status=status,
                        image=image, zoom=zoom, zoom_ref=zoom_ref, zoom_caption=zoom_caption, rd=rd, views=views)
        slider.observe(lambda ch: self._quiet or self._safely(self.show, ch["new"]), names="value")
        full.observe(lambda ch: self._quiet or self._safely(self.show), names="value")
        find.on_click(lambda _b: self._safely(self._on_find))
        self._box = w.VBox([
            style,
            header,
            row([slider, full]),
            row([target, find, w.HTML("<small>&nbsp;trained λ:</small>"), *jumps]),
            shown,
            status,
            views,
            footer,
        ], layout=w.Layout(max_width="100%"))
        self._box.add_class("lpm-rate-slider-box")

    def _method(self) -> str:
        """What kind of variable-rate codec this is, in a few words (for the title above the slider)."""
        cfg = getattr(self.model, "prompt_config", None)
        if cfg is not None:
            if not (cfg.additive or cfg.latent_gain):
                return "— prompt modules alone (the paper's method)"
            return (f"— {'additive ' if cfg.additive else ''}prompt modules{' + latent gain' if cfg.latent_gain else ''}"
                    " (beyond the paper)")
        return f"— {type(self.model).__name__}"

    def _safely(self, fn, *args) -> None:
        """Run a UI callback; errors go to the status line instead of the (hidden) widget log, and the screen
        is made consistent again: what is shown is no longer greyed, and the slider goes back to its rate."""
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 - shown to the user
            if self._ui is None:
                return
            note = ""
            if self._shown is not None:
                self._set_stale(False)
                note = f"; still showing λ={self._shown:.4g}"
                if self._ui["slider"].value != self._shown:
                    self._quiet = True
                    try:
                        self._ui["slider"].value = self._shown
                    finally:
                        self._quiet = False
            self._ui["status"].value = f"<span style='color:#b00'>error: {html.escape(str(e))}{note}</span>"

    def _set_stale(self, stale: bool) -> None:
        """Mark (or unmark) what is on screen as the previous rate's: numbers, image, zoom, RD plot."""
        for key in ("shown", "image", "zoom", "rd"):
            (self._ui[key].add_class if stale else self._ui[key].remove_class)(STALE)

    def _render(self, res: dict[str, Any], cached: bool = False) -> None:
        """Show ``res``; ``cached``: it came from the cache (no coding time is shown then)."""
        ui = self._ui
        if ui is None:
            return
        _, _, ref, (zy, zx, zs) = self._sources["full" if res["full"] else "preview"]
        label = (f"FULL RESOLUTION {res['width']}×{res['height']}" if res["full"]
                 else f"PREVIEW {res['width']}×{res['height']} (downscaled; full image not shown yet)")
        color = "#064" if res["full"] else "#a50"
        ui["shown"].value = (
            f"<div><b style='color:{color}' class='lpm-kind'>{label}</b> · "
            f"λ = <span class='lpm-rate'>{res['rate']:.4g}</span> · "
            f"file <span class='lpm-bytes'>{res['bytes']}</span> bytes · "
            f"<span class='lpm-bpp'>{res['bpp']:.4f}</span> bpp · "
            f"PSNR <span class='lpm-psnr'>{res['psnr']:.2f}</span> dB "
            + ("<small class='lpm-time'>(cached: no coding)</small></div>" if cached else
               f"<small class='lpm-time'>(coded in {res['seconds']:.2f} s)</small></div>")
        )
        ui["image"].value = res["png_bytes"]
        ui["zoom"].value = res["zoom_png"]
        self._shown = res["rate"]
        ui["zoom_ref"].value = _png(_enlarge(ref[zy : zy + zs, zx : zx + zs]))
        ui["zoom_caption"].value = _zoom_caption(zy, zx, zs, res["full"])
        kind = "full resolution" if res["full"] else "preview"
        ui["rd"].value = rd_svg(self.session_points(res["full"]), res["rate"],
                                caption=f"coded this session ({kind}); ◆ trained, red: shown")
        self._set_stale(False)

    def _code_and_render(self, rate: float, full: bool, known: Optional[set], status: str,
                         stale: bool = True) -> dict[str, Any]:
        """:meth:`code_at` then :meth:`_render`. Unless cached, ``status`` is shown while coding and, if
        ``stale``, what is on screen is marked stale. ``known``: the cache keys to count as cached (default:
        the cache as it is now)."""
        key = (self._check_rate(rate), self._kind(full))
        cached = key in (self._cache if known is None else known)
        if not cached:
            self._ui["status"].value = status
            if stale:
                self._set_stale(True)
        res = self.code_at(rate, full=full)
        self._render(res, cached=cached)
        return res

    def show(self, rate: Optional[float] = None, *, known: Optional[set] = None) -> dict[str, Any]:
        """Code and display ``rate`` (default: the slider's): the preview first, then, if the toggle is on,
        the full-resolution image. Returns the result shown last. While coding, the previous result stays
        on screen marked stale. ``known``: cache keys to present as cached (default: the current cache)."""
        if self._box is None:
            self._build()
        ui = self._ui
        rate = ui["slider"].value if rate is None else rate
        want_full = bool(ui["full"].value)
        r = self._check_rate(rate)
        kind = "" if self.preview_is_full else " (preview)"
        res = self._code_and_render(rate, False, known, f"coding λ={r:.4g}{kind}… greyed: the previous rate")
        if want_full and not res["full"]:
            # the preview on screen is of this rate (and labelled PREVIEW): not stale while the full image codes
            res = self._code_and_render(rate, True, known, "preview shown; coding the full-resolution image…",
                                        stale=False)
        ui["status"].value = ""
        return res

    def _on_find(self) -> None:
        ui = self._ui
        target = float(ui["target"].value)
        ui["status"].value = f"searching the λ whose full-resolution file comes closest under {target:g} bpp…"
        known = set(self._cache)
        self._set_stale(True)
        with warnings.catch_warnings(record=True) as caught:  # a rate that is not monotone: said in the status
            warnings.simplefilter("always", UserWarning)
            res = self.find_rate_for_bpp(target, full=True)
        self._quiet = True
        try:
            ui["full"].value = True  # the target refers to the full image, so show it
            ui["slider"].value = res["rate"]
        finally:
            self._quiet = False
        self.show(res["rate"], known=known)  # the search coded the full image: "coded", not "cached"
        if res["bpp"] > target:
            ui["status"].value = (f"no rate fits: the lowest λ={res['rate']:.4g} gives {res['bpp']:.4f} bpp, "
                                  f"more than the target {target:g}, and no trained rate fits either")
        else:
            ui["status"].value = f"λ={res['rate']:.4g} gives {res['bpp']:.4f} bpp ≤ target {target:g}"
        notes = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
        if notes:
            ui["status"].value += " — note: " + notes[0]
