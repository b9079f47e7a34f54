"""Tables (as :class:`pandas.DataFrame`) and the numbers behind them: a curve's points, the BD-rate table,
the anchors' sources, the attention-map numbers, parameter storage and training data.

Write them with :func:`lpm.figures.save_table`; draw them with :mod:`lpm.figures.plots`.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from lpm.figures.curves import Curve

# =========================================================================================== rate–distortion
def curve_table(curve: Curve) -> pd.DataFrame:
    """One row per point of a curve: λ (or quality), trained?, bpp, PSNR-RGB, MS-SSIM-RGB."""
    n = len(curve.bpp)
    return pd.DataFrame({
        "rate": curve.rates if curve.rates is not None else [None] * n,
        "trained": curve.trained if curve.trained is not None else [None] * n,
        "bpp": curve.bpp, "psnr_rgb": curve.psnr,
        "ms_ssim_rgb": curve.msssim if curve.msssim else [None] * n,
    })


def anchor_sources_table(anchors: Sequence[Curve]) -> pd.DataFrame:
    """Where each published curve comes from (keep with the numbers), with its range."""
    rows = []
    for a in anchors:
        rows.append({"codec": a.label, "points": len(a.bpp), "bpp_min": min(a.bpp), "bpp_max": max(a.bpp),
                     "psnr_min": min(a.psnr), "psnr_max": max(a.psnr),
                     "ms_ssim_given": any(m is not None for m in a.msssim), "images": "Kodak (24)",
                     "comparable_here": a.comparable, "source": a.source})
    return pd.DataFrame(rows)


def _dominated_by(test: Curve, ref: Curve) -> bool:
    """Every point of ``test`` has a point of ``ref`` with no more bits and higher PSNR."""
    return bool(test.bpp) and all(any(rb <= b and rp > p for rb, rp in zip(ref.bpp, ref.psnr))
                                  for b, p in zip(test.bpp, test.psnr))


def bd_against(ref: Curve, test: Curve, method: str = "cubic") -> tuple[Optional[float], str]:
    """BD-rate (%) of ``test`` against ``ref`` and a note; ``(None, reason)`` when it cannot be computed
    (too few points, no PSNR overlap, …) or compared (Kodak anchors against other images)."""
    from lpm.eval import bd_rate

    if ref.kind == "anchor" and not ref.comparable and test.kind != "anchor":
        return None, "not comparable: the reference is a published Kodak curve, these images are not all of Kodak"
    if test is ref:
        return 0.0, "reference itself"
    try:
        return float(bd_rate(ref.bpp, ref.psnr, test.bpp, test.psnr, method=method)), "ok"
    except ValueError as e:
        why = " ".join(str(e).split())
        if _dominated_by(test, ref):
            why += f"; every point of {test.label} is dominated by a point of {ref.label} (fewer bits, higher PSNR)"
        elif _dominated_by(ref, test):
            why += f"; every point of {ref.label} is dominated by a point of {test.label}"
        return None, f"not computable: {why}"


def bd_table(curves: Sequence[Curve], anchors: Sequence[Curve], separate: Optional[Curve] = None,
             method: str = "cubic", comparable: Optional[bool] = None) -> pd.DataFrame:
    """BD-rate (``method``, default the VCEG-M33 cubic) of every curve against VTM (published, Kodak) and
    against the separate-models curve (if given); one row per curve (ours twice: trained rates only, and
    with the continuous rates). ``None`` with the reason where it cannot be computed or compared.
    ``comparable``: whether the curves were measured on the whole Kodak set (the notebooks'
    ``ctx.full_kodak``); without it, what the anchors say, and with no anchors either, not comparable."""
    from lpm.eval import load_anchors

    vtm = next((a for a in anchors if a.label == "VTM"), None)
    if vtm is None:
        df = load_anchors("VTM")
        comp = comparable if comparable is not None else all(a.comparable for a in anchors) if anchors else False
        vtm = Curve("VTM", df["bpp"].tolist(), df["psnr_rgb"].tolist(), kind="anchor", comparable=comp)
    rows_in: list[Curve] = []
    for c in curves:
        if c.kind == "ours" and c.trained is not None and not all(c.trained) and any(c.trained):
            rows_in.append(c.subset(c.trained, f"{c.label} (trained rates)"))
            rows_in.append(Curve(f"{c.label} (trained + continuous)", c.bpp, c.psnr, c.msssim, c.kind, c.rates,
                                 c.trained, c.source, c.budget, c.comparable))
        else:
            rows_in.append(c)
    rows_in += list(anchors)
    rows = []
    for c in rows_in:
        v, why = bd_against(vtm, c, method) if c.label != "VTM" else (0.0, "reference itself")
        row = {"curve": c.label, "kind": c.kind, "points": len(c.bpp),
               "bpp_min": min(c.bpp, default=None), "bpp_max": max(c.bpp, default=None),
               "psnr_min": min(c.psnr, default=None), "psnr_max": max(c.psnr, default=None),
               "bd_rate_vs_vtm_percent": v, "vs_vtm_note": why}
        if separate is None:
            s, swhy = None, "no separate-models checkpoint in CHECKPOINTS"
        elif c.label == separate.label:
            s, swhy = 0.0, "reference itself"
        elif c.kind == "anchor" and not c.comparable:
            s, swhy = None, "not comparable: published Kodak curve, the separate models were measured on other images"
        else:
            s, swhy = bd_against(separate, c, method)
        row.update({"bd_rate_vs_separate_percent": s, "vs_separate_note": swhy,
                    "separate_reference": separate.label if separate is not None else None})
        rows.append(row)
    return pd.DataFrame(rows)


# =========================================================================================== attention maps
def default_attention_layer(model: Any, x: Any, rate: Optional[float] = None, tol: float = 1e-4) -> tuple[str, str]:
    """The first g_a attention layer whose attention over image keys the prompts change (mean attention
    shift above ``tol`` at ``rate``, default the lowest rate), with the reason. The very first layer sees
    the same input with and without prompts, so its renormalised image attention is unchanged (the prompts
    only add keys there): it has prompt mass but no shift."""
    from lpm.eval import attention_layer_names, attention_maps

    rate = float(model.rates[0]) if rate is None else float(rate)
    names = [n for n in attention_layer_names(model) if n.startswith("g_a.")]
    if not names:
        raise ValueError("the model has no g_a attention layers")
    skipped = []
    for n in names:
        m = attention_maps(model, x, rate, n)
        h, w = m["image_region"]
        shift = float(m["shift"][:h, :w].mean())
        if shift > tol:
            why = f"first g_a layer whose mean attention shift at λ={rate:g} exceeds {tol:g} ({shift:.4f})"
            if skipped:
                why += "; before it: " + ", ".join(f"{s} (shift {v:.1e})" for s, v in skipped)
            return n, why
        skipped.append((n, shift))
    return names[0], f"no g_a layer has a mean shift above {tol:g} at λ={rate:g}; using the first"


def _crop_map(m: Mapping[str, Any], key: str) -> np.ndarray:
    h, w = m["image_region"]
    return np.asarray(m[key])[:h, :w]


def attention_numbers(maps: Sequence[Mapping[str, Any]], allocs: Sequence[Mapping[str, Any]] = ()) -> list[dict]:
    """Per rate: mean prompt mass and mean attention shift over the real-image region, and (if given)
    the estimated and real bpp of the bit-allocation maps."""
    rows = []
    for i, m in enumerate(maps):
        row = {"rate": float(m["rate"]), "layer": m["layer"],
               "mean_prompt_mass": float(_crop_map(m, "prompt_mass").mean()),
               "mean_shift": float(_crop_map(m, "shift").mean())}
        if i < len(allocs):
            a = allocs[i]
            row.update(estimated_bpp=float(a["estimated_bpp"]), real_bpp=float(a.get("real_bpp", math.nan)))
        rows.append(row)
    return rows


# =========================================================================================== savings
def storage_summary(models: Mapping[str, Any]) -> pd.DataFrame:
    """:func:`lpm.eval.storage_saving` of each ``{label: model}`` as one row (parameter counts, fp32 bytes,
    saving against K separate models, the paper's 80 %)."""
    from lpm.eval import storage_saving

    rows = []
    for label, model in models.items():
        s = storage_saving(model)
        per = list(s["prompt_params_per_module"].values())
        rows.append({"model": label, "K_rates": s["K"], "base_params": s["base_params"],
                     "prompt_modules": len(per), "params_per_prompt_module": per[0] if len(set(per)) == 1 else None,
                     "prompt_params": s["prompt_params"], "ours_params": s["ours_params"],
                     "separate_params": s["separate_params"], "ours_MB_fp32": s["ours_bytes_fp32"] / 1e6,
                     "separate_MB_fp32": s["separate_bytes_fp32"] / 1e6, "ours_over_separate": s["ratio"],
                     "saving_percent": s["saving_percent"], "paper_claim_percent": s["paper_claim_percent"]})
    return pd.DataFrame(rows)


def ledger_from_meta(info: Mapping[str, Any]) -> Optional[list[dict[str, Any]]]:
    """A budget ledger (:mod:`lpm.eval.savings` records) rebuilt from what a checkpoint without one records in
    its meta — the smoke checkpoint's ``prompt_images`` (the prompt modules' subset), ``base_steps``,
    ``prompt_steps_per_rate``, ``batch``, and in its ``budget`` string the base's training set
    (``"base … on N … images (M min)"``) — or ``None`` when the meta does not say enough. One ``base``
    record and one ``prompts`` record per further rate, all prompt records of one run (one shared subset);
    compute is counted as CPU minutes when ``cpu_minutes`` is recorded."""
    meta = info.get("meta") or {}
    budget = str(meta.get("budget") or "")
    base_set = re.search(r"\bbase\b[^;]*?\bon (\d+) [^;]*?images", budget)
    subset = meta.get("prompt_images")
    rates = info.get("rates")
    rates = json.loads(rates) if isinstance(rates, str) else rates
    if not base_set or not isinstance(subset, list) or not rates or info.get("base_rate") is None:
        return None
    in_set, base_rate, batch = int(base_set.group(1)), float(info["base_rate"]), int(meta.get("batch") or 0)
    prompt_rates = [float(r) for r in rates if not math.isclose(float(r), base_rate, rel_tol=1e-9)]
    base_min = re.search(r"\bbase\b[^;]*?images \((\d+(?:\.\d+)?) min\)", budget)
    base_minutes = float(base_min.group(1)) if base_min else 0.0
    total = float(meta.get("cpu_minutes") or 0.0)
    per_prompt = max(total - base_minutes, 0.0) / len(prompt_rates) if total and prompt_rates else 0.0
    common = {"images_in_set": in_set, "gpu_minutes": 0.0, "source": "checkpoint meta (no ledger)"}
    ledger = [{"model": "base", "kind": "base", "rate": base_rate, "images_seen": in_set,
               "crops_seen": int(meta.get("base_steps") or 0) * batch, "cpu_minutes": base_minutes, "run": "base",
               **common}]
    ledger += [{"model": f"prompt-{r:g}", "kind": "prompts", "rate": r, "images_seen": len(subset),
                "crops_seen": int(meta.get("prompt_steps_per_rate") or 0) * batch, "cpu_minutes": per_prompt,
                "run": "prompts", **common} for r in prompt_rates]
    return ledger


def training_data(info: Mapping[str, Any], num_rates: Optional[int] = None) -> tuple[pd.DataFrame, Optional[dict], str]:
    """The training-data table from the budget ledger in a checkpoint's meta
    (:func:`lpm.eval.read_ledger`, :func:`lpm.eval.data_table`, :func:`lpm.eval.dataset_saving`), or, for a
    checkpoint without a ledger, from what its meta records instead (:func:`ledger_from_meta`; the note and
    ``saving["source"]`` say so). Returns ``(table, saving or None, note)``; ``saving`` carries ``source``
    (``"ledger"`` or ``"checkpoint meta (no ledger)"``); when neither says enough the table is one row saying
    so."""
    from lpm.eval import data_table, dataset_saving, read_ledger

    meta = info.get("meta") or {}
    try:
        ledger = read_ledger(dict(info))
    except ValueError as e:
        ledger, err = [], f"the ledger in the checkpoint meta is invalid ({e})"
    else:
        err = None
    rebuilt = ledger_from_meta(info) if not ledger and err is None else None
    if rebuilt:
        label = "smoke budget" if "smoke" in str(meta.get("budget", "")).lower() else "this checkpoint's budget"
        saving = {**dataset_saving(rebuilt, num_rates=num_rates), "source": "checkpoint meta (no ledger)",
                  "budget_label": label}
        note = (f"{label}, reconstructed from the checkpoint's meta (it has no ledger): base on "
                f"{saving['images_in_set']} images, prompt modules on the {saving['prompt_images']} images listed in "
                f"meta.prompt_images; separate models not trained here, assumed on the full "
                f"{saving['separate_images']}-image set as in the paper")
        return data_table(rebuilt), saving, note
    if not ledger:
        note = err or "the checkpoint's meta carries no budget ledger (per-stage images seen)"
        hints = []
        if isinstance(meta.get("prompt_images"), list):
            hints.append(f"meta lists {len(meta['prompt_images'])} prompt-training images (no ledger record)")
        if meta.get("budget"):
            hints.append(f"budget string: {meta['budget']}")
        df = pd.DataFrame([{"kind": "n/a", "model": "no ledger", "note": note, "unledgered_meta": "; ".join(hints) or None,
                            "paper_claim_percent": 90.0}])
        return df, None, note
    df = data_table(ledger)
    try:
        saving = dataset_saving(ledger, num_rates=num_rates)
    except ValueError as e:
        return df, None, f"the ledger has no prompt records: {e}"
    label = "smoke budget" if "smoke" in str(meta.get("budget", "")).lower() else "this checkpoint's budget"
    return df, {**saving, "source": "ledger", "budget_label": label}, \
        f"from the checkpoint's ledger ({len(ledger)} records; separate models: {saving['separate_source']})"
