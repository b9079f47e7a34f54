"""Whole λ ladders side by side: how far each one reaches, and how close it comes to separate models.

Takes ``lpm eval`` results JSON files (compressai format, real-bitstream bpp) and puts together, per ladder:
its points (λ, bpp, PSNR), the bpp span (highest over lowest), the change per notch (each trained rate against
its neighbour toward the base rate), at how many steps the bpp rises with λ, the claims table's range verdict
(:func:`lpm.figures.claims.range_row`: rises at every step and spans ≥ 80 % of the separate models' log-bpp
span), and the BD-rate / BD-PSNR against the separate models (cubic VCEG-M33 and PCHIP, or why there is none).
The verdict on the issue's RD target (within +2 % BD-rate of the separate models) is given only where the two
curves share ≥ 80 % of the separate models' PSNR range: a ladder whose rate barely moves meets the separate
curve over a sliver, and a BD-rate there says nothing about the ladder.

A ladder may come in several files (e.g. the halves below and above the base, trained as two runs): their
points are merged by λ, and a λ that appears twice (the base rate) must have the same bpp and PSNR in both.
The separate-models curve is made of one file per model (each codes its own λ) plus the base's own
evaluation. Every file must be of the same data set, the same number of images and the same manifest.

    python bench/ladder_compare.py --separate sep-0.0018.json … base.json \\
        --ladder "token-fed additive-only=below.json,above.json" --ladder "prompts alone=prompts.json" \\
        --json results/bench/ladders_tiny.json

Nothing is measured here: it reads what ``lpm eval`` wrote, and records each file's sha256 and checkpoint.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lpm.eval.bd import bd_psnr, bd_rate  # noqa: E402
from lpm.figures.claims import range_row  # noqa: E402
from lpm.figures.curves import Curve  # noqa: E402
from lpm.jsonio import write_json  # noqa: E402

#: The prompted model's RD target of the campaign issue: within this BD-rate of the separate models.
RD_TARGET_PERCENT = 2.0
#: A BD-rate is a verdict on the ladder only where the two curves share at least this much of the separate
#: models' PSNR range (the range claim's share); over less it compares a few points, not the ladders.
OVERLAP_SHARE = 0.8
_SAME = 1e-9  # relative: two evaluations of one codec at one λ give identical numbers (same bytes, same pixels)


class LadderError(ValueError):
    """Inputs that cannot be put together (one line, says which file and why)."""


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise LadderError(f"{path}: not a readable results JSON ({e})") from None
    res = data.get("results") if isinstance(data, dict) else None
    if not isinstance(res, dict) or not all(k in res for k in ("bpp", "psnr-rgb", "rate")):
        raise LadderError(f"{path}: not an lpm eval results JSON (needs results.bpp, results.psnr-rgb, results.rate)")
    n = len(res["rate"])
    if n == 0 or len(res["bpp"]) != n or len(res["psnr-rgb"]) != n:
        raise LadderError(f"{path}: results.rate, .bpp and .psnr-rgb must be non-empty and of equal length")
    for k in ("rate", "bpp", "psnr-rgb"):
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in res[k]):
            raise LadderError(f"{path}: results.{k} holds a value that is not a finite number")
    if any(v <= 0 for v in res["rate"]) or any(v <= 0 for v in res["bpp"]):
        raise LadderError(f"{path}: λ and bpp must be positive")
    return data


def _dataset_key(path: Path, data: dict[str, Any]) -> tuple:
    meta = data.get("meta") or {}
    return (meta.get("dataset"), meta.get("num_images"), meta.get("dataset_manifest_sha256"))


def _source(path: Path, data: dict[str, Any]) -> dict[str, Any]:
    meta = data.get("meta") or {}
    return {"file": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "checkpoint_sha256": meta.get("checkpoint_sha256"), "budget": meta.get("checkpoint_budget"),
            "git_commit": meta.get("git_commit"), "device": meta.get("device")}


def merge_points(paths: Sequence[Path], loaded: dict[Path, dict[str, Any]]) -> list[tuple[float, float, float]]:
    """The (λ, bpp, PSNR) points of ``paths`` merged by λ, sorted by λ; a λ seen twice must agree."""
    seen: dict[float, tuple[float, float, Path]] = {}
    for p in paths:
        res = loaded[p]["results"]
        for r, b, q in zip(res["rate"], res["bpp"], res["psnr-rgb"]):
            key = next((k for k in seen if math.isclose(k, r, rel_tol=1e-9)), None)
            if key is None:
                seen[float(r)] = (float(b), float(q), p)
                continue
            b0, q0, p0 = seen[key]
            if not (math.isclose(b0, b, rel_tol=_SAME) and math.isclose(q0, q, rel_tol=_SAME)):
                raise LadderError(f"λ={r:g} is in {p0} ({b0:.6f} bpp, {q0:.4f} dB) and in {p} ({b:.6f} bpp, {q:.4f} dB): "
                                  "two different codecs at one λ of one ladder")
    return sorted((r, b, q) for r, (b, q, _) in seen.items())


def _bd(ref: list[tuple[float, float, float]], test: list[tuple[float, float, float]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    rb, rq = [p[1] for p in ref], [p[2] for p in ref]
    tb, tq = [p[1] for p in test], [p[2] for p in test]
    for method in ("cubic", "pchip"):
        for name, fn in (("bd_rate_percent", bd_rate), ("bd_psnr_db", bd_psnr)):
            key = f"{name}_{method}"
            try:
                out[key] = fn(rb, rq, tb, tq, method=method)
            except ValueError as e:
                out[key] = None
                out[key + "_why_not"] = str(e)
    return out


def ladder_summary(label: str, points: list[tuple[float, float, float]], base_rate: Optional[float],
                   separate: Optional[list[tuple[float, float, float]]], budget: str) -> dict[str, Any]:
    rates = [p[0] for p in points]
    bpp = [p[1] for p in points]
    row: dict[str, Any] = {"label": label, "rate": rates, "bpp": bpp, "psnr-rgb": [p[2] for p in points],
                           "rises_at": f"{sum(b > a for a, b in zip(bpp, bpp[1:]))}/{len(bpp) - 1}"}
    if base_rate is not None and any(math.isclose(r, base_rate, rel_tol=1e-9) for r in rates):
        i0 = next(i for i, r in enumerate(rates) if math.isclose(r, base_rate, rel_tol=1e-9))
        notch = {}
        for i, r in enumerate(rates):
            if i != i0:
                j = i + 1 if i < i0 else i - 1
                notch[f"{r:g}"] = 100.0 * (bpp[i] / bpp[j] - 1.0)
        row["base_rate"] = base_rate
        row["change_per_notch_percent"] = notch
    sep_curve = None
    if separate:
        sep_curve = Curve("separate", [p[1] for p in separate], [p[2] for p in separate], kind="separate",
                          rates=[p[0] for p in separate], trained=[True] * len(separate))
        row.update(_bd(separate, points))
        sq = [p[2] for p in separate]
        lo, hi = max(min(sq), min(row["psnr-rgb"])), min(max(sq), max(row["psnr-rgb"]))
        share = max(0.0, hi - lo) / (max(sq) - min(sq)) if max(sq) > min(sq) else 0.0
        row["psnr_overlap_db"] = [lo, hi] if hi > lo else None
        row["psnr_overlap_share"] = share
        v = row.get("bd_rate_percent_cubic")
        if v is None:
            row["rd_target"] = f"not measurable: {row.get('bd_rate_percent_cubic_why_not')}"
        elif share < OVERLAP_SHARE:
            row["rd_target"] = (f"not measurable over the ladder: the curves share {100 * share:.0f} % of the separate "
                                f"models' PSNR range (< {100 * OVERLAP_SHARE:g} %); BD-rate {v:+.1f} % there")
        else:
            row["rd_target"] = (f"{'met' if v <= RD_TARGET_PERCENT else 'not met'}: BD-rate {v:+.1f} % vs separate "
                                f"models (target ≤ +{RD_TARGET_PERCENT:g} %), over {100 * share:.0f} % of their "
                                "PSNR range")
    ours = Curve(label, bpp, [p[2] for p in points], rates=rates, trained=[True] * len(points))
    rr = range_row(ours, sep_curve, budget, why_missing="no separate models given")
    row["span"] = rr["value"]  # highest over lowest bpp, as the claims table measures it
    row["range_verdict"] = rr["verdict"]
    row["range_measurement"] = rr["measurement"]
    return row


def _parse_ladder(spec: str) -> tuple[str, list[Path]]:
    label, sep, files = spec.rpartition("=")
    if not sep or not label.strip() or not files.strip():
        raise LadderError(f"--ladder {spec!r}: expected LABEL=FILE[,FILE...]")
    return label.strip(), [Path(f) for f in files.split(",") if f.strip()]


def compare(ladders: Sequence[tuple[str, list[Path]]], separate: Sequence[Path], budget: str = "") -> dict[str, Any]:
    paths = [p for _, ps in ladders for p in ps] + list(separate)
    loaded = {p: _read(p) for p in dict.fromkeys(paths)}
    anonymous = [str(p) for p, d in loaded.items() if None in _dataset_key(p, d)[:2]]
    if anonymous:  # (None, None, None) for every file would pass as "one data set"
        raise LadderError(f"{', '.join(anonymous)}: names no data set (meta.dataset and meta.num_images, as lpm eval "
                          "writes them); cannot tell that the files were measured on the same images")
    keys = {_dataset_key(p, d) for p, d in loaded.items()}
    if len(keys) > 1:
        raise LadderError("the files are not of one data set (dataset, number of images, manifest sha256 differ: "
                          + "; ".join(f"{p}: {_dataset_key(p, d)}" for p, d in loaded.items()) + ")")
    sep_points = merge_points(list(separate), loaded) if separate else None
    out: dict[str, Any] = {"dataset": next(iter(keys)), "rd_target_percent": RD_TARGET_PERCENT,
                           "bpp_definition": "8*file bytes/pixels (header+CRC included), from lpm eval",
                           "sources": [_source(p, d) for p, d in loaded.items()], "ladders": []}
    if sep_points:
        out["separate"] = {"rate": [p[0] for p in sep_points], "bpp": [p[1] for p in sep_points],
                           "psnr-rgb": [p[2] for p in sep_points], "span": max(p[1] for p in sep_points)
                           / min(p[1] for p in sep_points)}
    for label, ps in ladders:
        base_rates = {(loaded[p].get("meta") or {}).get("base_rate") for p in ps} - {None}
        if len(base_rates) > 1:
            raise LadderError(f"ladder {label!r}: its files name different base rates {sorted(base_rates)}")
        out["ladders"].append(ladder_summary(label, merge_points(ps, loaded), next(iter(base_rates), None),
                                             sep_points, budget))
    return out


def markdown(result: dict[str, Any]) -> str:
    rates = sorted({r for lad in result["ladders"] for r in lad["rate"]}
                   | set((result.get("separate") or {}).get("rate", [])))
    head = "| ladder | " + " | ".join(f"λ={r:g}" for r in rates) + " | span | BD-rate vs separate (cubic / PCHIP) |"
    lines = [head, "|---|" + "---|" * (len(rates) + 2)]

    def cells(rs, bs, qs):
        d = {round(r, 12): (b, q) for r, b, q in zip(rs, bs, qs)}
        return [f"{d[round(r, 12)][0]:.4f} ({d[round(r, 12)][1]:.2f} dB)" if round(r, 12) in d else "" for r in rates]

    sep = result.get("separate")
    if sep:
        lines.append("| separate models | " + " | ".join(cells(sep["rate"], sep["bpp"], sep["psnr-rgb"]))
                     + f" | {sep['span']:.2f}x | reference |")
    for lad in result["ladders"]:
        c, p = lad.get("bd_rate_percent_cubic"), lad.get("bd_rate_percent_pchip")
        bd = (f"{c:+.1f} % / {p:+.1f} %" if c is not None and p is not None else
              "not computable" if sep else "no separate models")
        lines.append(f"| {lad['label']} | " + " | ".join(cells(lad["rate"], lad["bpp"], lad["psnr-rgb"]))
                     + f" | {lad['span']:.2f}x | {bd} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ladder", action="append", default=[], metavar="LABEL=FILE[,FILE...]",
                    help="one ladder: a label and the lpm eval JSON file(s) of its checkpoint(s)")
    ap.add_argument("--separate", nargs="*", default=[], type=Path,
                    help="lpm eval JSON files of the separate models (one per λ) and of the base")
    ap.add_argument("--budget", default="", help="the budget line recorded with the range verdicts")
    ap.add_argument("--json", type=Path, help="write the comparison here")
    args = ap.parse_args(argv)
    try:
        if not args.ladder:
            raise LadderError("name at least one --ladder")
        result = compare([_parse_ladder(s) for s in args.ladder], args.separate, args.budget)
    except LadderError as e:
        print(f"ladder_compare: {e}", file=sys.stderr)
        return 2
    result["budget"] = args.budget
    print(markdown(result))
    for lad in result["ladders"]:
        print(f"- {lad['label']}: {lad['range_verdict']}" + (f"; RD target {lad['rd_target']}" if "rd_target" in lad else ""))
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
