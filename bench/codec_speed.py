"""Encode/decode wall time of one image for the base codec, the prompted codec and bmshj2018-hyperprior.

Untrained weights (speed does not depend on them, except for the entropy coder, which we time too — so the
numbers include rANS coding of whatever the random model emits). Prints a table and ratios to
compressai's ``bmshj2018-hyperprior`` (N=128, M=192), measured in the same run.

    python bench/codec_speed.py                       # a random 768x512 image, CPU, best of 3
    python bench/codec_speed.py --image path.png --repeat 5 --threads 2 --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from typing import Callable

import torch


def _best(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up (allocations, mask caches, oneDNN primitives)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", help="image to code (default: random 768x512)")
    ap.add_argument("--height", type=int, default=512)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", help="also write the numbers to this JSON file")
    args = ap.parse_args(argv)

    from compressai.models import ScaleHyperprior

    from lpm.models import PromptedCodec, TICCodec

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    if args.image:
        from lpm.data import read_image

        x = read_image(args.image)[0][None]
    else:
        x = torch.rand(1, 3, args.height, args.width)
    x = x.to(dev)

    base = TICCodec().eval().to(dev)
    prompted = PromptedCodec(TICCodec()).eval().to(dev)
    # compressai's bmshj2018-hyperprior at qualities 1-5 is ScaleHyperprior(N=128, M=192).
    hyper = ScaleHyperprior(128, 192).eval().to(dev)
    for m in (base, prompted, hyper):
        m.update(force=True)
    low = min(prompted.rates)

    rows = []

    def bench(name: str, enc: Callable[[], dict], dec: Callable[[dict], object]) -> None:
        with torch.inference_mode():
            c = enc()
            t_enc = _best(enc, args.repeat)
            t_dec = _best(lambda: dec(c), args.repeat)
        rows.append({"model": name, "encode_s": t_enc, "decode_s": t_dec})

    bench("bmshj2018-hyperprior (128,192)", lambda: hyper.compress(x), lambda c: hyper.decompress(c["strings"], c["shape"]))
    bench("lpm base (TIC, 128,192)", lambda: base.compress(x), lambda c: base.decompress(c["strings"], c["shape"]))
    bench(
        f"lpm prompted (rate {low})",
        lambda: prompted.compress(x, low),
        lambda c: prompted.decompress(c["strings"], c["shape"], low),
    )
    mid = (prompted.rates[0] * prompted.rates[1]) ** 0.5
    bench(
        f"lpm prompted (rate {mid:.4g}, interpolated)",
        lambda: prompted.compress(x, mid),
        lambda c: prompted.decompress(c["strings"], c["shape"], mid),
    )
    ref, basecost = rows[0], rows[1]
    for r in rows:
        r["encode_vs_bmshj"] = r["encode_s"] / ref["encode_s"]
        r["decode_vs_bmshj"] = r["decode_s"] / ref["decode_s"]
        r["encode_vs_base"] = r["encode_s"] / basecost["encode_s"]
        r["decode_vs_base"] = r["decode_s"] / basecost["decode_s"]
    print(f"image {tuple(x.shape[-2:])}, device {dev}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"{'model':44s} {'enc s':>7s} {'dec s':>7s} {'enc/bmshj':>9s} {'dec/bmshj':>9s} {'enc/base':>8s} {'dec/base':>8s}")
    for r in rows:
        print(
            f"{r['model']:44s} {r['encode_s']:7.3f} {r['decode_s']:7.3f} {r['encode_vs_bmshj']:9.2f} "
            f"{r['decode_vs_bmshj']:9.2f} {r['encode_vs_base']:8.2f} {r['decode_vs_base']:8.2f}"
        )
    if args.json:
        meta = {
            "image": args.image or f"random {args.height}x{args.width}",
            "device": str(dev),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(),
        }
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
