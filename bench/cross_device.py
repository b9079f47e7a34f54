"""Do files encoded on a GPU decode on the CPU, and the reverse? (issue 11; needs a CUDA GPU)

Encodes every image at every trained rate (and one interpolated rate) on ``--device`` and on the CPU,
decodes each file on the other device, and counts how many decode (the table check passes) and how far the
decoded pixels are from the same-device decode.

    python bench/cross_device.py --images DIR_WITH_KODAK_PNGS --model tiny-smoke --json out.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", required=True, help="a folder of images (e.g. the 24 Kodak PNGs)")
    ap.add_argument("--model", default="tiny-smoke", help="zoo name or checkpoint file")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--json")
    args = ap.parse_args(argv)

    from lpm import codec, fileformat, zoo
    from lpm.data import find_images, read_image

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here: this measurement needs one")
    ck_cpu, ck_dev = zoo.load(args.model, device="cpu"), zoo.load(args.model, device=args.device)
    rates = [*ck_cpu.model.rates, (ck_cpu.model.rates[0] * ck_cpu.model.rates[1]) ** 0.5]
    paths = find_images(args.images)[: args.limit or None]
    stats = {d: {"files": 0, "decoded": 0, "refused": 0, "pixels_off": 0, "max_lsb": 0, "same_bytes": 0}
             for d in ("gpu->cpu", "cpu->gpu")}
    refusals: list[str] = []
    t0 = time.time()
    for p in paths:
        x, info = read_image(p)
        for r in rates:
            c_dev = fileformat.encode(codec.encode_image(ck_dev.model, ck_dev.model_id, x, info, r))
            c_cpu = fileformat.encode(codec.encode_image(ck_cpu.model, ck_cpu.model_id, x, info, r))
            for name, data, src, dst in (("gpu->cpu", c_dev, ck_dev, ck_cpu), ("cpu->gpu", c_cpu, ck_cpu, ck_dev)):
                s = stats[name]
                s["files"] += 1
                s["same_bytes"] += int(c_dev == c_cpu)
                ref, _ = codec.decode_image(src.model, src.model_id, fileformat.decode(data))
                try:
                    out, _ = codec.decode_image(dst.model, dst.model_id, fileformat.decode(data))
                except fileformat.BitstreamError as e:
                    s["refused"] += 1
                    refusals.append(f"{name} {p.name} λ={r:g}: {e}")
                    continue
                s["decoded"] += 1
                lsb = (out.mul(255).round() - ref.mul(255).round()).abs()
                s["pixels_off"] += int((lsb.amax(0) > 0).sum())
                s["max_lsb"] = max(s["max_lsb"], int(lsb.max()))
        print(f"  {p.name} done ({time.time() - t0:.0f} s)", flush=True)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device
    print(f"{len(paths)} images x {len(rates)} rates, {args.model}, {name} vs CPU, torch {torch.__version__}")
    for k, s in stats.items():
        print(f"  {k}: {s['decoded']}/{s['files']} decoded, {s['refused']} refused, files identical on both "
              f"devices: {s['same_bytes']}/{s['files']}, pixels differing from the same-device decode: "
              f"{s['pixels_off']} (max {s['max_lsb']} LSB)")
    for line in refusals[:10]:
        print("   ", line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "model": args.model, "images": len(paths), "rates": rates,
                       "torch": torch.__version__, "stats": stats, "refusals": refusals}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
