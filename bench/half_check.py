"""Does a half-precision checkpoint code like its float32 original? (what a shipped fp16 checkpoint must show)

Codes every image at every trained rate with both checkpoints (each its own real ``.lpm`` stream) and
reports, per rate, the mean bpp and PSNR of each and their differences, and over all images the largest
per-image |Δbpp| and |ΔPSNR| and the largest 8-bit pixel difference between the two decoded images. Weights
rounded to float16 change the latents slightly, so streams differ; "only by rounding" means differences of
the size that rounding explains: fractions of a per cent in bpp, hundredths of a dB.

    python bench/half_check.py FP32.safetensors FP16.safetensors --images DIR/kodak --json out.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("full", help="the float32 checkpoint")
    ap.add_argument("half", help="its half-precision copy")
    ap.add_argument("--images", required=True)
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--rates", type=float, nargs="+", help="default: the trained rates")
    ap.add_argument("--json")
    args = ap.parse_args(argv)

    from lpm import codec, fileformat, zoo
    from lpm.data import find_images, read_image, to_uint8
    from lpm.eval.metrics import psnr

    full, half = zoo.load(args.full), zoo.load(args.half)
    if full.config != half.config or sorted(full.model.rates) != sorted(half.model.rates):
        raise SystemExit("the two checkpoints are not the same codec (config or rates differ)")
    rates = args.rates or sorted(full.model.rates)
    paths = find_images(args.images)[: args.limit or None]
    rows, worst = [], {"bpp_abs": 0.0, "psnr_abs_db": 0.0, "pixel_lsb": 0}
    for rate in rates:
        acc = {"bpp_full": 0.0, "bpp_half": 0.0, "psnr_full": 0.0, "psnr_half": 0.0}
        for p in paths:
            x, info = read_image(p)
            ref = to_uint8(x)
            got: dict[str, tuple[float, float, np.ndarray]] = {}
            for key, ck in (("full", full), ("half", half)):
                data = fileformat.encode(codec.encode_image(ck.model, ck.model_id, x, info, rate))
                out, _ = codec.decode_image(ck.model, ck.model_id, fileformat.decode(data))
                img = to_uint8(out)
                got[key] = (8 * len(data) / (x.shape[-1] * x.shape[-2]), psnr(ref, img), img)
                acc[f"bpp_{key}"] += got[key][0] / len(paths)
                acc[f"psnr_{key}"] += got[key][1] / len(paths)
            (bf, pf, imf), (bh, ph, imh) = got["full"], got["half"]
            worst["pixel_lsb"] = max(worst["pixel_lsb"], int(np.abs(imf.astype(np.int16) - imh).max()))
            worst["bpp_abs"] = max(worst["bpp_abs"], abs(bf - bh))
            worst["psnr_abs_db"] = max(worst["psnr_abs_db"], abs(pf - ph))
        row = {"rate": rate, **acc, "bpp_change_percent": 100 * (acc["bpp_half"] / acc["bpp_full"] - 1),
               "psnr_change_db": acc["psnr_half"] - acc["psnr_full"]}
        rows.append(row)
        print(f"λ={rate:g}: bpp {acc['bpp_full']:.4f} -> {acc['bpp_half']:.4f} ({row['bpp_change_percent']:+.3f} %), "
              f"PSNR {acc['psnr_full']:.3f} -> {acc['psnr_half']:.3f} dB ({row['psnr_change_db']:+.4f})", flush=True)
    print(f"{len(paths)} images x {len(rates)} rates; largest per-image |Δbpp| {worst['bpp_abs']:.5f}, "
          f"|ΔPSNR| {worst['psnr_abs_db']:.4f} dB, decoded images differ by at most {worst['pixel_lsb']} LSB")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "full": {"path": str(full.path), "sha256": full.sha256}, "half": {"path": str(half.path), "sha256": half.sha256},
            "images": args.images, "n_images": len(paths), "rows": rows, "worst": worst}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
