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
nothing. The target-bpp box searches, with :func:`lpm.models.find_rate` (bisection in log λ), the largest
rate whose full-resolution *file* fits the target.

:meth:`RateSlider.code_at` is plain Python (no widgets), used by the widget and by the tests; the
ipywidgets UI is built lazily by :meth:`RateSlider.widget` and also by ``display(slider)``.
"""

from __future__ import annotations

import html
import math
import time
from typing import Any, Optional

import imagecodecs
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lpm import fileformat
from lpm.codec import decode_image, encode_image
from lpm.data import ImageInfo, to_uint8
from lpm.eval.metrics import psnr as psnr_8bit
from lpm.models import PromptedCodec, find_rate

__all__ = ["RateSlider", "center_crop", "round_rate", "RATE_DIGITS"]

#: Significant digits a rate is rounded to before coding (the cache key; the coded rate is the rounded one).
RATE_DIGITS = 4
#: Side in pixels of the zoomed crop as displayed (nearest-neighbour enlargement by an integer factor).
ZOOM_DISPLAY = 288


def round_rate(rate: float, digits: int = RATE_DIGITS) -> float:
    """``rate`` rounded to ``digits`` significant digits (the slider's cache key and the rate actually coded)."""
    return float(f"{float(rate):.{digits}g}")


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
        self.initial_rate = float(model.base_rate if rate is None else rate)
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

        self._cache: dict[tuple[float, str], dict[str, Any]] = {}
        self._sizes: dict[tuple[float, str], int] = {}  # file bytes of rates measured by the target search only
        self._ui: Optional[dict[str, Any]] = None
        self._box: Any = None
        self._quiet = False  # set while the code itself changes widget values (observers then do nothing)

    # ------------------------------------------------------------------------------------------ pure Python
    def _kind(self, full: bool) -> str:
        return "full" if (full or self.preview_is_full) else "preview"

    def _check_rate(self, rate: float) -> float:
        """The codec's own rate check, then rounded to :data:`RATE_DIGITS` digits (kept in range)."""
        lo, hi = self.rate_range
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
            return hit
        x, info, ref, (zy, zx, zs) = self._sources[kind]
        t0 = time.perf_counter()
        data = self._stream(rate, kind)
        x_hat, _ = decode_image(self.model, self.model_id, fileformat.decode(data))
        seconds = time.perf_counter() - t0
        dec = to_uint8(x_hat)
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
        self._sizes[key] = len(data)
        return result

    def file_bytes(self, rate: float, full: bool = True) -> int:
        """Length of the ``.lpm`` file at ``rate`` (rounded), encoding only (no decode) unless already cached."""
        rate = self._check_rate(rate)
        key = (rate, self._kind(full))
        if key not in self._sizes:
            self._sizes[key] = len(self._stream(rate, key[1]))
        return self._sizes[key]

    def find_rate_for_bpp(self, target_bpp: float, full: bool = True) -> dict[str, Any]:
        """The largest (rounded) rate whose real file fits ``target_bpp``, coded with :meth:`code_at`.

        Bisection in log λ (:func:`lpm.models.find_rate`) over rounded rates, so the returned result's
        ``bpp`` is the measured one. If even the lowest rate is over the target, the lowest rate's result is
        returned (its ``bpp`` then exceeds the target; the widget says so).
        """
        if not (math.isfinite(target_bpp) and target_bpp > 0):
            raise ValueError(f"target bpp must be a positive number, got {target_bpp}")
        _, info, _, _ = self._sources[self._kind(full)]
        npix = info.height * info.width

        def measure(r: float) -> float:
            return 8.0 * self.file_bytes(r, full) / npix

        rate, _ = find_rate(measure, float(target_bpp), self.rate_range)
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
            layout=w.Layout(width="520px"),
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
        find = w.Button(description="find rate", tooltip="largest λ whose full-resolution file fits the target")
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
        image = w.Image(format="png", width=str(display_w), layout=w.Layout(height="auto", object_fit="contain"))
        image.add_class("lpm-decoded")
        zoom = w.Image(format="png")
        zoom.add_class("lpm-zoom")
        zoom_ref = w.Image(format="png")
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
        zoom_box = w.VBox([
            w.HTML(f"<small>zoom: {zs}×{zs} px at (y={zy}, x={zx}), decoded | original</small>"),
            w.HBox([zoom, zoom_ref]),
        ])
        self._ui = dict(slider=slider, full=full, target=target, find=find, shown=shown, status=status,
                        image=image, zoom=zoom, zoom_ref=zoom_ref)
        slider.observe(lambda ch: self._quiet or self._safely(self.show, ch["new"]), names="value")
        full.observe(lambda ch: self._quiet or self._safely(self.show), names="value")
        find.on_click(lambda _b: self._safely(self._on_find))
        self._box = w.VBox([
            w.HBox([slider, full]),
            w.HBox([target, find, w.HTML("<small>&nbsp;trained λ:</small>"), *jumps]),
            shown,
            status,
            w.HBox([image, zoom_box], layout=w.Layout(align_items="flex-start")),
            footer,
        ])
        self._box.add_class("lpm-rate-slider-box")

    def _safely(self, fn, *args) -> None:
        """Run a UI callback; errors go to the status line instead of the (hidden) widget log."""
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 - shown to the user
            if self._ui is not None:
                self._ui["status"].value = f"<span style='color:#b00'>error: {html.escape(str(e))}</span>"

    def _render(self, res: dict[str, Any]) -> None:
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
            f"<small>(coded in {res['seconds']:.2f} s)</small></div>"
        )
        ui["image"].value = res["png_bytes"]
        ui["zoom"].value = res["zoom_png"]
        ui["zoom_ref"].value = _png(_enlarge(ref[zy : zy + zs, zx : zx + zs]))

    def show(self, rate: Optional[float] = None) -> dict[str, Any]:
        """Code and display ``rate`` (default: the slider's): the preview first, then, if the toggle is on,
        the full-resolution image. Returns the result shown last."""
        if self._box is None:
            self._build()
        ui = self._ui
        rate = ui["slider"].value if rate is None else rate
        want_full = bool(ui["full"].value)
        ui["status"].value = "coding preview…" if not self.preview_is_full else "coding…"
        res = self.code_at(rate, full=False)
        self._render(res)
        if want_full and not res["full"]:
            ui["status"].value = "preview shown; coding the full-resolution image…"
            res = self.code_at(rate, full=True)
            self._render(res)
        ui["status"].value = ""
        return res

    def _on_find(self) -> None:
        ui = self._ui
        target = float(ui["target"].value)
        ui["status"].value = f"searching the largest λ whose full-resolution file fits {target:g} bpp…"
        res = self.find_rate_for_bpp(target, full=True)
        self._quiet = True
        try:
            ui["full"].value = True  # the target refers to the full image, so show it
            ui["slider"].value = res["rate"]
        finally:
            self._quiet = False
        self.show(res["rate"])  # cached: the search coded the full image at this rate
        if res["bpp"] > target:
            ui["status"].value = (f"even the lowest rate λ={res['rate']:.4g} gives {res['bpp']:.4f} bpp, "
                                  f"more than the target {target:g}")
        else:
            ui["status"].value = f"λ={res['rate']:.4g} gives {res['bpp']:.4f} bpp ≤ target {target:g}"
