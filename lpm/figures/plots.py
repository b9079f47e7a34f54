"""Plotting, and only plotting: every function takes numbers (curves, maps, tables) and returns a
:class:`matplotlib.figure.Figure` with a title and a footnote (checkpoint, training budget, images), ready for
:func:`lpm.figures.save_figure`. Nothing here measures, caches or writes files.
"""

from __future__ import annotations

import math
import textwrap
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from lpm.figures.curves import Curve, anchor_group
from lpm.figures.tables import _crop_map

# =========================================================================================== common: title, footnote
def _wrap(text: str, width_in: float, fontsize: float) -> str:
    chars = max(40, int(width_in * 72 / (fontsize * 0.6)))
    return "\n".join(textwrap.fill(part, chars) for part in text.split("\n"))


def _finish(fig: Figure, title: Optional[str], footnote: Optional[str], *, fontsize: float = 7.0) -> Figure:
    """Title on top; the footnote (checkpoint, budget, images) wrapped under the axes, with room made for it
    by growing the figure and shrinking the constrained-layout area."""
    if title:
        fig.suptitle(title, fontsize=11)
    if footnote:
        w, h = fig.get_size_inches()
        text = _wrap(footnote, w, fontsize)
        n = text.count("\n") + 1
        need = n * fontsize * 1.3 / 72 + 0.12
        fig.set_size_inches(w, h + need)
        frac = need / (h + need)
        engine = fig.get_layout_engine()
        if engine is not None and hasattr(engine, "set"):
            try:
                engine.set(rect=(0, frac, 1, 1 - frac))
            except TypeError:
                pass
        fig.text(0.006, 0.006, text, fontsize=fontsize, ha="left", va="bottom", color="0.2")
    return fig


# =========================================================================================== rate–distortion
def _msssim_db(values: Sequence[Optional[float]]) -> list[float]:
    out = []
    for v in values:
        out.append(-10.0 * math.log10(max(1.0 - v, 1e-10)) if v is not None and math.isfinite(v) else math.nan)
    return out


_OURS_COLOR = "#d62728"
_CHECKPOINT_COLORS = ("#1f77b4", "#9467bd", "#17becf", "#8c564b")
#: Classical codecs measured here: dotted, triangles, one distinct colour each.
_CLASSICAL_COLORS = ("#8c510a", "#ff7f0e", "#bcbd22", "#e377c2", "#7b3294", "#7f7f7f")
#: Published curves: one line style, marker and colour map per family (:data:`~lpm.figures.curves.ANCHOR_GROUPS`); shades within.
_ANCHOR_FAMILY = {
    "classical": {"linestyle": (0, (7, 2)), "marker": "X", "cmap": "Greys", "shades": (0.95, 0.55)},
    "learned, fixed-rate": {"linestyle": "--", "marker": "s", "cmap": "Blues", "shades": (0.4, 0.85)},
    "learned, variable-rate": {"linestyle": "-.", "marker": "D", "cmap": "Greens", "shades": (0.45, 0.85)},
}
#: Line style of the published (anchor) curves (the family sets the dash pattern and marker).
ANCHOR_STYLE = {"linewidth": 1.1, "markersize": 3.2}
_MEASURED = "measured here (same images, real files)"


def _anchor_styles(anchors: Sequence[Curve]) -> dict[str, dict[str, Any]]:
    """Plot keywords of each published curve: its family's dash pattern and marker, a shade of its colour map."""
    from matplotlib import colormaps

    out = {}
    for group, fam in _ANCHOR_FAMILY.items():
        members = [a.label for a in anchors if anchor_group(a.label) == group]
        shades = np.linspace(*fam["shades"], max(len(members), 1)) if len(members) > 1 else [fam["shades"][0]]
        for name, s in zip(members, shades):
            out[name] = {"linestyle": fam["linestyle"], "marker": fam["marker"], "color": colormaps[fam["cmap"]](s),
                         **ANCHOR_STYLE}
    return out


_LEGEND_FONTSIZE = 7.5


def _legend_rows(groups: Mapping[str, list[tuple[Any, str]]]) -> int:
    return max([len(items) + 1 for items in groups.values() if items] or [0])


def _grouped_legend(ax: Any, groups: Mapping[str, list[tuple[Any, str]]], title: Optional[str] = None,
                    title_color: str = "0.2") -> None:
    """On the (blank) axes ``ax``: one legend column per group, its name in bold on top; ``title`` above."""
    from matplotlib.lines import Line2D

    ax.axis("off")
    groups = {g: items for g, items in groups.items() if items}
    if not groups:
        return
    rows = _legend_rows(groups)
    blank = Line2D([], [], linestyle="none")
    handles, labels, heads = [], [], []
    for g, items in groups.items():
        column = [(blank, g)] + list(items)
        column += [(blank, "")] * (rows - len(column))
        heads.append(g)
        handles += [h for h, _ in column]
        labels += [lb for _, lb in column]
    leg = ax.legend(handles, labels, loc="upper center", ncol=len(groups), fontsize=_LEGEND_FONTSIZE, frameon=False,
                    handlelength=3.0, columnspacing=1.6, handletextpad=0.6, borderaxespad=0.0, title=title,
                    title_fontsize=_LEGEND_FONTSIZE + 0.5)
    if title:
        leg.get_title().set_color(title_color)
    for text, lb in zip(leg.get_texts(), labels):
        if lb in heads:
            text.set_fontweight("bold")


#: Where a λ label may go around its point (offsets in points), in order of preference.
_LABEL_OFFSETS = ((0, 8), (0, -9), (10, 0), (-10, 0), (9, 8), (9, -9), (-9, 8), (-9, -9), (0, 18), (0, -20),
                  (20, 10), (-20, 10), (20, -12), (-20, -12))


def _label_rates(fig: Figure, ax: Any, x: np.ndarray, y: np.ndarray, rates: Sequence[float],
                 trained: np.ndarray) -> None:
    """λ next to each of our points (trained rates bold dark red, continuous ones grey): each label takes the
    first place around its point that overlaps no point and no earlier label (after a layout pass)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    fig.canvas.draw()  # final axes positions, so that display coordinates are right
    to_pt = 72.0 / fig.dpi
    xy = ax.transData.transform(np.column_stack([x, y])) * to_pt  # points
    boxes = [(px - 4, py - 4, px + 4, py + 4) for px, py in xy]  # the markers
    for (px, py), r, tr in zip(xy, rates, trained):
        text = f"λ={r:.3g}" if tr else f"{r:.3g}"
        size = 7.5 if tr else 6.5
        w, h = 0.62 * size * len(text), 1.15 * size
        choice = _LABEL_OFFSETS[0]
        for dx, dy in _LABEL_OFFSETS:
            cx = px + dx + (0 if dx == 0 else (w / 2 if dx > 0 else -w / 2))
            cy = py + dy + (0 if dy == 0 else (h / 2 if dy > 0 else -h / 2))
            box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in boxes):
                choice = (dx, dy)
                boxes.append(box)
                break
        dx, dy = choice
        far = abs(dx) + abs(dy) > 18
        ax.annotate(text, ax.transData.inverted().transform((px / to_pt, py / to_pt)), xytext=choice,
                    textcoords="offset points", ha="center" if dx == 0 else ("left" if dx > 0 else "right"),
                    va="center" if dy == 0 else ("bottom" if dy > 0 else "top"), fontsize=size,
                    color="#7f0000" if tr else "0.3", fontweight="bold" if tr else "normal", zorder=8,
                    bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.75},
                    arrowprops={"arrowstyle": "-", "color": "0.5", "lw": 0.6} if far else None)


def _finite_xy(c: Curve, yof: Any, skipped: list[str]) -> Optional[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``(bpp, y, finite mask)`` of a curve, or ``None`` (its label added to ``skipped``) when no y is finite."""
    y = np.array(yof(c), dtype=float)
    if not np.isfinite(y).any():
        skipped.append(c.label)
        return None
    return np.array(c.bpp, dtype=float), y, np.isfinite(y)


def plot_rd(curves: Sequence[Curve], anchors: Sequence[Curve] = (), metric: str = "psnr",
            title: Optional[str] = None, footnote: Optional[str] = None, *, xlim: Optional[tuple[float, float]] = None,
            anchor_note: Optional[str] = None, zoom: bool = True) -> Figure:
    """Rate–distortion plot: bpp against PSNR-RGB (``metric="psnr"``) or MS-SSIM-RGB in dB
    (``"ms-ssim"``: −10·log10(1−MS-SSIM)).

    Left, everything: ours a thick red line (in λ order) with filled circles at trained rates and open
    diamonds at continuous rates; other checkpoints solid with squares; classical codecs measured here dotted
    with triangles; published curves by family (:data:`~lpm.figures.curves.ANCHOR_GROUPS`: classical long dashes and crosses in
    greys, learned fixed-rate dashes and squares in blues, learned variable-rate dash-dots and diamonds in
    greens), faded and marked "NOT comparable" when their ``comparable`` is False. The x range stops at
    max(1 bpp, 1.25 × the largest learned-codec bpp) unless ``xlim`` is given. Right (``zoom``, when ours is
    drawn): the region around our points, outlined on the left, with every point's λ. Below: the legend,
    one column per family."""
    if metric not in ("psnr", "ms-ssim"):
        raise ValueError("metric must be 'psnr' or 'ms-ssim'")
    ylabel = "PSNR-RGB [dB]" if metric == "psnr" else "MS-SSIM-RGB [dB]  (−10·log10(1 − MS-SSIM))"
    yof = (lambda c: list(map(float, c.psnr))) if metric == "psnr" else (lambda c: _msssim_db(c.msssim or [None] * len(c.bpp)))
    for c in curves:
        if c.kind not in ("ours", "checkpoint", "separate", "classical"):
            raise ValueError(f"curve {c.label!r}: kind {c.kind!r} belongs in anchors, not curves")
    ours = next((c for c in curves if c.kind == "ours" and np.isfinite(yof(c)).any()), None)
    fig = Figure(figsize=(12.0, 5.0), layout="constrained")
    ax, axz = fig.add_subplot(1, 1, 1), None
    any_incomparable = any(not a.comparable for a in anchors)
    groups: dict[str, list[tuple[Any, str]]] = {_MEASURED: []}
    groups.update({f"published, {g}": [] for g in _ANCHOR_FAMILY})
    published = list(groups)[1:]
    drawn: list[tuple[np.ndarray, np.ndarray, dict[str, Any]]] = []  # replayed in the zoom panel
    skipped, xs_learned, pts = [], [], []

    def draw(x: np.ndarray, y: np.ndarray, group: Optional[str], label: str, **kw: Any) -> None:
        (h,) = ax.plot(x, y, **kw)
        drawn.append((x, y, kw))
        if group is not None:
            groups[group].append((h, label))

    n_ck = n_cl = 0
    ours_pts = None
    for c in curves:
        if (got := _finite_xy(c, yof, skipped)) is None:
            continue
        x, y, ok = got
        if c.kind in ("ours", "checkpoint", "separate"):
            xs_learned += list(x[ok])
        pts += list(zip(x[ok], y[ok]))
        if c.kind == "ours":
            rates = np.array(c.rates if c.rates is not None else np.arange(len(x)), dtype=float)
            order = np.argsort(rates[ok], kind="stable")
            tr = np.array(c.trained if c.trained is not None else [True] * len(x), dtype=bool)
            what = f"ours: {c.source}" if c.source else "ours"
            draw(x[ok][order], y[ok][order], _MEASURED, f"{c.label} ({what}), in λ order", color=_OURS_COLOR,
                 lw=2.2, zorder=5)
            draw(x[ok & tr], y[ok & tr], _MEASURED, "  ours at trained rates", linestyle="none", marker="o",
                 color=_OURS_COLOR, ms=6.5, zorder=6)
            if (ok & ~tr).any():
                draw(x[ok & ~tr], y[ok & ~tr], _MEASURED, "  ours at continuous (interpolated) rates",
                     linestyle="none", marker="D", mfc="white", mec=_OURS_COLOR, ms=4.5, zorder=6)
            if c is ours:
                ours_pts = (x[ok][order], y[ok][order], rates[ok][order], tr[ok][order])
        elif c.kind in ("checkpoint", "separate"):
            col = _CHECKPOINT_COLORS[n_ck % len(_CHECKPOINT_COLORS)]
            n_ck += 1
            order = np.argsort(x[ok])
            lab = f"{c.label} ({'separate models' if c.kind == 'separate' else c.source or 'checkpoint'})"
            draw(x[ok][order], y[ok][order], _MEASURED, lab, linestyle="-", marker="s", color=col, lw=1.6, ms=4.5,
                 zorder=4)
        else:
            col = _CLASSICAL_COLORS[n_cl % len(_CLASSICAL_COLORS)]
            n_cl += 1
            order = np.argsort(x[ok])
            draw(x[ok][order], y[ok][order], _MEASURED, c.label, linestyle=":", marker="^", color=col, lw=1.5,
                 ms=3.8, zorder=3)
    styles = _anchor_styles(anchors)
    for a in anchors:
        if (got := _finite_xy(a, yof, skipped)) is None:
            continue
        x, y, ok = got
        group = published[list(_ANCHOR_FAMILY).index(anchor_group(a.label))]
        draw(x[ok], y[ok], group, a.label, alpha=0.9 if a.comparable else 0.45, zorder=2, **styles[a.label])
        pts += list(zip(x[ok], y[ok]))
    if xlim is None:
        top = max([1.0] + [1.25 * v for v in xs_learned])
        if pts:
            top = min(top, 1.05 * max(p[0] for p in pts))
        xlim = (0.0, top)
    ax.set_xlim(*xlim)
    vis = [p[1] for p in pts if xlim[0] <= p[0] <= xlim[1]]
    if vis:
        lo, hi = min(vis), max(vis)
        pad = 0.04 * (hi - lo) + 0.3
        ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlabel("bits per pixel (learned codecs: whole .lpm file incl. header + CRC; classical: whole file)")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    notes = []
    if anchor_note:
        notes.append(anchor_note)
    if skipped:
        notes.append("not drawn (no " + ("PSNR" if metric == "psnr" else "MS-SSIM") + "): " + ", ".join(skipped))
    if notes:
        ax.set_title("\n".join(textwrap.fill(n, 90) for n in notes), fontsize=8,
                     color="#a50f15" if any_incomparable else "0.25")
    # layout: [main | zoom] above, the grouped legend below (its height from its rows)
    leg_h = (_legend_rows(groups) + 1.3) * _LEGEND_FONTSIZE * 1.45 / 72 + 0.15
    w, h = fig.get_size_inches()
    fig.set_size_inches(w, h + leg_h)
    zoomed = zoom and ours_pts is not None
    gs = fig.add_gridspec(2, 2 if zoomed else 1, width_ratios=[1.75, 1.0] if zoomed else None,
                          height_ratios=[h, leg_h])
    ax.set_subplotspec(gs[0, 0])
    if zoomed:
        axz = fig.add_subplot(gs[0, 1])
    _grouped_legend(fig.add_subplot(gs[1, :]), groups, title=(
        "published curves: means over the 24 Kodak images (sources: table rd_anchor_sources)"
        + (" — NOT comparable with the images measured here" if any_incomparable else "")) if anchors else None,
        title_color="#a50f15" if any_incomparable else "0.2")
    if axz is not None and ours_pts is not None:
        zx, zy, zr, ztr = ours_pts
        dx = max(float(np.ptp(zx)), 0.02 * max(float(zx.max()), 1e-3))
        dy = max(float(np.ptp(zy)), 0.05)
        box = (float(zx.min()) - 0.15 * dx, float(zx.max()) + 0.15 * dx, float(zy.min()) - 0.35 * dy,
               float(zy.max()) + 0.35 * dy)
        for x, y, kw in drawn:
            axz.plot(x, y, **kw)
        axz.set_xlim(box[0], box[1])
        axz.set_ylim(box[2], box[3])
        axz.xaxis.set_major_locator(MaxNLocator(4))  # a narrow bpp span: default ticks ran into one string
        axz.yaxis.set_major_locator(MaxNLocator(6))
        axz.grid(True, alpha=0.3)
        axz.set_xlabel("bits per pixel")
        axz.set_ylabel(ylabel.split("  ")[0])
        axz.set_title(f"zoom on ours ({ours.label}): λ at each point\n(bold: trained rates; grey: continuous)",
                      fontsize=8.5, color="0.25")
        ax.add_patch(Rectangle((box[0], box[2]), box[1] - box[0], box[3] - box[2], fill=False, ec=_OURS_COLOR,
                               lw=1.0, zorder=7))
        ax.annotate("zoom: right panel →", (box[1], box[3]), xytext=(6, 4), textcoords="offset points",
                    fontsize=7.5, color=_OURS_COLOR, ha="left", va="bottom", zorder=7)
        _finish(fig, title, footnote)
        _label_rates(fig, axz, zx, zy, zr, ztr)
        return fig
    return _finish(fig, title, footnote)


# =========================================================================================== attention maps
def _image_hwc(image: Any) -> np.ndarray:
    """(3, H, W) / (1, 3, H, W) tensor in [0, 1] (a tensor is always channels first, as the codec takes it), or
    (H, W, 3) array → (H, W, 3) float in [0, 1]. (Guessing the layout from the shape drew a 2×3 or 300×1
    tensor image wrongly.)"""
    tensor = hasattr(image, "detach")
    arr = image.detach().cpu().numpy() if tensor else np.asarray(image)
    if arr.ndim == 4:
        arr = arr[0]
    if arr.ndim == 3 and (tensor or (arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3))):
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    arr = arr.astype(np.float64)
    if arr.max() > 1.5:
        arr = arr / 255.0
    return np.clip(arr, 0, 1)


def _rate_title(rate: float, base_rate: Optional[float]) -> str:
    return f"λ = {rate:.4g}" + (" (base)" if base_rate is not None and math.isclose(rate, base_rate, rel_tol=1e-9) else "")


def _panel_size(img: np.ndarray, width: float = 2.1) -> tuple[float, float]:
    h, w = img.shape[:2]
    return width, width * h / w


def plot_attention(image: Any, maps: Sequence[Mapping[str, Any]], *, base_rate: Optional[float] = None,
                   title: Optional[str] = None, footnote: Optional[str] = None) -> Figure:
    """The image next to two rows of maps across rates (from :func:`lpm.eval.attention_maps`, one dict per
    rate, same layer): attention mass on the prompt tokens, and the attention shift (total variation between
    the base's and the prompted model's attention over image keys). Each row shares one colour scale."""
    if not maps:
        raise ValueError("plot_attention needs the maps of at least one rate (lpm.eval.attention_maps)")
    img = _image_hwc(image)
    n = len(maps)
    pw, ph = _panel_size(img)
    fig = Figure(figsize=(pw * (n + 1) + 1.0, 2 * ph + 0.9), layout="constrained")
    axes = fig.subplots(2, n + 1, squeeze=False)
    m0 = maps[0]
    axes[0, 0].imshow(img)
    axes[0, 0].set_title("image", fontsize=9)
    info = (f"layer {m0['layer']}\n{m0['resolution'][0]}×{m0['resolution'][1]} tokens, stride {m0['stride']}\n"
            f"window {m0['window']}, shift {m0['window_shift']}\n{m0['num_prompt_tokens']} prompt tokens/window\n\n"
            "row 1: attention on prompt\ntokens (mean over heads)\nrow 2: attention shift = TV\n"
            "distance to the base's\nattention over image keys")
    axes[1, 0].text(0.0, 0.98, info, fontsize=7.2, va="top", ha="left", transform=axes[1, 0].transAxes)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    axes[1, 0].axis("off")
    rows = (("prompt_mass", "magma", "prompt attention mass"), ("shift", "viridis", "attention shift (TV)"))
    for r, (key, cmap, label) in enumerate(rows):
        data = [_crop_map(m, key) for m in maps]
        vmax = max(float(np.percentile(d, 99.5)) for d in data)
        vmax = vmax if vmax > 0 else 1e-6
        im = None
        for j, (m, d) in enumerate(zip(maps, data), start=1):
            h, w = d.shape
            im = axes[r, j].imshow(d, cmap=cmap, vmin=0, vmax=vmax, interpolation="nearest",
                                   extent=(0, w * m["stride"], h * m["stride"], 0))
            axes[r, j].set_xlim(0, img.shape[1])
            axes[r, j].set_ylim(img.shape[0], 0)
            mean = float(d.mean())
            axes[r, j].set_title(f"{_rate_title(m['rate'], base_rate)}\nmean "
                                 + (f"{mean:.3g}" if abs(mean) >= 1e-6 or mean == 0 else f"≈0 ({mean:.0e})"), fontsize=8)
        cb = fig.colorbar(im, ax=list(axes[r, 1:]), shrink=0.9, pad=0.01, aspect=12)
        cb.set_label(label, fontsize=8)
        cb.ax.tick_params(labelsize=7)
    return _finish(fig, title, footnote)


def plot_bit_allocation(image: Any, allocs: Sequence[Mapping[str, Any]], *, base_rate: Optional[float] = None,
                        title: Optional[str] = None, footnote: Optional[str] = None) -> Figure:
    """The image next to its bit-allocation maps across rates (from :func:`lpm.eval.bit_allocation`): bits
    per pixel from the entropy model's likelihoods of ``y`` and ``z`` (shared colour scale), with the
    estimated and the real (whole file) bpp of each rate."""
    if not allocs:
        raise ValueError("plot_bit_allocation needs the maps of at least one rate (lpm.eval.bit_allocation)")
    img = _image_hwc(image)
    n = len(allocs)
    pw, ph = _panel_size(img)
    fig = Figure(figsize=(pw * (n + 1) + 1.0, ph + 0.75), layout="constrained")
    axes = fig.subplots(1, n + 1, squeeze=False)[0]
    axes[0].imshow(img)
    axes[0].set_title("image", fontsize=9)
    data = [np.asarray(a["bpp_map"]) for a in allocs]
    vmax = max(float(np.percentile(d, 99.5)) for d in data) or 1e-6
    im = None
    for j, (a, d) in enumerate(zip(allocs, data), start=1):
        im = axes[j].imshow(d, cmap="inferno", vmin=0, vmax=vmax, interpolation="nearest")
        real = a.get("real_bpp")
        sub = f"est. {a['estimated_bpp']:.3f}" + (f" / real {real:.3f} bpp" if real is not None else " bpp")
        axes[j].set_title(f"{_rate_title(a['rate'], base_rate)}\n{sub}", fontsize=8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    cb = fig.colorbar(im, ax=list(axes[1:]), shrink=0.9, pad=0.01, aspect=12)
    cb.set_label("bits per pixel (y + z)", fontsize=8)
    cb.ax.tick_params(labelsize=7)
    return _finish(fig, title, footnote)


# =========================================================================================== savings
def _data_panel(ax: Any, s: Mapping[str, Any]) -> None:
    """Distinct training images: a separate model (hatched where assumed, not measured), the prompt modules
    (one bar for all of them), the shared base; the saving written on the prompt modules' bar."""
    assumed = str(s.get("separate_source", "")).startswith("assumed")
    where = "from the budget ledger" if s.get("source", "ledger") == "ledger" else f"rebuilt from the {s['source']}"
    ax.set_title(f"training data at the {s.get('budget_label', 'checkpoint budget')}\n({where})", fontsize=10)
    crops = lambda n: f", {n:,} crops" if n else ""  # noqa: E731
    rows = [("separate model, each" + ("\n(not trained here: assumed\non the full set, as the paper)" if assumed else
                                        crops(s.get("separate_crops"))), s["separate_images"], "0.75", "//" if assumed else None),
            (f"prompt modules, all\n{s.get('num_prompt_records', '')} together{crops(s.get('prompt_crops'))}",
             s["prompt_images"], _OURS_COLOR, None)]
    if s.get("base_images"):
        rows.append(("shared base, trained once", s["base_images"], "#1f77b4", None))
    yy = np.arange(len(rows))
    for y, (_, v, col, hatch) in zip(yy, rows):
        ax.barh(y, v, color=col if not hatch else "white", edgecolor=col if hatch else None, hatch=hatch, height=0.55)
        ax.text(v, y, f" {v:,}", va="center", fontsize=8)
    ax.set_yticks(yy, [r[0] for r in rows], fontsize=7.5)
    top = max(r[1] for r in rows)
    ax.text(s["prompt_images"] + 0.12 * top, 1, f"{s['data_percent']:.1f} % of {s['separate_images']:,} → saving "
            f"{s['saving_percent']:.1f} %\n(paper: {s.get('paper_claim_percent', 90.0):g} %)", va="center",
            fontsize=8, color="#7f0000")
    ax.set_xlim(0, top * 1.35)
    ax.set_xlabel("distinct training images")
    ax.invert_yaxis()


def plot_savings(storage: pd.DataFrame, data_saving: Optional[Mapping[str, Any]] = None, data_note: str = "", *,
                 title: Optional[str] = None, footnote: Optional[str] = None) -> Figure:
    """Left: parameter storage of one base + prompt modules against K separate models (percent of the
    separate models; base and prompts stacked), per row of :func:`storage_summary`, with the paper's
    20 % (= 80 % saving) marked. Right: distinct training images of the shared base, the prompt modules and
    a separate model (:func:`lpm.figures.training_data`: from the ledger, or rebuilt from the checkpoint's
    meta and titled with its budget, e.g. "smoke budget"), or why that is not measurable."""
    fig = Figure(figsize=(10.0, 1.9 + 0.8 * len(storage)), layout="constrained")
    ax, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.5, 1.0]})
    labels = list(storage["model"])
    yy = np.arange(len(labels))
    base = 100.0 * storage["base_params"] / storage["separate_params"]
    prm = 100.0 * storage["prompt_params"] / storage["separate_params"]
    ax.barh(yy + 0.2, [100.0] * len(yy), height=0.36, color="0.75", label="K separate models (100 %)")
    ax.barh(yy - 0.2, base, height=0.36, color="#1f77b4", label="shared base")
    ax.barh(yy - 0.2, prm, left=base, height=0.36, color=_OURS_COLOR, label="prompt modules")
    for y, b, p, s, k in zip(yy, base, prm, storage["saving_percent"], storage["K_rates"]):
        ax.text(b + p + 1.5, y - 0.2, f"{b + p:.1f} % → saving {s:.2f} %", va="center", fontsize=8)
        ax.text(101.5, y + 0.2, f"K = {k}", va="center", fontsize=8)
    ax.axvline(20.0, color="k", ls="--", lw=1)
    ax.text(20.8, 0.99, "paper: 80 % saving", fontsize=7.5, va="top", transform=ax.get_xaxis_transform())
    ax.set_yticks(yy, [textwrap.fill(str(lb), 28) for lb in labels], fontsize=8)
    ax.set_xlim(0, 118)
    ax.set_xlabel("parameters, % of K separately trained models")
    ax.set_title("parameter storage", fontsize=10)
    ax.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=3, frameon=False)
    ax.set_ylim(len(yy) - 0.5, -0.85)  # inverted, with a free band on top for the paper's mark
    if data_saving:
        _data_panel(ax2, data_saving)
    else:
        ax2.set_title("training data (prompt modules vs separate models)", fontsize=10)
        ax2.axis("off")
        ax2.text(0.02, 0.5, textwrap.fill("not measurable: " + (data_note or "no ledger"), 48) +
                 "\n\n(paper's claim: 90 % less training data)", transform=ax2.transAxes, fontsize=8.5, va="center",
                 color="#a50f15")
    return _finish(fig, title, footnote)
