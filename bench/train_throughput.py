"""Training throughput (images/s) of the default-size codec: base training and prompt learning.

Measures full optimizer steps (forward, RD loss, backward, Adam, aux step for the base) on random 256² crops
already on the device, after warm-up, synchronising only at the ends of the timed window. Modes: eager and
(``--compile``) torch.compile; bf16 autocast on CUDA.

    python bench/train_throughput.py                           # CUDA if present, else a short CPU run
    python bench/train_throughput.py --compile --json results/bench/train_throughput.json

Target on one H100: ≥ 480 img/s for base training, prompt learning ≥ 1.5× faster than base training.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from lpm import zoo
from lpm.provenance import environment
from lpm.train.losses import RateDistortionLoss


def _measure(step, x: torch.Tensor, warmup: int, steps: int, device: torch.device) -> float:
    for _ in range(warmup):
        step(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * x.shape[0] / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--config", default="tic")
    ap.add_argument("--batch", type=int, default=None, help="default: 16 on CUDA, 2 on CPU")
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default: 50 on CUDA, 3 on CPU)")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--compile", action="store_true", help="also measure torch.compile")
    ap.add_argument("--json", help="write the numbers here")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    batch = args.batch or (16 if cuda else 2)
    steps = args.steps or (50 if cuda else 3)
    warmup = args.warmup if args.warmup is not None else (10 if cuda else 1)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(0)
    x = torch.rand(batch, 3, args.crop, args.crop, device=dev)
    crit = RateDistortionLoss()
    rows = []
    modes = [False, True] if args.compile else [False]
    for compiled in modes:
        codec = zoo.build(args.config).to(dev)
        base = codec.base.requires_grad_(True).train()
        main_p = [p for n, p in base.named_parameters() if not n.endswith("quantiles")]
        opt = torch.optim.Adam(main_p, lr=1e-4)
        aux = torch.optim.Adam([p for n, p in base.named_parameters() if n.endswith("quantiles")], lr=1e-3)
        fwd = torch.compile(base) if compiled else base

        def base_step(x):
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda):
                out = fwd(x)
            loss = crit(out, x)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            aux.zero_grad(set_to_none=True)
            base.aux_loss().backward()
            aux.step()

        t0 = time.perf_counter()
        ips = _measure(base_step, x, warmup, steps, dev)
        rows.append({"what": "base training", "compiled": compiled, "img_per_s": ips,
                     "warmup_and_compile_s": time.perf_counter() - t0 - steps * batch / ips})

        base.requires_grad_(False)
        rate = codec.rates[0]
        mod = codec.module(rate)
        popt = torch.optim.Adam(mod.parameters(), lr=1e-3)
        pf = torch.compile(lambda x: codec(x, rate)) if compiled else (lambda x: codec(x, rate))
        codec.train()

        def prompt_step(x):
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda):
                out = pf(x)
            loss = crit(out, x, lmbda=rate)["loss"]
            popt.zero_grad(set_to_none=True)
            loss.backward()
            popt.step()

        t0 = time.perf_counter()
        ips = _measure(prompt_step, x, warmup, steps, dev)
        rows.append({"what": "prompt learning", "compiled": compiled, "img_per_s": ips,
                     "warmup_and_compile_s": time.perf_counter() - t0 - steps * batch / ips})
    env = environment(dev)
    print(f"device: {env['device']}, torch {env['torch']}, batch {batch} x {args.crop}², {steps} timed steps")
    for r in rows:
        print(f"{r['what']:16s} {'compiled' if r['compiled'] else 'eager':9s} {r['img_per_s']:9.2f} img/s")
    by = {(r["what"], r["compiled"]): r["img_per_s"] for r in rows}
    for c in modes:
        print(f"prompt/base speed ratio ({'compiled' if c else 'eager'}): "
              f"{by[('prompt learning', c)] / by[('base training', c)]:.2f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"meta": {**env, "batch": batch, "crop": args.crop, "steps": steps},
                                               "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
