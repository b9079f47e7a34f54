"""Rate–distortion curves: :class:`Curve`, cached real-bitstream curves of checkpoints, classical codecs
measured live, and the published Kodak anchors.

Checkpoint curves are cached in ``results_dir/eval/`` (:func:`eval_cache_path`, CompressAI-format JSON from
:func:`lpm.eval.evaluate_codec`) and reused while the checkpoint sha256, the images and the rates match;
classical codecs likewise (``eval/classical-<codec>_<images>[_smoke].json``). Nothing here draws.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from lpm import fileformat
from lpm.figures.context import KODAK_COUNT, Checkpoint, PathLike, _safe

#: Published curves drawn by default (exact names in ``lpm/eval/anchors.csv``).
DEFAULT_ANCHORS: tuple[str, ...] = (
    "VTM",
    "BPG 8b 444 x265 ycbcr",
    "bmshj2018-hyperprior",
    "mbt2018",
    "cheng2020-attn",
    "bmshj2018-hyperprior-vbr-mse",
    "mbt2018-mean-vbr-mse",
    "SFT variable-rate (Song et al. ICCV 2021)",
    "STF (Zou et al. CVPR 2022)",
    "TCM-L (Liu et al. CVPR 2023)",
)
#: Published variable-rate methods (claim: "better RD than all variable-rate methods").
VARIABLE_RATE_ANCHORS: tuple[str, ...] = (
    "SFT variable-rate (Song et al. ICCV 2021)",
    "bmshj2018-hyperprior-vbr-mse",
    "mbt2018-mean-vbr-mse",
)
#: Published state-of-the-art fixed-rate learned codecs (claim: "approaching SOTA fixed-rate codecs").
FIXED_RATE_SOTA: tuple[str, ...] = ("STF (Zou et al. CVPR 2022)", "TCM-L (Liu et al. CVPR 2023)", "elic2022")
#: Families of the published curves (every codec of ``lpm/eval/anchors.csv``), in legend order: the RD plot
#: gives each family one line style and marker, and its members shades of one hue.
ANCHOR_GROUPS: dict[str, tuple[str, ...]] = {
    "classical": ("VTM", "HM", "BPG 8b 444 x265 ycbcr", "AV1", "JPEG2000", "WebP", "JPEG"),
    "learned, fixed-rate": ("bmshj2018-hyperprior", "mbt2018-mean", "mbt2018", "cheng2020-anchor", "cheng2020-attn",
                            "elic2022", "STF (Zou et al. CVPR 2022)", "TCM-L (Liu et al. CVPR 2023)"),
    "learned, variable-rate": VARIABLE_RATE_ANCHORS,
}


def anchor_group(name: str) -> str:
    """The family (key of :data:`ANCHOR_GROUPS`) of a published curve; unknown names count as fixed-rate."""
    return next((g for g, names in ANCHOR_GROUPS.items() if name in names), "learned, fixed-rate")


@dataclass
class Curve:
    """One RD curve: points sorted as given (``rates``: λ, or quality for classical codecs)."""

    label: str
    bpp: list[float]
    psnr: list[float]
    msssim: list[Optional[float]] = field(default_factory=list)
    kind: str = "ours"  # ours | checkpoint | separate | classical | anchor
    rates: Optional[list[float]] = None
    trained: Optional[list[bool]] = None
    source: str = ""
    budget: Optional[str] = None
    comparable: bool = True

    def subset(self, keep: Sequence[bool], label: Optional[str] = None) -> "Curve":
        idx = [i for i, k in enumerate(keep) if k]
        pick = lambda v: [v[i] for i in idx] if v else v  # noqa: E731
        return Curve(label or self.label, pick(self.bpp), pick(self.psnr), pick(self.msssim), self.kind,
                     pick(self.rates), pick(self.trained), self.source, self.budget, self.comparable)


def continuous_rates(model: Any, n: int) -> list[float]:
    """``n`` log-spaced rates across the model's range (midpoints of ``n`` equal log-λ cells, as
    ``lpm eval --continuous``), leaving out any that coincide with a trained rate."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"the number of continuous rates must be an integer 0 or more, got {n!r:.40}")
    if n == 0:
        return []
    lo, hi = (math.log(r) for r in model.rate_range)
    trained = [float(r) for r in getattr(model, "rates", [])]
    out = [math.exp(lo + (hi - lo) * (i + 0.5) / n) for i in range(n)]
    return [r for r in out if not any(math.isclose(r, t, rel_tol=1e-6) for t in trained)]


def eval_cache_path(results_dir: PathLike, label: str, images: Any, smoke: bool) -> Path:
    """``results_dir/eval/<label>_<images>[_smoke].json``: where :func:`checkpoint_curve` caches a model."""
    return Path(results_dir) / "eval" / f"{_safe(label)}_{_safe(images.name)}{'_smoke' if smoke else ''}.json"


def _cached_codec_results(path: Path, info: Mapping[str, Any], images: Any,
                          rates: Optional[Sequence[float]]) -> Optional[dict[str, Any]]:
    """The cached results at ``path`` if they are of this checkpoint, these images and ``.lpm`` format version
    and (if given) hold every rate; restricted to ``rates`` in that order."""
    from lpm.eval.rd import MEASURE_VERSION

    if not path.is_file():
        return None
    try:
        res = json.loads(path.read_text(encoding="utf-8"))
        meta, r = res["meta"], res["results"]
    except (ValueError, KeyError):
        return None
    if meta.get("checkpoint_sha256") != info.get("sha256") or meta.get("dataset") != images.name \
            or meta.get("num_images") != len(images.paths) or meta.get("lpm_format") != fileformat.FORMAT_VERSION \
            or meta.get("images_sha256") != images.sha256 or meta.get("measure") != MEASURE_VERSION:
        return None  # another checkpoint, other images (by content), .lpm format or measurement: measure again
    if rates is None:
        return res
    idx = []
    for rate in rates:
        hit = [i for i, c in enumerate(r["rate"]) if math.isclose(c, rate, rel_tol=1e-9)]
        if not hit:
            return None
        idx.append(hit[0])
    res["results"] = {k: [v[i] for i in idx] for k, v in r.items() if isinstance(v, list) and len(v) == len(r["rate"])}
    return res


def codec_results(model: Any, info: Mapping[str, Any], label: str, images: Any, results_dir: PathLike,
                  rates: Optional[Sequence[float]], *, smoke: bool = False, recompute: bool = False,
                  compute: bool = True, device: str = "cpu", log: Callable[[str], None] = print) -> Optional[dict]:
    """Real-bitstream results of one model on ``images`` at ``rates``: from the cache
    (:func:`eval_cache_path`) when it matches, else measured with :func:`lpm.eval.evaluate_codec` (which
    resumes from its per-image CSV; ``recompute`` deletes both first). ``compute=False``: cache or ``None``."""
    from lpm.eval import evaluate_codec

    path = eval_cache_path(results_dir, label, images, smoke)
    if not recompute:
        hit = _cached_codec_results(path, info, images, rates)
        if hit is not None or not compute:
            if hit is not None:
                log(f"{label}: cached results {path}")
            return hit
    if not compute:
        return None
    if rates is None:
        raise ValueError("rates are needed to compute results")
    if recompute:
        for p in (path, path.with_name(path.stem + "_per_image.csv")):
            p.unlink(missing_ok=True)
    t0 = time.perf_counter()
    manifest = images.manifest if (images.name == "kodak" and len(images.paths) == KODAK_COUNT) else None
    common = dict(checkpoint_info=dict(info), out_dir=path.parent, name=path.stem, dataset_name=images.name,
                  manifest=manifest, device=device)
    for i, rate in enumerate(rates, 1):  # one line per rate as it finishes (the batch streams printed lines)
        t1 = time.perf_counter()
        r = evaluate_codec(model, list(images.paths), [rate], progress=True, **common)["results"]
        log(f"{label}: rate {i}/{len(rates)} λ={rate:.5g}: {r['bpp'][0]:.4f} bpp, {r['psnr-rgb'][0]:.2f} dB "
            f"({len(images.paths)} image(s), {time.perf_counter() - t1:.1f} s)")
    # all rates together from the per-image CSV just written (no coding): the JSON with every rate
    res = evaluate_codec(model, list(images.paths), rates, progress=False, **common)
    log(f"{label}: measured {len(rates)} rate(s) x {len(images.paths)} image(s) in {time.perf_counter() - t0:.1f} s "
        f"-> {path}")
    return res


def checkpoint_curve(ckpt: Checkpoint, images: Any, results_dir: PathLike, *, kind: str = "checkpoint",
                     rates: Optional[Sequence[float]] = None, trained: Optional[Sequence[float]] = None,
                     smoke: bool = False, recompute: bool = False, compute: bool = True, device: str = "cpu",
                     log: Callable[[str], None] = print) -> Optional[Curve]:
    """A checkpoint's RD curve on ``images`` (cached, see :func:`codec_results`). Default rates: its trained
    ladder (one point per file for a folder of separate models). ``trained``: which rates count as trained
    (flags in the curve). ``compute=False`` returns ``None`` when anything is not cached."""
    parts = []
    for model, info in ckpt.models:
        lab = ckpt.label if len(ckpt.models) == 1 else f"{ckpt.label}_{Path(str(info.get('path', ''))).stem}"
        rs = list(rates) if rates is not None and len(ckpt.models) == 1 else \
            [float(r) for r in getattr(model, "rates", None) or [info.get("base_rate")]]
        res = codec_results(model, info, lab, images, results_dir, rs if compute or rates is not None else None,
                            smoke=smoke, recompute=recompute, compute=compute, device=device, log=log)
        if res is None:
            return None
        parts.append(res["results"])
    bpp, psnr_, ms, rr = [], [], [], []
    for r in parts:
        bpp += r["bpp"]
        psnr_ += r["psnr-rgb"]
        ms += r["ms-ssim-rgb"]
        rr += r["rate"]
    order = np.argsort(rr, kind="stable") if ckpt.separate else np.arange(len(rr))
    pick = lambda v: [v[i] for i in order]  # noqa: E731
    tr_set = [float(t) for t in (trained if trained is not None else getattr(ckpt.model, "rates", []) or [])]
    flags = [any(math.isclose(r, t, rel_tol=1e-9) for t in tr_set) or ckpt.separate for r in pick(rr)]
    return Curve(ckpt.label, pick(bpp), pick(psnr_), pick(ms), "separate" if ckpt.separate else kind,
                 pick(rr), flags, source=_method_title(ckpt), budget=ckpt.budget)


def _method_title(ckpt: Any) -> str:
    """The variable-rate method of a checkpoint as the comparison names it ("LPM prompt modules", "… + latent
    gain", …), for legends; "" for anything that is not one (a bare base)."""
    from lpm.eval.compare import method_of

    try:
        return method_of(ckpt).title
    except ValueError:
        return ""


def _smoke_qualities(qualities: Sequence[float]) -> list[float]:
    q = list(qualities)
    return sorted({q[1 if len(q) > 3 else 0], q[len(q) // 2], q[-2 if len(q) > 3 else -1]})


def classical_curve(codec: str, images: Any, results_dir: PathLike, *, qualities: Optional[Sequence[float]] = None,
                    smoke: bool = False, recompute: bool = False,
                    log: Callable[[str], None] = print) -> Curve:
    """A classical codec measured live on ``images`` (cached as ``eval/classical-<codec>_<images>[_smoke].json``).
    Default sweep: the codec's own (3 qualities of it with ``smoke``)."""
    from lpm.eval import CLASSICAL_CODECS, evaluate_classical, save_results_json
    from lpm.eval.classical import CLASSICAL_SETTINGS, classical_library_version, imagecodecs, lookup_spec

    spec = lookup_spec(codec)
    if spec.name not in CLASSICAL_CODECS:
        from lpm.eval import UNAVAILABLE_CODECS

        raise RuntimeError(f"{spec.name} unavailable: {UNAVAILABLE_CODECS.get(spec.name)}")
    qs = list(qualities) if qualities is not None else list(CLASSICAL_CODECS[spec.name].qualities)
    if smoke and qualities is None:
        qs = _smoke_qualities(qs)
    qs = sorted(float(q) for q in qs)
    path = Path(results_dir) / "eval" / f"classical-{spec.name}_{_safe(images.name)}{'_smoke' if smoke else ''}.json"
    names = [Path(p).name for p in images.paths]
    res = None
    if path.is_file() and not recompute:
        try:
            cand = json.loads(path.read_text(encoding="utf-8"))
            if cand["meta"]["images"] == names and cand["meta"].get("images_sha256") == images.sha256 \
                    and [float(q) for q in cand["results"]["quality"]] == qs:
                libs = {"imagecodecs": imagecodecs.__version__, "codec_library": classical_library_version(spec.name)}
                if all(cand["meta"].get(k) == v for k, v in libs.items()):
                    res = cand
                    log(f"{spec.title}: cached results {path}")
                else:  # another encoder build makes other bytes: measure again rather than show the old ones
                    was = ", ".join(f"{k} {cand['meta'].get(k)}" for k in libs)
                    log(f"{spec.title}: cached results {path} were measured with {was}; measuring again")
        except (ValueError, KeyError, TypeError):
            res = None
    if res is None:
        t0 = time.perf_counter()
        res = evaluate_classical(spec.name, list(images.paths), qs, progress=False)
        save_results_json(res, path)
        log(f"{spec.title}: measured {len(qs)} qualities x {len(names)} image(s) in {time.perf_counter() - t0:.1f} s -> {path}")
    r = res["results"]
    return Curve(CLASSICAL_SETTINGS[spec.name]["title"] + " (measured)", r["bpp"], r["psnr-rgb"], r["ms-ssim-rgb"],
                 "classical", r["quality"], source=res.get("description", ""))


def classical_curves(names: Sequence[str], images: Any, results_dir: PathLike, *, smoke: bool = False,
                     recompute: bool = False, log: Callable[[str], None] = print) -> tuple[list[Curve], dict[str, str]]:
    """:func:`classical_curve` for each available codec in ``names``; also ``{name: reason}`` for those this
    imagecodecs build lacks (they are skipped, not an error)."""
    from lpm.eval import CLASSICAL_CODECS, UNAVAILABLE_CODECS
    from lpm.eval.classical import lookup_spec

    curves, skipped = [], {}
    for name in names:
        key = lookup_spec(name).name
        if key not in CLASSICAL_CODECS:
            skipped[key] = UNAVAILABLE_CODECS.get(key, "unavailable")
            log(f"{key}: skipped ({skipped[key]})")
            continue
        curves.append(classical_curve(key, images, results_dir, smoke=smoke, recompute=recompute, log=log))
    return curves, skipped


def ours_rates(model: Any, n_continuous: int = 0) -> list[float]:
    """The trained rates of ``model`` plus ``n_continuous`` continuous ones (:func:`continuous_rates`), sorted."""
    return sorted(set(float(r) for r in model.rates) | set(continuous_rates(model, n_continuous)))


def anchor_curves(names: Optional[Sequence[str]] = None, comparable: bool = True) -> list[Curve]:
    """Published Kodak curves (:func:`lpm.eval.load_anchors`), with their sources; ``comparable`` says
    whether the images they are compared with are all of Kodak."""
    from lpm.eval import anchor_codecs, load_anchors

    if names is not None and not isinstance(names, (list, tuple)):
        raise ValueError(f"ANCHORS must be None (the default anchors) or a list of anchor names, got {names!r:.60}; "
                         f"known: {anchor_codecs()}")
    out = []
    for name in (names if names is not None else DEFAULT_ANCHORS):
        if name not in anchor_codecs():
            raise ValueError(f"unknown anchor {name!r}; known: {anchor_codecs()}")
        df = load_anchors(name)
        out.append(Curve(name, df["bpp"].tolist(), df["psnr_rgb"].tolist(),
                         [None if not math.isfinite(v) else float(v) for v in df["ms_ssim_rgb"]],
                         "anchor", source="; ".join(dict.fromkeys(df["source"])), comparable=comparable))
    return out
