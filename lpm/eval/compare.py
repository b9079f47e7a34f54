"""One comparison of every same-backbone variable-rate method, at the budgets its checkpoints record.

Rows (:data:`METHODS`): the paper's prompt modules (LPM, Qin et al.), LPM with the per-rate latent gain
(beyond the paper), low-rank rate adapters (Xu, Huang & Wu, arXiv:2606.16107; :class:`lpm.models.LoRACodec`),
rate-conditioned prompts (Kao et al., ICIP 2023), gain units (Cui et al., CVPR 2021) and K separate models.
A method without a checkpoint is a row saying :data:`NO_CHECKPOINT`, never numbers. For every checkpoint,
all measured here, on the same images, in the same process:

* ``params_stored``: parameters stored for its K rates (base + per-rate parts; K backbones for separate
  models), ``params_per_extra_rate`` and ``storage_vs_separate_percent`` (against K copies of its base);
* training budget from the ledger in its meta (:mod:`lpm.train.ledger`): distinct images and crops of the
  rate-specific training, its GPU- and CPU-minutes, and the shared base's crops and minutes;
* BD-rate (cubic, VCEG-M33) of its trained rates against the separate models (if one is given), against
  the first LPM checkpoint, and against VTM (published Kodak points: comparable on all 24 Kodak images only);
  bpp from real ``.lpm`` bytes (:func:`lpm.eval.evaluate_codec`);
* CPU encode/decode seconds per image relative to the bare base (the same frozen backbone, at its rate);
  low-rank adapters are timed **merged** (:meth:`lpm.models.LoRACodec.merge`), as deployed;
* whether a rate between trained rates is supported, and where it is, whether bpp and PSNR rise
  monotonically with λ over trained + in-between rates (``per_gap`` log-spaced rates in every gap:
  ``monotone_bpp``/``monotone_psnr``), and in how many gaps the in-between points go monotonically from one
  trained end to the other (``gaps_smooth_bpp``/``gaps_smooth_psnr``, e.g. ``"5/5"``; this separates the
  interpolation's behaviour from a trained ladder that is itself not monotone).

Each row carries its budget string. Results are cached per checkpoint in ``results_dir/eval/`` (per-image
CSVs of :func:`lpm.eval.evaluate_codec`, keyed by checkpoint sha256, image and rate).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pandas as pd
import torch

__all__ = ["Method", "METHODS", "NO_CHECKPOINT", "Comparison", "compare_methods", "method_of", "between_rates",
           "gaps_between", "ledger_budget", "base_state_sha256", "merge_difference"]

#: What a method without a checkpoint shows instead of numbers.
NO_CHECKPOINT = "no checkpoint yet (GPU campaign)"


@dataclass(frozen=True)
class Method:
    """A row of the comparison: ``key``, how it is shown, its paper, its checkpoint ``kind`` and whether a rate
    between trained rates is supported (by the method as implemented here)."""

    key: str
    title: str
    reference: str
    kind: str
    continuous: bool


#: Every same-backbone variable-rate method, in table order.
METHODS: tuple[Method, ...] = (
    Method("prompts", "LPM prompt modules", "Qin et al., arXiv:2311.13846", "prompted", True),
    Method("prompts_gain", "LPM prompt modules + latent gain", "beyond the paper (lpm)", "prompted", True),
    Method("prompts_hidden", "LPM modules, token-fed prompts", "beyond the paper (lpm)", "prompted", True),
    Method("lora", "Low-rank rate adapters (merged)", "Xu, Huang & Wu, arXiv:2606.16107", "lora", True),
    Method("rate_conditioned", "Rate-conditioned prompts", "Kao et al., ICIP 2023", "rate_conditioned", True),
    Method("gain_units", "Gain units", "Cui et al., CVPR 2021", "gain_units", True),
    Method("separate", "Separate models (one backbone per rate)", "reference", "separate", False),
)
_BY_KEY = {m.key: m for m in METHODS}


def method_of(ckpt: Any) -> Method:
    """The :class:`Method` of a :class:`lpm.figures.Checkpoint` (from its kind; a prompted codec whose
    prompt modules learn a latent gain is ``prompts_gain``, one whose heads read the blocks' own tokens on
    either side is ``prompts_hidden``)."""
    if ckpt.separate:
        return _BY_KEY["separate"]
    model = ckpt.model
    kind = ckpt.kind
    if kind == "tic":
        raise ValueError(f"{ckpt.label}: a bare base is not a variable-rate method")
    if kind == "prompted":
        pc = getattr(model, "prompt_config", None)
        if "hidden" in (getattr(pc, "enc_source", None), getattr(pc, "dec_source", None)):
            return _BY_KEY["prompts_hidden"]
        return _BY_KEY["prompts_gain" if getattr(pc, "latent_gain", False) else "prompts"]
    for m in METHODS:
        if m.kind == kind:
            return m
    raise ValueError(f"{ckpt.label}: unknown codec kind {kind!r}")


def between_rates(rates: Sequence[float], per_gap: int) -> list[float]:
    """``per_gap`` rates evenly spaced in log λ strictly inside every gap of the sorted trained ``rates``."""
    if isinstance(per_gap, bool) or not isinstance(per_gap, int) or per_gap < 0:
        raise ValueError(f"per_gap must be an integer 0 or more, got {per_gap!r:.40}")
    rs = sorted(float(r) for r in rates)
    out = []
    for a, b in zip(rs, rs[1:]):
        la, lb = math.log(a), math.log(b)
        out += [math.exp(la + (lb - la) * (i + 1) / (per_gap + 1)) for i in range(per_gap)]
    return out


def _base_of(model: Any) -> Any:
    return model.base if hasattr(model, "base") else model


def _backbone(config: Any) -> dict[str, Any]:
    """A backbone config without ``prompt_stride``: that only lays out prompt maps (a base is used at either
    stride with the same weights), so two methods on one base may differ in it."""
    return {k: v for k, v in config.to_dict().items() if k != "prompt_stride"}


def _base_state(model: Any) -> dict[str, torch.Tensor]:
    """The backbone's state without any low-rank adapters (what a bare :class:`TICCodec` stores)."""
    return {k: v for k, v in _base_of(model).state_dict().items() if ".lora_A." not in k and ".lora_B." not in k}


def base_state_sha256(model: Any) -> str:
    """sha256 over the backbone's tensors (names, dtypes, shapes, bytes; adapters left out): equal for two
    codecs on the same frozen base."""
    h = hashlib.sha256()
    for k, v in sorted(_base_state(model).items()):
        v = v.detach().cpu().contiguous().reshape(-1)
        h.update(f"{k}|{v.dtype}|{tuple(v.shape)}|".encode())
        h.update(v.view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()


def _bare_base_codec(model: Any) -> Any:
    """The frozen backbone of ``model`` as a fresh one-rate codec (no adapter wrappers, no prompts)."""
    from lpm.models import PromptedCodec, TICCodec

    src = _base_of(model)
    base = TICCodec(src.config)
    base.load_state_dict(_base_state(model), strict=True)
    rate = float(model.base_rate)
    return PromptedCodec(base, rates=[rate], base_rate=rate).eval()


# ---------------------------------------------------------------------------------------------- budget
def ledger_budget(infos: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Training budget from the ledgers in the checkpoints' meta (one info per file): the rate-specific part
    (records of kind ``prompts``/``lora``/``rate_conditioned``/``gain_units``/``separate``) and the shared base
    (kind ``base``). Distinct images: the largest ``images_seen`` per run (a run shares one subset), summed over
    runs. ``None`` values and a note when no file carries a ledger."""
    records, seen = [], set()
    for info in infos:
        for r in (info.get("meta") or {}).get("ledger") or []:
            key = (r.get("run"), r.get("model"), r.get("rate"))
            if key not in seen:
                seen.add(key)
                records.append(r)
    out: dict[str, Any] = {"train_images": None, "train_crops": None, "train_gpu_minutes": None,
                           "train_cpu_minutes": None, "base_crops": None, "base_minutes": None,
                           "budget_note": "no ledger in the checkpoint meta"}
    if not records:
        return out
    part = [r for r in records if r.get("kind") != "base"]
    base = [r for r in records if r.get("kind") == "base"]
    per_run: dict[str, int] = defaultdict(int)
    for r in part:
        per_run[str(r.get("run"))] = max(per_run[str(r.get("run"))], int(r.get("images_seen") or 0))
    out.update(
        train_images=sum(per_run.values()) if part else None,
        train_crops=sum(int(r.get("crops_seen") or 0) for r in part) if part else None,
        train_gpu_minutes=sum(float(r.get("gpu_minutes") or 0) for r in part) if part else None,
        train_cpu_minutes=sum(float(r.get("cpu_minutes") or 0) for r in part) if part else None,
        base_crops=sum(int(r.get("crops_seen") or 0) for r in base) if base else None,
        base_minutes=sum(float(r.get("gpu_minutes") or 0) + float(r.get("cpu_minutes") or 0) for r in base)
        if base else None,
        budget_note=f"ledger: {len(part)} rate-specific record(s), {len(base)} base record(s)",
    )
    return out


# ---------------------------------------------------------------------------------------------- measuring
def _evaluate(model: Any, info: Mapping[str, Any], name: str, paths: Sequence[Path], rates: Sequence[float],
              out_dir: Path, dataset: str, *, merge: bool, recompute: bool, device: str,
              log: Callable[[str], None]) -> dict[str, Any]:
    """Real-bitstream results at ``rates`` (per-rate calls of :func:`lpm.eval.evaluate_codec`, resumable from
    its per-image CSV; ``merge``: the LoRA codec is merged at each rate before it is coded)."""
    from lpm.eval import evaluate_codec

    if recompute:
        for p in (out_dir / f"{name}.json", out_dir / f"{name}_per_image.csv"):
            p.unlink(missing_ok=True)
    common = dict(checkpoint_info=dict(info), out_dir=out_dir, name=name, dataset_name=dataset, device=device,
                  progress=False)
    t0 = time.perf_counter()
    try:
        for rate in rates:
            if merge:
                model.merge(rate)
            evaluate_codec(model, list(paths), [rate], **common)
        if merge:
            model.unmerge()
        res = evaluate_codec(model, list(paths), list(rates), **common)  # all rates, from the CSV (no coding)
    finally:
        if merge:
            model.unmerge()
    r = res["results"]
    log(f"{name}: {len(rates)} rate(s) x {len(paths)} image(s) in {time.perf_counter() - t0:.1f} s; "
        f"bpp {min(r['bpp']):.4f}..{max(r['bpp']):.4f}")
    return res


def merge_difference(model: Any, path: Path, rate: float) -> dict[str, float]:
    """One image coded at ``rate`` by the unmerged LoRA codec, decoded unmerged and merged: the largest
    absolute difference of the decoded images (floats in [0, 1], and 8-bit levels)."""
    from lpm.data import read_image, to_uint8

    x, _ = read_image(path)
    model.eval().unmerge()
    with torch.no_grad():
        out = model.compress(x[None], rate)
        dec = lambda: model.decompress(out["strings"], out["shape"], rate, size=x.shape[-2:],  # noqa: E731
                                       table_checks=out.get("table_checks"))["x_hat"][0]
        a = dec()
        model.merge(rate)
        try:
            b = dec()
        finally:
            model.unmerge()
    return {"rate": float(rate), "max_abs_diff": float((a - b).abs().max()),
            "max_abs_diff_8bit": int((torch.from_numpy(to_uint8(a)).int() - torch.from_numpy(to_uint8(b)).int())
                                     .abs().max())}


def _monotone(values: Sequence[float]) -> bool:
    return all(b > a for a, b in zip(values, values[1:]))


def gaps_between(points: Sequence[Mapping[str, Any]], key: str) -> tuple[int, int]:
    """``(gaps, total)``: of the gaps between adjacent trained rates that hold in-between points, how many
    have ``key`` (``bpp`` or ``psnr_rgb``) strictly monotone from one trained end to the other through them
    (whatever the direction: the interpolation goes smoothly from one trained model to the next)."""
    pts = sorted(points, key=lambda p: p["rate"])
    idx = [i for i, p in enumerate(pts) if p["trained"]]
    good = total = 0
    for i, j in zip(idx, idx[1:]):
        if j - i < 2:
            continue
        seq = [pts[k][key] for k in range(i, j + 1)]
        total += 1
        good += _monotone(seq) or _monotone(seq[::-1])
    return good, total


@dataclass
class Comparison:
    """What :func:`compare_methods` measured: ``table`` (one row per method, or per checkpoint of a method),
    ``points`` (every coded rate of every checkpoint: λ, trained?, bpp, PSNR, times), ``base`` (the bare base's
    point and times), ``merge`` (merged-vs-unmerged decoding difference of the LoRA checkpoints)."""

    table: pd.DataFrame
    points: pd.DataFrame
    base: dict[str, Any]
    merge: dict[str, dict[str, float]] = field(default_factory=dict)
    images: str = ""

    def curves(self) -> list[Any]:
        """The measured RD curves (:class:`lpm.figures.Curve`, trained and in-between rates, in λ order; the
        first checkpoint as ``"ours"``) for :func:`lpm.figures.plot_rd`."""
        from lpm.figures.curves import Curve

        out = []
        for i, (label, pts) in enumerate(self.points.groupby("checkpoint", sort=False)):
            pts = pts.sort_values("rate")
            method = pts["method"].iloc[0]
            kind = "separate" if method == "separate" else ("ours" if i == 0 else "checkpoint")
            out.append(Curve(str(label), pts["bpp"].tolist(), pts["psnr_rgb"].tolist(), kind=kind,
                             rates=pts["rate"].tolist(), trained=pts["trained"].tolist(), source=_BY_KEY[method].title))
        return out

    def summary(self) -> pd.DataFrame:
        """The table's headline columns, one row per method (what the README shows)."""
        cols = ["method", "checkpoint", "budget", "K_rates", "params_stored", "params_per_extra_rate",
                "storage_vs_separate_percent", "train_images", "train_crops", "train_cpu_minutes",
                "train_gpu_minutes", "bd_rate_vs_separate_percent", "bd_rate_vs_lpm_percent", "bd_rate_vs_vtm_percent",
                "encode_time_vs_base", "decode_time_vs_base", "continuous_rate", "gaps_smooth_bpp",
                "gaps_smooth_psnr"]
        return self.table[cols]

    def numbers(self) -> dict[str, Any]:
        """JSON-able numbers for the notebook's record."""
        return {"table": self.table.to_dict(orient="records"), "points": self.points.to_dict(orient="records"),
                "base": self.base, "merge": self.merge, "images": self.images}


def compare_methods(checkpoints: Sequence[Any], images: Any, results_dir: Any, *, smoke: bool = False,
                    per_gap: int = 1, recompute: bool = False, device: str = "cpu",
                    log: Callable[[str], None] = print) -> Comparison:
    """Measure every checkpoint (:class:`lpm.figures.Checkpoint`) on ``images`` (:class:`lpm.data.EvalImages`)
    and build the comparison (see the module docstring). All checkpoints must share one backbone config; rows
    say whether their frozen base is the same tensors as the first checkpoint's (``same_base``).

    ``per_gap``: rates measured inside every gap of the trained ladder (continuous methods only; 0: none).
    """
    from lpm.figures.curves import Curve, anchor_curves
    from lpm.figures.tables import bd_against

    if not checkpoints:
        raise ValueError("no checkpoints to compare")
    out_dir = Path(results_dir) / "eval"
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = f"{images.name}{'_smoke' if smoke else ''}"
    paths = list(images.paths)
    full_kodak = images.name == "kodak" and len(paths) == 24
    first = checkpoints[0]
    config = _base_of(first.models[0].model).config
    base_sha = base_state_sha256(first.models[0].model)

    # the bare base: reference of the timings
    bare = _bare_base_codec(first.models[0].model)
    base_info = {"sha256": f"state:{base_sha}", "meta": {"budget": first.budget}}
    base_res = _evaluate(bare, base_info, f"compare_base_{tag}", paths, [bare.base_rate], out_dir, images.name,
                         merge=False, recompute=recompute, device=device, log=log)["results"]
    base = {"rate": bare.base_rate, "bpp": base_res["bpp"][0], "psnr_rgb": base_res["psnr-rgb"][0],
            "encoding_time": base_res["encoding_time"][0], "decoding_time": base_res["decoding_time"][0],
            "base_sha256": base_sha}

    vtm = anchor_curves(["VTM"], comparable=full_kodak)[0]
    curves: dict[str, Curve] = {}
    rows, points, merges = [], [], {}
    measured: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for ckpt in checkpoints:
        method = method_of(ckpt)
        models = ckpt.models
        if any(_backbone(_base_of(m.model).config) != _backbone(config) for m in models):
            raise ValueError(f"{ckpt.label}: another backbone config than {checkpoints[0].label}; the comparison "
                             "is between methods on the same backbone")
        pts = []
        for loaded in models:
            model, info = loaded.model, loaded.info
            trained = [float(r) for r in model.rates]
            rates = sorted(trained + (between_rates(trained, per_gap) if method.continuous else []))
            is_lora = method.key == "lora"
            stem = Path(str(info.get("path", ""))).stem if len(models) > 1 else ""
            name = f"compare_{ckpt.label}{('_' + stem) if stem else ''}_{tag}{'_merged' if is_lora else ''}"
            res = _evaluate(model, info, name, paths, rates, out_dir, images.name, merge=is_lora,
                            recompute=recompute, device=device, log=log)["results"]
            for i, r in enumerate(res["rate"]):
                if len(models) > 1 and not any(math.isclose(r, t, rel_tol=1e-9) for t in [loaded.base_rate]):
                    continue  # a separate model codes its own rate only
                pts.append({"checkpoint": ckpt.label, "method": method.key, "rate": r,
                            "trained": any(math.isclose(r, t, rel_tol=1e-9) for t in trained),
                            "bpp": res["bpp"][i], "psnr_rgb": res["psnr-rgb"][i],
                            "encoding_time": res["encoding_time"][i], "decoding_time": res["decoding_time"][i]})
            if is_lora:
                inner = [r for r in trained if not math.isclose(r, model.base_rate, rel_tol=1e-9)]
                merges[ckpt.label] = merge_difference(model, paths[0], inner[0] if inner else trained[0])
        pts.sort(key=lambda p: p["rate"])
        points += pts
        measured[method.key].append({"ckpt": ckpt, "points": pts})
        tr = [p for p in pts if p["trained"]]
        curves[ckpt.label] = Curve(ckpt.label, [p["bpp"] for p in tr], [p["psnr_rgb"] for p in tr],
                                   kind="separate" if method.key == "separate" else "checkpoint",
                                   rates=[p["rate"] for p in tr], source=method.title, budget=ckpt.budget)

    separate = next((c for c in checkpoints if method_of(c).key == "separate"), None)
    # the paper's method (prompts alone) is the LPM reference wherever it is measured; else prompts + gain
    lpm_ref = next((c for key in ("prompts", "prompts_gain") for c in checkpoints if method_of(c).key == key), None)
    for method in METHODS:
        entries = measured.get(method.key) or []
        if not entries:
            rows.append({"method": method.title, "reference": method.reference, "checkpoint": None,
                         "budget": NO_CHECKPOINT, "continuous_rate": method.continuous,
                         "note": NO_CHECKPOINT})
            continue
        for e in entries:
            ckpt, pts = e["ckpt"], e["points"]
            models = [m.model for m in ckpt.models]
            k = len({p["rate"] for p in pts if p["trained"]})
            if method.key == "separate":
                stored = sum(m.num_parameters() for m in models)
                one = models[0].parameter_counts()["total"]
                extra = None
            else:
                counts = models[0].parameter_counts()
                stored, one = counts["total"], counts["base"]
                extra = (stored - one) / (k - 1) if k > 1 else None
            tr = [p for p in pts if p["trained"]]
            row: dict[str, Any] = {
                "method": method.title, "reference": method.reference, "checkpoint": ckpt.label,
                "budget": ckpt.budget, "K_rates": k, "params_stored": stored, "params_base": one,
                "params_per_extra_rate": extra,
                "storage_vs_separate_percent": 100.0 * stored / (k * one) if k else None,
                **ledger_budget([m.info for m in ckpt.models]),
            }
            for ref, col in ((separate, "separate"), (lpm_ref, "lpm")):
                if ref is None:
                    v, why = None, ("no separate-models checkpoint: " + NO_CHECKPOINT) if col == "separate" \
                        else "no LPM checkpoint"
                elif ref is ckpt:
                    v, why = 0.0, "reference itself"
                else:
                    v, why = bd_against(curves[ref.label], curves[ckpt.label])
                row[f"bd_rate_vs_{col}_percent"], row[f"vs_{col}_note"] = v, why
            row["bd_rate_vs_vtm_percent"], row["vs_vtm_note"] = bd_against(vtm, curves[ckpt.label])
            enc = sum(p["encoding_time"] for p in tr) / len(tr)
            dec = sum(p["decoding_time"] for p in tr) / len(tr)
            row.update(encode_s_per_image=enc, decode_s_per_image=dec,
                       encode_time_vs_base=enc / base["encoding_time"], decode_time_vs_base=dec / base["decoding_time"],
                       continuous_rate=method.continuous)
            if method.continuous:
                row["monotone_bpp"] = _monotone([p["bpp"] for p in pts])
                row["monotone_psnr"] = _monotone([p["psnr_rgb"] for p in pts])
                for key, col in (("bpp", "gaps_smooth_bpp"), ("psnr_rgb", "gaps_smooth_psnr")):
                    good, total = gaps_between(pts, key)
                    row[col] = f"{good}/{total}" if total else None
            row["same_base"] = all(base_state_sha256(m) == base_sha for m in models) if method.key != "separate" \
                else None
            row["psnr_min"], row["psnr_max"] = min(p["psnr_rgb"] for p in tr), max(p["psnr_rgb"] for p in tr)
            row["bpp_min"], row["bpp_max"] = min(p["bpp"] for p in tr), max(p["bpp"] for p in tr)
            rows.append(row)
    cols = ["method", "reference", "checkpoint", "budget", "K_rates", "params_stored", "params_base",
            "params_per_extra_rate", "storage_vs_separate_percent", "train_images", "train_crops", "train_gpu_minutes",
            "train_cpu_minutes", "base_crops", "base_minutes", "bd_rate_vs_separate_percent", "vs_separate_note",
            "bd_rate_vs_lpm_percent", "vs_lpm_note", "bd_rate_vs_vtm_percent", "vs_vtm_note", "encode_s_per_image",
            "decode_s_per_image", "encode_time_vs_base", "decode_time_vs_base", "continuous_rate", "monotone_bpp",
            "monotone_psnr", "gaps_smooth_bpp", "gaps_smooth_psnr", "same_base", "bpp_min", "bpp_max", "psnr_min", "psnr_max", "budget_note", "note"]
    table = pd.DataFrame(rows).reindex(columns=cols)
    table = table.astype(object).where(table.notna(), None)
    return Comparison(table, pd.DataFrame(points), base, merges, f"{images.name} ({len(paths)} images)")
