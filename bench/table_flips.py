"""How often a device difference would flip an entropy-table index on Kodak, with and without lpm's
deterministic tables (issue 11).

A device difference is simulated by moving the hyper-synthesis outputs by ±k ulps before the table choice:

* **float32 path** (format version 1: ``h_s`` in float32 on the model's device): its outputs move by ±k
  float32 ulps; every index that changes would desynchronise a stream decoded there;
* **deterministic path** (format version 2: float64 CPU copies, cast to float32): a device difference of the
  model's float32 transforms does not reach it at all, so it is perturbed where another float64
  implementation would differ: its float64 outputs move by ±k float64 ulps.

    python bench/table_flips.py --data-dir ../shared/data --json results/bench/table_flips.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def _ulps(t: torch.Tensor, k: int) -> torch.Tensor:
    direction = torch.full_like(t, float("inf") if k > 0 else float("-inf"))
    for _ in range(abs(k)):
        t = torch.nextafter(t, direction)
    return t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", help="directory holding kodak/")
    ap.add_argument("--model", default="tiny-smoke")
    ap.add_argument("--limit", type=int, default=0, help="first N images only")
    ap.add_argument("--ulps", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--json", help="also write the counts here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    from lpm import entropy, zoo
    from lpm.data import find_images, locate_dataset, read_image

    ck = zoo.load(args.model)
    model = ck.model
    paths = find_images(locate_dataset("kodak", args.data_dir))[: args.limit or None]
    rates = [*model.rates, (model.rates[1] * model.rates[2]) ** 0.5]
    real_copy = entropy.cpu_float64
    counts = {f"{path}_{k}": 0 for path in ("float32", "deterministic") for k in args.ulps}
    elements = 0
    t0 = time.time()
    for n, p in enumerate(paths):
        x = read_image(p)[0][None]
        for r in rates:
            base, src = model.backbone(r), model.prompt_source(r, 1)
            with torch.no_grad():
                y, z = base._analysis(base.pad(x), src)
                z_hat = base.entropy_bottleneck.decompress(base.entropy_bottleneck.compress(z), z.shape[-2:])
                ref32 = base.entropy_tables(z_hat, src, exact=False)[0]
                ref64 = base.entropy_tables(z_hat, src, exact=True)[0]
                elements += ref32.numel()
                for k in args.ulps:
                    for sign in (1, -1):
                        h = base.h_s.register_forward_hook(lambda m, i, o, d=sign * k: _ulps(o, d))
                        try:
                            counts[f"float32_{k}"] += int((base.entropy_tables(z_hat, src, exact=False)[0] != ref32).sum())
                        finally:
                            h.remove()

                        def perturbed(module, d=sign * k):
                            out = real_copy(module)
                            out.register_forward_hook(lambda m, i, o: _ulps(o, d) if isinstance(o, torch.Tensor) else o)
                            return out

                        entropy.cpu_float64 = perturbed
                        try:
                            import lpm.models.prompted as prompted

                            prompted.cpu_float64 = perturbed
                            counts[f"deterministic_{k}"] += int((base.entropy_tables(z_hat, src)[0] != ref64).sum())
                        finally:
                            entropy.cpu_float64 = real_copy
                            prompted.cpu_float64 = real_copy
        print(f"  {p.name}: done ({time.time() - t0:.0f} s)", flush=True)
    print(f"{len(paths)} images x {len(rates)} rates ({elements} latent elements), checkpoint {args.model} "
          f"({ck.budget_label()})")
    print("index flips, +k and -k ulps counted together (of the dtype each path computes in):")
    print(f"{'ulps':>6s} {'float32 path':>14s} {'deterministic':>14s}")
    for k in args.ulps:
        print(f"{k:6d} {counts[f'float32_{k}']:14d} {counts[f'deterministic_{k}']:14d}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "sha256": ck.sha256, "images": len(paths), "rates": rates,
                       "elements": elements, "flips": counts, "seconds": time.time() - t0}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
