"""The rate slider's static picture: the same zoom crop decoded at several rates, side by side.

:func:`plot_rate_strip` draws what :meth:`lpm.slider.RateSlider.strip` returns (the slider's own real
``.lpm`` files, full resolution): one panel per rate, titled with λ, bpp and PSNR of the whole coded image,
then the original crop; a footnote names the checkpoint and its training budget. Plotting only: nothing here
codes, measures or writes files (save with :func:`lpm.figures.save_figure`)::

    strip = slider.strip(model.rates)           # codes the image at each rate, as the slider does
    fig = plot_rate_strip(strip, checkpoint="tiny-smoke", budget=budget, image="kodim01.png")
    figures.save_figure(fig, "rate_slider_strip", results_dir)
"""

from __future__ import annotations

import math
import textwrap
from typing import Any, Mapping, Optional

import numpy as np
from matplotlib.figure import Figure

__all__ = ["plot_rate_strip", "rate_strip_footnote"]


def _is_smoke(checkpoint: str, budget: str) -> bool:
    return "smoke" in f"{checkpoint} {budget}".lower()


def rate_strip_footnote(strip: Mapping[str, Any], *, checkpoint: str, budget: str, image: str = "") -> str:
    """The footnote of :func:`plot_rate_strip`: checkpoint and budget (a smoke checkpoint said so first),
    image, crop and how the numbers are measured."""
    zy, zx, zs = strip["zoom"]
    smoke = ("a tiny SMOKE checkpoint (minutes of CPU training), NOT the paper's model: its numbers only show "
             "the slider working. " if _is_smoke(checkpoint, budget) else "")
    img = f"Image {image}, " if image else "Image "
    return (f"Checkpoint {checkpoint}: {smoke}Training budget: {budget}.\n"
            f"{img}coded at {strip['width']}×{strip['height']}; crops {zs}×{zs} px at (y={zy}, x={zx}), enlarged "
            "without interpolation. bpp = 8·bytes of the whole .lpm file (header and CRC included) / pixels of the "
            "whole coded image; PSNR of the whole decoded 8-bit image — the numbers the slider shows.")


def plot_rate_strip(strip: Mapping[str, Any], *, checkpoint: str, budget: str, image: str = "",
                    base_rate: Optional[float] = None, title: Optional[str] = None,
                    footnote: Optional[str] = None, panel_inches: float = 1.75) -> Figure:
    """Decoded zoom crops at each rate side by side, then the original crop.

    Args:
        strip: from :meth:`lpm.slider.RateSlider.strip`: ``panels`` (dicts with ``crop`` ``(s, s, 3)`` uint8,
            ``rate``, ``bpp``, ``psnr``, ``trained``), ``original`` (the source crop), ``zoom``, ``height``,
            ``width``.
        checkpoint, budget: name and training-budget string of the checkpoint (in the footnote; a smoke
            checkpoint is also named so in the title).
        image: the image's name, for the footnote.
        base_rate: marks the base model's rate ("base") in its panel title.
        title, footnote: replace the default title / footnote (:func:`rate_strip_footnote`).
    """
    panels = sorted(strip["panels"], key=lambda p: p["rate"])
    crops = [np.asarray(p["crop"]) for p in panels] + [np.asarray(strip["original"])]
    n = len(crops)
    fig = Figure(figsize=(panel_inches * n + 0.2, panel_inches + 0.65), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, crop, p in zip(axes, crops, [*panels, None]):
        ax.imshow(crop, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        if p is None:
            ax.set_title("original\n(source crop)", fontsize=8.5)
            continue
        base = base_rate is not None and math.isclose(p["rate"], base_rate, rel_tol=1e-9)
        name = f"λ = {p['rate']:.4g}" + (" (base)" if base else "")
        ax.set_title(f"{name}\n{p['bpp']:.3f} bpp · {p['psnr']:.2f} dB", fontsize=8.5)
    if title is None:
        kind = "trained rates" if all(p.get("trained") for p in panels) else "rates"
        title = (f"Rate slider, {kind} of {checkpoint}: decoded zoom (real files)"
                 + (" — tiny smoke checkpoint, not the paper's model" if _is_smoke(checkpoint, budget) else ""))
    fig.suptitle(title, fontsize=10)
    note = footnote if footnote is not None else rate_strip_footnote(strip, checkpoint=checkpoint, budget=budget,
                                                                     image=image)
    if note:
        w, h = fig.get_size_inches()
        fs = 6.5
        chars = max(60, int(w * 72 / (fs * 0.55)))
        text = "\n".join(textwrap.fill(part, chars) for part in note.split("\n"))
        need = (text.count("\n") + 1) * fs * 1.3 / 72 + 0.1
        fig.set_size_inches(w, h + need)
        fig.get_layout_engine().set(rect=(0, need / (h + need), 1, 1 - need / (h + need)))
        fig.text(0.006, 0.006, text, fontsize=fs, ha="left", va="bottom", color="0.2")
    return fig
