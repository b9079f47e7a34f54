"""Training throughput (images/s) of the default-size codec: base training and prompt learning.

Measures full optimizer steps of the runner's :class:`lpm.train.step.TrainStep` (forward, RD loss, backward,
gradient clipping, Adam, aux step for the base) on random 256² crops already on the device, after warm-up,
synchronising only at the ends of the timed window; bf16 autocast on CUDA. Variants (``--variants``, each a
fresh model; ``--compile`` adds ``compile``):

* ``eager`` — the runner's default step;
* ``channels-last`` — model and crops in channels-last memory (NHWC: what the Swin stages' token layout
  already is, and what bf16 convolutions on tensor cores prefer);
* ``compile`` — ``torch.compile`` of the forward (the runner's ``compile: true``; minutes of compiling);
* ``compile-cudagraphs`` — ``torch.compile(mode="reduce-overhead")``: CUDA graphs on top (CUDA only).

    python bench/train_throughput.py                           # CUDA if present, else a short CPU run
    python bench/train_throughput.py --variants eager channels-last --batch 32
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
from lpm.train.progressive import prepare_prompt_stage
from lpm.train.stages import RateForward
from lpm.train.step import TrainStep, main_parameters


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


#: variant -> (channels-last memory, torch.compile mode or None)
VARIANTS = {"eager": (False, None), "channels-last": (True, None), "compile": (False, "default"),
            "compile-cudagraphs": (False, "reduce-overhead")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--config", default="tic")
    ap.add_argument("--batch", type=int, default=None, help="default: 16 on CUDA, 2 on CPU")
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default: 50 on CUDA, 3 on CPU)")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--variants", nargs="+", default=["eager"], choices=list(VARIANTS))
    ap.add_argument("--compile", action="store_true", help="also measure torch.compile (adds the compile variant)")
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
    variants = list(dict.fromkeys(args.variants + (["compile"] if args.compile else [])))
    if not cuda and "compile-cudagraphs" in variants:
        ap.error("compile-cudagraphs needs a CUDA device")
    rows = []
    for variant in variants:
        channels_last, mode = VARIANTS[variant]
        wrap = (lambda m: torch.compile(m, mode=mode)) if mode else (lambda m: m)  # noqa: E731
        xv = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        codec = zoo.build(args.config).to(dev)
        if channels_last:
            codec = codec.to(memory_format=torch.channels_last)
        base = codec.base.requires_grad_(True).train()
        # the runner's step (lpm.train.step.TrainStep): RD loss, clip, Adam, and the aux step for the base
        base_step = TrainStep(wrap(base), main_parameters(base), lmbda=0.0483, lr=1e-4, aux=base, bf16=cuda,
                              device_type=dev.type)

        t0 = time.perf_counter()
        ips = _measure(base_step, xv, warmup, steps, dev)
        rows.append({"what": "base training", "variant": variant, "compiled": mode is not None, "img_per_s": ips,
                     "warmup_and_compile_s": time.perf_counter() - t0 - steps * batch / ips})

        base.requires_grad_(False)
        codec.train()
        rate = codec.rates[0]
        params = prepare_prompt_stage(codec, rate, initialise=False)
        fwd = RateForward(codec, rate)
        prompt_step = TrainStep(wrap(fwd), params, lmbda=rate, lr=1e-3, bf16=cuda, device_type=dev.type)

        t0 = time.perf_counter()
        ips = _measure(prompt_step, xv, warmup, steps, dev)
        rows.append({"what": "prompt learning", "variant": variant, "compiled": mode is not None, "img_per_s": ips,
                     "warmup_and_compile_s": time.perf_counter() - t0 - steps * batch / ips})
        del codec, base, base_step, prompt_step, fwd
        if cuda:
            torch.cuda.empty_cache()
    env = environment(dev)
    print(f"device: {env['device']}, torch {env['torch']}, batch {batch} x {args.crop}², {steps} timed steps")
    for r in rows:
        print(f"{r['what']:16s} {r['variant']:18s} {r['img_per_s']:9.2f} img/s")
    by = {(r["what"], r["variant"]): r["img_per_s"] for r in rows}
    for v in variants:
        print(f"prompt/base speed ratio ({v}): {by[('prompt learning', v)] / by[('base training', v)]:.2f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"meta": {**env, "batch": batch, "crop": args.crop, "steps": steps},
                                               "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
