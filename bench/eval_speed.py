"""Seconds per image of the real-bitstream evaluation (:func:`lpm.eval.rd.evaluate_codec`) for the
default-size model.

Builds ``lpm.zoo.build("tic")`` (untrained weights: speed depends on the sizes, and the rANS coder's share
on what the random model emits, so take the coding part as indicative), warms up on one image, then runs
the evaluation — read, encode, write the ``.lpm`` bytes, parse, decode, PSNR and MS-SSIM — on ``N``
images at the given rates, on the CPU and, if available, on CUDA, and prints a table.

    python bench/eval_speed.py                          # 4 Kodak images at the base rate, CPU (+ CUDA)
    python bench/eval_speed.py --images DIR -n 24 --rates 0.0018 0.0483 --threads 2 --json out.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", help="image directory (default: the Kodak set via lpm.data.locate_dataset)")
    ap.add_argument("-n", "--num-images", type=int, default=4, help="images to evaluate (default 4)")
    ap.add_argument("--rates", type=float, nargs="+", help="λ values (default: the base rate)")
    ap.add_argument("--devices", nargs="+", help="devices (default: cpu, and cuda if available)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave torch's default)")
    ap.add_argument("--config", default="tic", help="zoo config name (default: tic, the paper size)")
    ap.add_argument("--json", help="also write the numbers to this JSON file")
    args = ap.parse_args(argv)

    from lpm import zoo
    from lpm.data import find_images, locate_dataset
    from lpm.eval.rd import evaluate_codec
    from lpm.provenance import environment

    if args.threads:
        torch.set_num_threads(args.threads)
    folder = Path(args.images) if args.images else locate_dataset("kodak")
    paths = find_images(folder)[: args.num_images]
    devices = args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    torch.manual_seed(0)
    model = zoo.build(args.config).eval()
    model.update(force=True)
    rates = args.rates or [model.base_rate]
    print(f"model: {args.config} ({model.parameter_counts()['total'] / 1e6:.2f} M parameters, untrained)")
    print(f"images: {folder} ({len(paths)} used); rates λ: {', '.join(f'{r:g}' for r in rates)}; "
          f"torch threads: {torch.get_num_threads()}")
    rows = []
    for dev in devices:
        evaluate_codec(model, paths[:1], rates[:1], device=dev, progress=False)  # warm-up
        t0 = time.perf_counter()
        res = evaluate_codec(model, paths, rates, device=dev, progress=False)
        wall = time.perf_counter() - t0
        n = len(paths) * len(rates)
        enc = sum(res["results"]["encoding_time"]) / len(rates)
        dec = sum(res["results"]["decoding_time"]) / len(rates)
        rows.append({
            "device": environment(dev)["device"],
            "images": len(paths),
            "rates": len(rates),
            "encode_s": enc,
            "decode_s": dec,
            "eval_s_per_image": wall / n,
            "bpp": sum(res["results"]["bpp"]) / len(rates),
        })
    print(f"{'device':<40s} {'encode s':>9s} {'decode s':>9s} {'eval s/img':>11s} {'bpp':>7s}")
    for r in rows:
        print(f"{r['device'][:40]:<40s} {r['encode_s']:9.3f} {r['decode_s']:9.3f} {r['eval_s_per_image']:11.3f} "
              f"{r['bpp']:7.3f}")
    print("eval s/img: whole evaluation per (image, rate): read + encode + bytes + decode + PSNR/MS-SSIM")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"rows": rows, "meta": environment(devices[0])}, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
