"""Can prompts scale the latent at all? A direct test of the mechanism, apart from the RD loss.

The rate of a codec is set mostly by the size of ``y`` against the quantisation step (1): a separate model
for a higher λ has a larger ``y``, one for a lower λ a smaller one. Prompts that never change ``|y|`` cannot
move the rate. This script asks the prompt nets to do exactly that, with a plain regression target instead
of the RD loss, on a frozen base (``--init``):

* **encoder half** — train the encoder-side prompt net (image-fed, serving ``g_a``) so that
  ``g_a(x, prompts) ≈ a · g_a(x)`` for each scale ``a`` of ``--scales``;
* **decoder half** — train the decoder-side prompt net (``ŷ``-fed, serving ``g_s``) so that
  ``g_s(a · ŷ, prompts) ≈ g_s(ŷ)`` (``ŷ`` the rounded base latent): undo the scale on the way back.

A rate move under the RD loss needs both halves at once (a larger ``y`` alone ruins the reconstruction);
the latent-gain option does both with one parameter per channel. Reported per half and scale: the share of
the required change left unexplained after ``--steps`` Adam steps (``1`` = nothing learned, ``0`` = exact;
the loss is normalised by the change asked for), the ``|y|`` ratio reached (encoder half) and the PSNR of
the decoded image against the base's own decoding (decoder half; without prompts it is the damage of the
scale). Training crops come from ``--data-dir``'s ``bsds500/`` (the seeded ``--fraction`` subset).

    python bench/prompt_authority.py --init BASE.safetensors --model tiny --data-dir DIR --steps 300
    python bench/prompt_authority.py --init … --scales 2 0.5 --prompt head_init_scale=1 --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from torch import Tensor


def normalised_error(got: Tensor, want: Tensor, start: Tensor) -> Tensor:
    """``‖got − want‖² / ‖start − want‖²``: the share of the asked-for change (from ``start``) still missing."""
    return (got - want).pow(2).mean() / (start - want).pow(2).mean().clamp_min(1e-12)


def fit(base, module, part: str, scale: float, sampler, steps: int, lr: float) -> dict:
    """Train ``module``'s ``part`` prompt net ("encoder" or "decoder") towards the scale target; its numbers."""
    net = getattr(module, part)
    opt = torch.optim.Adam(net.parameters(), lr=lr)

    def pair(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(prompted output, target, output without prompts) for one batch."""
        with torch.no_grad():
            y0 = base.g_a(x)
        if part == "encoder":
            return base.g_a(x, net(x), None), scale * y0, y0
        y_hat = torch.round(y0)
        with torch.no_grad():
            want = base.g_s(y_hat)
            start = base.g_s(scale * y_hat)
        return base.g_s(scale * y_hat, net(scale * y_hat), None), want, start

    t0 = time.perf_counter()
    for _ in range(steps):
        got, want, start = pair(sampler.next())
        loss = normalised_error(got, want, start)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():  # a held-out batch
        got, want, start = pair(sampler.next())
        row = {"part": part, "scale": scale, "unexplained": float(normalised_error(got, want, start)),
               "seconds": time.perf_counter() - t0}
        if part == "encoder":
            row["y_rms_ratio"] = float(got.pow(2).mean().sqrt() / start.pow(2).mean().sqrt())
        else:
            mse = lambda a, b: float((a.clamp(0, 1) - b.clamp(0, 1)).pow(2).mean())  # noqa: E731
            row["psnr_vs_base_decoding"] = 10 * math.log10(1 / max(mse(got, want), 1e-12))
            row["psnr_without_prompts"] = 10 * math.log10(1 / max(mse(start, want), 1e-12))
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--init", required=True, help="base checkpoint (.safetensors)")
    ap.add_argument("--data-dir", required=True, help="folder holding bsds500/")
    ap.add_argument("--model", default="tic", help="zoo config whose prompt-module sizes are used")
    ap.add_argument("--prompt", action="append", default=[], metavar="KEY=VALUE", help="PromptConfig override")
    ap.add_argument("--scales", type=float, nargs="+", default=[1.5, 0.67])
    ap.add_argument("--parts", nargs="+", default=["encoder", "decoder"], choices=["encoder", "decoder"])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--fraction", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the numbers here")
    args = ap.parse_args(argv)
    if any(not (math.isfinite(a) and a > 0 and a != 1) for a in args.scales):
        ap.error("--scales must be positive, finite and not 1")

    from lpm import zoo
    from lpm.data import find_images, locate_dataset
    from lpm.models import PromptConfig, PromptedCodec, prompt_settings
    from lpm.provenance import environment
    from lpm.train.sampler import CropSampler, subset

    try:
        overrides = prompt_settings(args.prompt)
    except ValueError as e:
        ap.error(f"--prompt {e}")
    init = zoo.load(args.init)
    base = init.model.base.eval().requires_grad_(False)
    root = locate_dataset("bsds500", args.data_dir)
    images = sorted(p for split in ("train", "val", "test") for p in find_images(root / split))
    paths = subset(images, args.fraction, args.seed)
    config = PromptConfig.from_dict({**zoo.CONFIGS.get(args.model, zoo.CONFIGS["tic"])["prompt"], **overrides})
    rows = []
    for scale in args.scales:
        for part in args.parts:
            torch.manual_seed(args.seed)
            r0 = float(init.base_rate)
            codec = PromptedCodec(base, rates=sorted([r0, 2 * r0]), base_rate=r0, prompt_config=config)
            sampler = CropSampler(paths, args.crop, args.batch, seed=args.seed + 1)
            row = fit(base, codec.module(2 * r0), part, scale, sampler, args.steps, args.lr)
            rows.append(row)
            extra = (f"|y| ratio {row['y_rms_ratio']:.3f} (asked {scale:g})" if part == "encoder" else
                     f"PSNR vs the base's decoding {row['psnr_vs_base_decoding']:.2f} dB "
                     f"({row['psnr_without_prompts']:.2f} dB without prompts)")
            print(f"scale {scale:g} {part:7s}: {100 * row['unexplained']:.1f} % of the change left; {extra}; "
                  f"{row['seconds']:.0f} s", flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            "meta": {**environment(torch.device("cpu")), "init": str(init.path), "init_sha256": init.sha256,
                     "init_budget": init.budget_label(), "prompt_config": config.to_dict(),
                     "budget": f"{args.steps} Adam steps (lr {args.lr:g}) x {args.batch} crops of {args.crop}px "
                               f"per fit on {args.fraction:.0%} of bsds500"},
            "rows": rows,
        }, indent=2, allow_nan=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
