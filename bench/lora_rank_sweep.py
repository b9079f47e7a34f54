"""Smallest adapter rank that works (issue 14), at the smoke budget on the CPU.

For each rank, trains the low-rank rate adapters of ``configs/tiny-smoke-lora.yaml`` (same frozen tiny base,
steps, lr, crops and 10 % subset; only ``lora.rank`` changes) with ``lpm train``'s runner, evaluates the
result on Kodak with real bitstreams at the trained rates, and reports parameters per rate and the BD-rate
against the prompt modules of ``tiny-smoke`` (same base, same budget). Smoke budget: NOT the paper's.

    OMP_NUM_THREADS=1 python bench/lora_rank_sweep.py --data-dir ../shared/data --ranks 1 2 3 7 \\
        --json results/bench/lora_rank_sweep.json

Starts from the tiny-smoke base: the base run (``results/runs/tiny-smoke-base/model.safetensors``, made by
``scripts/make_smoke_checkpoint.py``) where it exists, else the frozen base inside the shipped
``results/checkpoints/tiny-smoke.safetensors`` (the same weights, bit for bit: what
``make_smoke_checkpoint.py --prompts-only`` also starts from); ``--init`` names another.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", required=True, help="directory holding bsds500/ and kodak/")
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 3, 7])
    ap.add_argument("--runs-dir", default="results/runs/lora-rank-sweep")
    ap.add_argument("--limit", type=int, default=0, help="first N Kodak images only")
    ap.add_argument("--init", help="base to start from (default: the tiny-smoke base run, else the base inside "
                    "the shipped tiny-smoke checkpoint)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    from lpm import zoo
    from lpm.checkpoints import load_codec
    from lpm.data import find_images, locate_dataset
    from lpm.eval import bd_rate, evaluate_codec
    from lpm.train.runner import Runner, load_config

    root = zoo.PROJECT_ROOT
    run_base = root / "results/runs/tiny-smoke-base/model.safetensors"
    init = Path(args.init) if args.init else run_base if run_base.is_file() else zoo.CHECKPOINT_DIR / "tiny-smoke.safetensors"
    if not init.is_file():
        raise SystemExit(f"{init} is missing (--init)")
    print(f"base: {init}", flush=True)
    paths = find_images(locate_dataset("kodak", args.data_dir))[: args.limit or None]
    ref = zoo.load("tiny-smoke")
    ref_res = evaluate_codec(ref, paths, ref.model.rates, progress=False)["results"]
    rows = []
    for rank in args.ranks:
        t0 = time.time()
        out = Path(args.runs_dir) / f"rank{rank}"
        cfg = load_config(root / "configs/tiny-smoke-lora.yaml", out_dir=str(out), init=str(init.resolve()),
                          name=f"tiny-smoke-lora-rank{rank}", lora={"rank": rank})
        runner = Runner(cfg, data_dir=args.data_dir, device="cpu", progress=False)
        written = runner.run(resume=(out / "state.pt").exists())
        ck = load_codec(written[-1])
        train_s = time.time() - t0
        res = evaluate_codec(ck, paths, ck.model.rates, progress=False)["results"]
        per_rate = sum(p.numel() for n, p in ck.model.named_parameters() if ".lora_" in n) // (len(ck.model.rates) - 1)
        try:
            bd = bd_rate(ref_res["bpp"], ref_res["psnr-rgb"], res["bpp"], res["psnr-rgb"])
        except ValueError as e:
            bd = f"not computable ({e})"
        rows.append({"rank": rank, "params_per_rate": per_rate, "bpp": res["bpp"], "psnr": res["psnr-rgb"],
                     "bd_rate_vs_tiny_smoke_prompts_percent": bd, "seconds": time.time() - t0,
                     "train_seconds": train_s})
        print(f"rank {rank}: {per_rate} params/rate, BD-rate vs tiny-smoke prompts {bd if isinstance(bd, str) else f'{bd:+.2f} %'}, "
              f"bpp {[round(b, 4) for b in res['bpp']]}, PSNR {[round(p, 2) for p in res['psnr-rgb']]} "
              f"({time.time() - t0:.0f} s)", flush=True)
    prompt_params = sum(p.numel() for p in ref.model.prompts.parameters()) // (len(ref.model.rates) - 1)
    print(f"reference: tiny-smoke prompt modules (+ latent gain), {prompt_params} params/rate; "
          f"{len(paths)} Kodak images, trained rates; smoke budget, NOT the paper's")
    if args.json:
        Path(args.json).write_text(json.dumps({"reference": "tiny-smoke", "reference_params_per_rate": prompt_params,
                                               "images": len(paths), "budget": "smoke (configs/tiny-smoke-lora.yaml "
                                               "with lora.rank changed), CPU, NOT the paper's", "rows": rows},
                                              indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
